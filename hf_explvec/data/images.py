"""Images to model inputs: CLIP's image processor sized to a model."""

from __future__ import annotations


def clip_image_processor(image_size: int):
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at `image_size` (PIL backend: no torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


__all__ = ["clip_image_processor"]
