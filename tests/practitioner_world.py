"""The practitioner's world on a LocalHub, built in code (shared by test_practitioner and test_cli_explain).

- `org/base-clip`: a tiny pretrained CLIP (with its image processor and tokenizer), the base of everything.
- `org/explain-vector`: an explainability vector τ = θ* − θ taken from `org/base-clip` (base recorded, λ = 0.5).
- `me/color-classifier`: the user's `CLIPForImageClassification`, loaded from `org/base-clip` by name, fine-tuned to
  tell red images from blue ones, pushed with its image processor.
- `other/foreign-vector`: a vector taken from another pretraining (`other/base-clip`): its base is not the user's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import CLIPForImageClassification, CLIPModel

from hf_explvec import TaskVector
from hf_explvec.data.images import clip_image_processor
from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer

CLASSES = ["red", "blue"]
BASE = "org/base-clip"
VECTOR = "org/explain-vector"
CLASSIFIER = "me/color-classifier"
FOREIGN_BASE = "other/base-clip"
FOREIGN_VECTOR = "other/foreign-vector"
LAM = 0.5


def color_image(label: int, seed: int, size: int = 40) -> Image.Image:
    """A noisy image whose red (label 0) or blue (label 1) channel dominates."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (size, size, 3))
    pixels[..., 0 if label == 0 else 2] += 150
    return Image.fromarray(pixels.astype(np.uint8))


def write_images(folder, count: int, seed: int = 0, by_class: bool = False) -> list[tuple[str, int]]:
    """Write `count` PNG images (alternating classes) into `folder` (in a subfolder per class name with
    `by_class`); return `(path, label)` pairs."""
    written = []
    for i in range(count):
        label = i % 2
        directory = folder / CLASSES[label] if by_class else folder
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"image-{seed}-{i}.png"
        color_image(label, seed * 1000 + i).save(path)
        written.append((str(path), label))
    return written


def publish_base(repo_id: str = BASE, seed: int = 0) -> CLIPModel:
    """Push a tiny pretrained CLIP with its image processor and tokenizer; return it as loaded back by name."""
    tiny_clip_model(seed=seed).push_to_hub(repo_id)
    clip_image_processor(32).push_to_hub(repo_id)
    tiny_clip_tokenizer().push_to_hub(repo_id)
    return CLIPModel.from_pretrained(repo_id)


def twin_vector(base: CLIPModel, seed: int = 1, scale: float = 0.05, **provenance) -> TaskVector:
    """τ = θ* − θ for a θ* that moved every vision weight of `base` by a small random step (a stand-in for the
    self-explaining fine-tune: the tests here are about the plumbing, not the vector's quality)."""
    twin = CLIPModel(base.config).eval()
    twin.load_state_dict(base.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in twin.named_parameters():
            if name.startswith(("vision_model.", "visual_projection.")):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(scale * noise * parameter.detach().abs().mean().clamp_min(1e-3))
    return TaskVector.from_models(base, twin, **provenance)


def publish_vector(base: CLIPModel, repo_id: str = VECTOR, lam: float | None = LAM, seed: int = 1) -> str:
    """Push `twin_vector(base)` (recommended λ `lam`); return the commit sha."""
    return twin_vector(base, seed=seed, recommended_lam=lam).push_to_hub(repo_id).oid


def fine_tune_classifier(steps: int = 25, seed: int = 0) -> CLIPForImageClassification:
    """Load `CLIPForImageClassification` from `org/base-clip` by name (a new linear head) and fine-tune it on
    red/blue images."""
    torch.manual_seed(seed)
    classifier = CLIPForImageClassification.from_pretrained(
        BASE, id2label=dict(enumerate(CLASSES)), label2id={name: i for i, name in enumerate(CLASSES)}
    )
    processor = clip_image_processor(32)
    images = [color_image(i % 2, 500 + i) for i in range(32)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([i % 2 for i in range(32)])
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    classifier.train()
    for step in range(steps):
        rows = slice((step * 8) % 32, (step * 8) % 32 + 8)
        loss = classifier(pixel_values=pixels[rows], labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return classifier.eval()


def publish_classifier(repo_id: str = CLASSIFIER) -> str:
    """Fine-tune the user's classifier and push it with its image processor; return the commit sha."""
    fine_tune_classifier().push_to_hub(repo_id)
    return clip_image_processor(32).push_to_hub(repo_id).oid


def publish_world(foreign: bool = True) -> dict:
    """Everything above on the current LocalHub; returns the commit shas."""
    base = publish_base()
    shas = {"vector": publish_vector(base), "classifier": publish_classifier()}
    if foreign:
        foreign_base = publish_base(FOREIGN_BASE, seed=7)
        shas["foreign_vector"] = publish_vector(foreign_base, FOREIGN_VECTOR)
    return shas
