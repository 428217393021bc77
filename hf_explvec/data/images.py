"""Rows to model inputs: images of any kind to RGB and to `pixel_values`, CLIP's image processor sized to a model,
and the check of label columns (int class indices in range), shared by labelling and training."""

from __future__ import annotations

import hashlib
import logging

import datasets
import numpy as np
import torch
from PIL import Image

__all__ = ["check_labels", "clip_image_processor", "image_processor_for", "preprocess", "rows_sha256", "to_rgb"]

logger = logging.getLogger(__name__)


def clip_image_processor(image_size: int):
    """CLIP's preprocessing (resize, centre crop, CLIP mean/std) at `image_size` (PIL backend: no torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def image_processor_for(model, name_or_path: str | None = None, **kwargs):
    r"""The image processor of a model: the one saved with it (`preprocessor_config.json` in `name_or_path`), else
    [`clip_image_processor`] sized to the model (CLIP's normalisation, resize and centre crop to
    `model.config.vision_config.image_size`).

    Args:
        model (`SelfExplainingCLIPVision` or a CLIP model): its `config.vision_config.image_size` sizes the fallback.
        name_or_path (`str`, *optional*): where the model was loaded from (a Hub repo id or a folder).
        kwargs: more arguments for `AutoImageProcessor.from_pretrained` (`revision`, `token`, ...).
    """
    from transformers import AutoImageProcessor

    if name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        except OSError:
            logger.info("no image processor saved with %s; using CLIP's, sized to the model", name_or_path)
    return clip_image_processor(model.config.vision_config.image_size)


def to_rgb(value, column: str, index: int) -> Image.Image:
    r"""A PIL RGB image from what a `datasets` image column holds: a decoded image, `{"bytes", "path"}`, or a uint8
    array (or list of ints in `[0, 255]`) of shape `(H, W)` or `(H, W, 1|3|4)`. Alpha is dropped.

    Args:
        value: the cell.
        column (`str`), index (`int`): the column and row, named in errors.

    Raises:
        `TypeError`: not an image, or an array of another dtype or shape.
        `ValueError`: bytes or a file that do not decode as an image (naming the row and the column).
    """
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        try:
            value = datasets.Image().decode_example(value)
        except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"column {column!r}, row {index}: the image cannot be decoded: {error}") from error
    if isinstance(value, (list, np.ndarray, torch.Tensor)):
        array = np.asarray(value)
        integers = array.dtype != np.uint8 and np.issubdtype(array.dtype, np.integer) and array.size
        if integers and array.min() >= 0 and array.max() <= 255:  # e.g. lists of ints from a Sequence column
            array = array.astype(np.uint8)
        if (
            array.dtype != np.uint8
            or array.ndim not in (2, 3)
            or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4))
        ):
            raise TypeError(
                f"column {column!r}, row {index}: an array image must hold integers in [0, 255] with shape (H, W) or "
                f"(H, W, 1|3|4), got {array.dtype} of shape {array.shape}"
            )
        value = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    if not isinstance(value, Image.Image):
        raise TypeError(f"column {column!r}, row {index}: expected an image, got {type(value).__name__}")
    try:
        return value if value.mode == "RGB" else value.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # a lazily decoded file whose data is corrupt
        raise ValueError(f"column {column!r}, row {index}: the image cannot be decoded: {error}") from error


def preprocess(image_processor, images: list[Image.Image]) -> torch.Tensor:
    r"""`pixel_values` `(B, C, H, W)` float32 of RGB images through `image_processor`.

    Raises:
        `ValueError`: the processor does not give one 4-D tensor (images of different sizes not resized).
    """
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4:
        raise ValueError(
            "image_processor must turn images into one (B, C, H, W) tensor (images of different sizes need "
            f"do_resize / do_center_crop), got {type(pixels).__name__}"
        )
    return pixels.float()


def rows_sha256(images: list[Image.Image], labels: list | None) -> str:
    """SHA-256 over images (size and RGB bytes) and their labels: the identity of the inputs of a shard."""
    hasher = hashlib.sha256()
    for i, image in enumerate(images):
        hasher.update(f"{image.size}|{labels[i] if labels is not None else ''}|".encode())
        hasher.update(image.tobytes())
    return hasher.hexdigest()


def check_labels(
    labels, num_classes: int | None, *, column: str = "label", start: int = 0, source: str = ""
) -> list[int]:
    r"""Check a column of class labels: each an int (Python or numpy, not bool) in `[0, num_classes)`.

    Args:
        labels (iterable of `int`): the labels of rows `start, start + 1, ...`.
        num_classes (`int`, *optional*): the number of classes; `None` checks only `>= 0`.
        column (`str`, *optional*, defaults to `"label"`): the column's name, for errors.
        start (`int`, *optional*, defaults to 0): the row index of the first label, for errors.
        source (`str`, *optional*): where `num_classes` comes from (e.g. "the config of SelfExplainingCLIPVision").

    Returns:
        `list[int]`: the labels as Python ints.

    Raises:
        `TypeError`: a label that is not an int (naming the column and the row).
        `ValueError`: a label out of range (naming the column, the row, the range and where it comes from).
    """
    checked = []
    for offset, label in enumerate(labels):
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise TypeError(
                f"column {column!r}, row {start + offset}: labels must be int class indices, got "
                f"{type(label).__name__} {label!r}"
            )
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise ValueError(
                f"column {column!r}, row {start + offset}: label {int(label)} is out of range: expected "
                f"[0, {num_classes if num_classes is not None else 'num_classes'}) (num_classes = {num_classes} from "
                f"{source or 'nowhere'})"
            )
        checked.append(int(label))
    return checked
