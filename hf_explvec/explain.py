"""Explanations of your own images in one call, and heatmap overlays of them.

[`explain`] runs an *explaining model* on images and returns one [`Explanation`] per image: the predicted label, its
probability and the patch attribution grid (optionally upsampled to the image's pixels). [`overlay`] and
[`save_overlays`] draw an explanation the way captum's `visualize_image_attr(..., method="blended_heat_map")` does:
the heatmap blended on the image in grey, with a diverging colour map centred on 0.

An explaining model is any `nn.Module` whose `forward(pixel_values)` returns an output with `logits` of shape
`(batch_size, num_classes)` and `patch_attributions` of shape `(batch_size, num_classes, num_patches)` over a square
patch grid, and whose `config.id2label` names the classes: [`SelfExplainingCLIPVision`] or
[`ExplainingCLIPForImageClassification`] (see [`hf_explvec.explaining_model`]), with or without an explainability
vector applied.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from ._validation import check_int
from .attribution._forward import check_targets
from .data.images import image_processor_for, preprocess, to_rgb

__all__ = [
    "Explanation",
    "explain",
    "overlay",
    "resolve_image_processor",
    "save_overlays",
    "upsample_attributions",
    "view_box",
]

logger = logging.getLogger(__name__)

_TENSOR_POLICY = (
    "a floating-point tensor is processed pixel_values of shape (3, H, W) or (batch_size, 3, H, W) at the model's "
    "image size; a uint8 tensor is raw pixels, channels first, of shape (C, H, W) or (batch_size, C, H, W) with C in "
    "1, 3 or 4; a numpy array is a raw uint8 image of shape (H, W) or (H, W, C)"
)


@dataclass
class Explanation:
    r"""
    The explanation of one image by an explaining model.

    Args:
        label (`str`): The predicted class name (`config.id2label`).
        label_id (`int`): The predicted class id.
        score (`float`): The softmax probability of the predicted class.
        attributions (`torch.FloatTensor` of shape `(grid_size, grid_size)`): The patch attributions of the explained
            class (`target`), float32 on CPU: the model's `patch_attributions` in row-major order of the patch grid,
            in the units of the class logit (positive: for the class, negative: against it).
        target (`int`): The explained class id: `label_id`, or the `target` given to [`explain`].
        target_label (`str`): The explained class name.
        index (`int`): The position of the image among the inputs of [`explain`].
        image (`str`, *optional*): The image's file path, where known (a path input, or a decoded image file).
        image_size (`tuple[int, int]`): `(height, width)` of the input image in pixels (of the pixel_values for a
            processed tensor).
        view_box (`tuple[float, float, float, float]`): `(left, top, right, bottom)`: the region of the input image
            the model saw after the image processor's resize and centre crop, in the input image's pixel coordinates
            (the whole image when it was only resized; it may reach outside the image where the processor pads).
        pixel_attributions (`torch.FloatTensor` of shape `(height, width)`, *optional*): The attribution grid
            upsampled bilinearly onto the input image's pixels (`upsample=True`): the grid covers `view_box`, and
            pixels outside it, which the model never saw, get 0. Each pixel's value is the attribution *density* of
            the patch it lies in, not its share: the map does not sum to the grid's sum.
    """

    label: str
    label_id: int
    score: float
    attributions: torch.Tensor
    target: int
    target_label: str
    index: int = 0
    image: str | None = None
    image_size: tuple[int, int] = (0, 0)
    view_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    pixel_attributions: torch.Tensor | None = field(default=None, repr=False)

    def upsampled(self) -> torch.Tensor:
        r"""
        The attribution grid on the input image's pixels: `pixel_attributions` when [`explain`] computed it, else
        computed now (bilinear, see `pixel_attributions`).

        Returns:
            `torch.FloatTensor` of shape `image_size`.
        """
        if self.pixel_attributions is not None:
            return self.pixel_attributions
        return upsample_attributions(self.attributions, self.view_box, self.image_size)

    def to_dict(self) -> dict:
        r"""
        A JSON-ready dict: `image` (path or `None`), `label`, `label_id`, `score`, `target`, `target_label` and
        `attributions`, the `grid_size × grid_size` grid as a list of rows (row-major).
        """
        return {
            "image": self.image,
            "label": self.label,
            "label_id": self.label_id,
            "score": self.score,
            "target": self.target,
            "target_label": self.target_label,
            "attributions": self.attributions.tolist(),
        }


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One input image: a raw image to process (`raw`, or `path` to open) or processed `pixels` `(3, H, W)`."""

    index: int
    raw: object = None
    path: Path | None = None
    pixels: torch.Tensor | None = None
    source: str | None = None


def _image_column(dataset: datasets.Dataset, image_column: str | None) -> str:
    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(f"image_column {image_column!r} is not a column of the data set {dataset.column_names}.")
        return image_column
    found = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if len(found) != 1:
        what = "no column" if not found else f"{len(found)} columns ({found})"
        raise ValueError(
            f"the data set has {what} of feature type datasets.Image (columns: {dataset.column_names}); "
            "name the image column with image_column=."
        )
    return found[0]


def _check_path(value) -> Path:
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {str(value)!r}")
    return path


def _tensor_items(tensor: torch.Tensor, start: int, where: str) -> list[_Item]:
    """The images of a tensor, by the documented policy (float: pixel_values; uint8: raw pixels, channels first)."""
    shape = tuple(tensor.shape)
    if tensor.is_floating_point():
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 4 or tensor.shape[1] != 3 or tensor.shape[0] == 0:
            raise ValueError(
                f"{where}: a floating-point tensor is processed pixel_values of shape (3, H, W) or (batch_size, 3, H, "
                f"W), got shape {shape}."
            )
        finite = torch.isfinite(tensor.detach()).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"{where}: pixel_values contain NaN or infinite values (images {bad[:10]}).")
        return [_Item(start + i, pixels=row) for i, row in enumerate(tensor.detach())]
    if tensor.dtype == torch.uint8:
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 4 or tensor.shape[1] not in (1, 3, 4) or tensor.shape[0] == 0 or 0 in tensor.shape[2:]:
            raise ValueError(
                f"{where}: a uint8 tensor is raw pixels, channels first: (C, H, W) or (batch_size, C, H, W) with C in "
                f"1, 3 or 4, got shape {shape} (a numpy array is read channels last, as PIL does)."
            )
        rows = tensor.detach().cpu().permute(0, 2, 3, 1).numpy()
        return [_Item(start + i, raw=row) for i, row in enumerate(rows)]
    raise TypeError(f"{where}: a tensor of dtype {tensor.dtype} is ambiguous: {_TENSOR_POLICY}.")


def _one_item(value, index: int) -> list[_Item]:
    where = f"images[{index}]"
    if isinstance(value, Image.Image):
        return [_Item(index, raw=value, source=getattr(value, "filename", "") or None)]
    if isinstance(value, (str, os.PathLike)):
        return [_Item(index, path=_check_path(value), source=str(value))]
    if isinstance(value, torch.Tensor):
        return _tensor_items(value, index, where)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise TypeError(f"{where}: a numpy array of dtype {value.dtype} is ambiguous: {_TENSOR_POLICY}.")
        return [_Item(index, raw=value)]
    raise TypeError(
        f"{where}: expected a PIL image, a file path, a torch.Tensor or a uint8 numpy array, got "
        f"{type(value).__name__}."
    )


def _dataset_items(dataset: datasets.Dataset, column: str, batch_size: int) -> Iterator[_Item]:
    view = dataset.select_columns([column])
    for start in range(0, len(view), batch_size):
        for offset, cell in enumerate(view[start : start + batch_size][column]):
            source = cell.get("path") if isinstance(cell, dict) else getattr(cell, "filename", "") or None
            yield _Item(start + offset, raw=cell, source=source, path=None)


def _items(images, image_column: str | None, batch_size: int) -> tuple[int, Iterator[_Item]]:
    """The number of images and an iterator over them; everything that can be checked without decoding is checked
    here, before the model runs."""
    if isinstance(images, datasets.DatasetDict):
        raise TypeError(f"images is a DatasetDict with splits {list(images)}; pass one split, e.g. images['test'].")
    if isinstance(images, datasets.Dataset):
        if len(images) == 0:
            raise ValueError("images: the data set has no rows.")
        column = _image_column(images, image_column)
        return len(images), _dataset_items(images, column, batch_size)
    if image_column is not None:
        raise ValueError("image_column= only applies to a datasets.Dataset.")
    if isinstance(images, (Image.Image, str, os.PathLike, torch.Tensor, np.ndarray)):
        items = _one_item(images, 0)
    elif isinstance(images, Sequence):
        items = []
        for value in images:
            items.extend(_one_item(value, len(items)))
    else:
        raise TypeError(
            "images must be a PIL image, a file path, a tensor, a uint8 numpy array, a list of these, or a "
            f"datasets.Dataset, got {type(images).__name__}."
        )
    if not items:
        raise ValueError("images is empty: nothing to explain.")
    return len(items), iter(items)


def _open(item: _Item) -> Image.Image:
    if item.path is not None:
        try:
            with Image.open(item.path) as image:  # as transformers' load_image (pipelines), but closing the file
                return ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"images[{item.index}]: {str(item.path)!r} cannot be read as an image: {error}") from error
    return to_rgb(item.raw, "image", item.index)


# ----------------------------------------------------------------------------------------------------------
# The model and its image processor
# ----------------------------------------------------------------------------------------------------------


def _class_names(model) -> list[str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an explaining model (a torch nn.Module), got {type(model).__name__}.")
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        raise TypeError(f"{type(model).__name__} has no config.id2label: the classes cannot be named.")
    return [str(id2label[i]) for i in range(len(id2label))]


def resolve_image_processor(model, image_processor=None):
    r"""
    The image processor [`explain`] uses for `model`: `image_processor` when given; else the one saved with the
    model (`preprocessor_config.json` in the folder or Hub repo `model.name_or_path`, at the commit
    `config._commit_hash` when that is recorded, as [`load_explaining_model`] does; transformers 5 does not record
    it); else CLIP's processor sized to the model ([`hf_explvec.data.image_processor_for`]).

    Args:
        model: An explaining model (a `PreTrainedModel`: its `name_or_path` and `config.vision_config.image_size`
            are read).
        image_processor (*optional*): Returned as it is when given (it must be callable).

    Raises:
        `TypeError`: `image_processor` is not callable, or there is none and the model has no
            `config.vision_config` to size one.
    """
    if image_processor is not None:
        if not callable(image_processor):
            raise TypeError(f"image_processor must be callable (an image processor), got {type(image_processor)}.")
        return image_processor
    config = getattr(model, "config", None)
    name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or None
    if getattr(config, "vision_config", None) is None:
        if name is not None:
            return image_processor_for(model, name)
        raise TypeError(
            f"{type(model).__name__} has no config.vision_config to size an image processor: pass image_processor=."
        )
    if name is None:
        return image_processor_for(model)
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "preprocessor_config.json")):
            return image_processor_for(model, name)
        return image_processor_for(model)
    revision = getattr(config, "_commit_hash", None)
    try:
        return image_processor_for(model, name, **({"revision": revision} if revision else {}))
    except ValueError as error:  # not a valid Hub repo id (e.g. a name set by hand)
        logger.info("no image processor for %r (%s); using CLIP's, sized to the model", name, error)
        return image_processor_for(model)


def _size_entry(size, key: str):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def view_box(image_processor, height: int, width: int) -> tuple[float, float, float, float]:
    r"""
    The region of a `height × width` image that `image_processor` keeps: its resize (`size` with `shortest_edge`,
    optionally `longest_edge`, or `height` and `width`) followed by its centre crop (`crop_size`, padding where the
    image is smaller), mapped back to the image's pixel coordinates.

    Returns:
        `tuple[float, float, float, float]`: `(left, top, right, bottom)`; the whole image for a processor whose
        geometry is not one of these (logged).
    """
    full = (0.0, 0.0, float(width), float(height))
    new_height, new_width = float(height), float(width)
    if getattr(image_processor, "do_resize", False):
        size = getattr(image_processor, "size", None)
        shortest, longest = _size_entry(size, "shortest_edge"), _size_entry(size, "longest_edge")
        if _size_entry(size, "height") and _size_entry(size, "width"):
            new_height, new_width = float(_size_entry(size, "height")), float(_size_entry(size, "width"))
        elif shortest:  # transformers' get_resize_output_image_size(default_to_square=False, max_size=longest)
            short, long = min(height, width), max(height, width)
            new_short, new_long = shortest, int(shortest * long / short)
            if longest and new_long > longest:
                new_short, new_long = int(longest * new_short / new_long), longest
            new_height, new_width = (new_long, new_short) if width <= height else (new_short, new_long)
        else:
            logger.warning("image processor size %s not understood; the attribution map covers the whole image", size)
            return full
    scale_y, scale_x = new_height / height, new_width / width
    left, top, right, bottom = 0.0, 0.0, new_width, new_height
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and _size_entry(crop, "height") and _size_entry(crop, "width"):
        crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
        top = (new_height - crop_height) // 2 if crop_height <= new_height else -((crop_height - new_height) // 2)
        left = (new_width - crop_width) // 2 if crop_width <= new_width else -((crop_width - new_width) // 2)
        bottom, right = top + crop_height, left + crop_width
    return (left / scale_x, top / scale_y, right / scale_x, bottom / scale_y)


def _axis_weights(count: int, start: float, stop: float, cells: int) -> torch.Tensor:
    """`(count, cells)` linear-interpolation weights of `count` pixels on a `cells`-cell axis covering
    `[start, stop)` (border-clamped, as `grid_sample(padding_mode="border", align_corners=False)`); rows of pixels
    whose centre lies outside are 0."""
    position = (torch.arange(count, dtype=torch.float64) + 0.5 - start) / (stop - start)  # in [0, 1] inside
    source = (position * cells - 0.5).clamp(0, cells - 1)
    low = source.floor().long().clamp(max=cells - 1)
    high = (low + 1).clamp(max=cells - 1)
    fraction = source - low
    weights = torch.zeros(count, cells, dtype=torch.float64)
    weights.scatter_add_(1, low.unsqueeze(1), (1 - fraction).unsqueeze(1))
    weights.scatter_add_(1, high.unsqueeze(1), fraction.unsqueeze(1))
    return weights * ((position >= 0) & (position <= 1)).unsqueeze(1)


def upsample_attributions(
    attributions: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int]
) -> torch.Tensor:
    r"""
    Bilinear upsampling of a `(grid_size, grid_size)` attribution grid onto an image of `size` pixels, the grid
    covering `box` of the image (as `F.interpolate(mode="bilinear", align_corners=False)` when the box is the whole
    image). Pixels whose centre lies outside the box get 0. Computed as two small matrix products (bilinear
    interpolation is separable): about 0.2 ms for a 320 × 240 image, 0.1 s for 12 megapixels (one CPU thread).

    Args:
        attributions (`torch.Tensor` of shape `(grid_size, grid_size)`): the grid.
        box (`tuple[float, float, float, float]`): `(left, top, right, bottom)` in pixels (see [`view_box`]).
        size (`tuple[int, int]`): `(height, width)` of the image.

    Returns:
        `torch.FloatTensor` of shape `size`, float32 on CPU.
    """
    height, width = size
    left, top, right, bottom = box
    grid = attributions.detach().cpu().double()
    rows = _axis_weights(height, top, bottom, grid.shape[0])
    columns = _axis_weights(width, left, right, grid.shape[1])
    return (rows @ grid).float() @ columns.t().float()  # the large product in float32


# ----------------------------------------------------------------------------------------------------------
# explain
# ----------------------------------------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_shapes(model, pixels: list[torch.Tensor], batch: list[_Item]) -> None:
    """Every row `(3, S, S)` at the model's image size (`config.vision_config.image_size`, when it has one)."""
    size = getattr(getattr(getattr(model, "config", None), "vision_config", None), "image_size", None)
    for row, item in zip(pixels, batch, strict=True):
        wrong = (size is not None and tuple(row.shape[-2:]) != (size, size)) or row.shape != pixels[0].shape
        if wrong:
            expected = f"(3, {size}, {size})" if size is not None else f"{tuple(pixels[0].shape)}, as image 0"
            raise ValueError(
                f"images[{item.index}]: pixel_values of shape {tuple(row.shape)}; {type(model).__name__} takes "
                f"{expected}. Processed tensors must have the model's image size (or pass raw images)."
            )


def pixel_batches(model, items: Iterator[_Item], image_processor, batch_size: int):
    r"""
    The inputs of [`explain`] as batches of model inputs: for each batch of at most `batch_size` items, the items,
    their `pixel_values` `(B, 3, S, S)` (float32, CPU; raw images through the image processor, resolved on first
    need by [`resolve_image_processor`]), the input images' `(height, width)` and their view boxes ([`view_box`]).
    """
    processor = None
    while batch := list(islice(items, batch_size)):
        pixels, sizes, boxes = [], [], []
        raws = [(i, _open(item)) for i, item in enumerate(batch) if item.pixels is None]
        if raws:
            processor = processor or resolve_image_processor(model, image_processor)
            processed = preprocess(processor, [image for _, image in raws])
            by_position = {i: row for (i, _), row in zip(raws, processed, strict=True)}
            raw_sizes = {i: (image.height, image.width) for i, image in raws}
        for i, item in enumerate(batch):
            if item.pixels is None:
                pixels.append(by_position[i])
                sizes.append(raw_sizes[i])
                boxes.append(view_box(processor, *raw_sizes[i]))
            else:
                pixels.append(item.pixels.float().cpu())
                height, width = item.pixels.shape[-2:]
                sizes.append((int(height), int(width)))
                boxes.append((0.0, 0.0, float(width), float(height)))
        _check_shapes(model, pixels, batch)
        yield batch, torch.stack(pixels), sizes, boxes


def explaining_outputs(model, pixel_values: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    `logits` `(B, C)` and `patch_attributions` `(B, C, M)` of one forward pass of an explaining model, checked.

    Raises:
        `TypeError`: the output has no `patch_attributions` tensor (naming the model class).
        `ValueError`: shapes that do not match the batch, the model's classes or a square patch grid.
    """
    outputs = model(pixel_values=pixel_values)
    logits = getattr(outputs, "logits", None)
    attributions = getattr(outputs, "patch_attributions", None)
    name = type(model).__name__
    if not isinstance(attributions, torch.Tensor) or not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name} is not an explaining model: its output ({type(outputs).__name__}) has no logits and "
            "patch_attributions tensors. Use a SelfExplainingCLIPVision, or a classifier the library makes "
            "explaining (then apply an explainability vector with TaskVector.apply_to)."
        )
    batch = pixel_values.shape[0]
    if logits.shape != (batch, num_classes) or attributions.dim() != 3 or attributions.shape[:2] != logits.shape:
        raise ValueError(
            f"{name} returned logits {tuple(logits.shape)} and patch_attributions {tuple(attributions.shape)}; "
            f"expected ({batch}, {num_classes}) and ({batch}, {num_classes}, num_patches) for {batch} images and the "
            f"{num_classes} classes of config.id2label."
        )
    grid = math.isqrt(attributions.shape[2])
    if grid * grid != attributions.shape[2]:
        raise ValueError(f"{name} returned attributions over {attributions.shape[2]} patches: not a square grid.")
    return logits, attributions


def explain(
    model,
    images,
    *,
    image_processor=None,
    target: int | Sequence[int] | torch.Tensor | None = None,
    upsample: bool = False,
    batch_size: int = 32,
    image_column: str | None = None,
) -> list[Explanation]:
    r"""
    Explain images with an explaining model in one call: run its image processor, one forward pass per batch, and
    return the predicted label, its probability and the patch attributions of each image.

    Args:
        model (`nn.Module`):
            An explaining model: `forward(pixel_values)` returns `logits` `(B, C)` and `patch_attributions`
            `(B, C, M)` on a square grid, and `config.id2label` names the classes, e.g.
            [`SelfExplainingCLIPVision`]. It runs in eval mode under `torch.no_grad()`; its training mode is
            restored afterwards.
        images:
            One image or a list of them, each:

            - a PIL image;
            - a file path (`str` or `os.PathLike`), opened as transformers' pipelines open it (`load_image`: EXIF
              orientation applied, converted to RGB);
            - a uint8 `torch.Tensor`: raw pixels, channels first (torchvision's convention), `(C, H, W)` or
              `(batch_size, C, H, W)` with C = 1, 3 or 4 (alpha dropped);
            - a uint8 `numpy.ndarray`: a raw image, channels last (PIL's convention), `(H, W)` or `(H, W, C)`;
            - a floating-point `torch.Tensor`: `pixel_values` already processed, `(3, H, W)` or `(batch_size, 3, H, W)`
              at the model's image size; the image processor is not run on them.

            Tensors and arrays of other dtypes are refused (`TypeError`): a float array could be raw pixels in
            `[0, 1]` or processed pixels, and the two give different predictions. Or a `datasets.Dataset` (one
            split): its image column is the one column of feature type `datasets.Image`, or `image_column`.
        image_processor (*optional*):
            The image processor for raw images. Defaults to the one saved with the model (`preprocessor_config.json`
            in `model.name_or_path`), else CLIP's processor sized to the model (see [`resolve_image_processor`]).
        target (`int`, sequence of `int` or `torch.LongTensor` of shape `(num_images,)`, *optional*):
            The class whose attributions to return (one for all images, or one per image); the predicted class when
            not given. `label` and `score` are the prediction either way.
        upsample (`bool`, *optional*, defaults to `False`):
            Also fill `pixel_attributions`: the grid upsampled bilinearly to the input image's size (see
            [`Explanation`]).
        batch_size (`int`, *optional*, defaults to 32):
            Images per forward pass.
        image_column (`str`, *optional*):
            The image column of a `datasets.Dataset`.

    Returns:
        `list[Explanation]`: one per image, in input order (a batched tensor counts as its images).

    Raises:
        `TypeError`: a model without `config.id2label` or without `patch_attributions` in its output (naming the
            class), an unsupported image type or an ambiguous tensor dtype.
        `ValueError`: no images, a tensor of the wrong shape, NaN pixels, an image that cannot be decoded, a
            `target` out of range.
        `FileNotFoundError`: an image path that does not exist (naming it).

    Example:

    ```python
    >>> from PIL import Image, ImageOps
    >>> from hf_explvec import SelfExplainingCLIPVision
    >>> from hf_explvec.explain import explain
    >>> from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer

    >>> model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["cat", "dog"], tokenizer=tiny_clip_tokenizer())
    >>> [explanation] = explain(model, Image.new("RGB", (48, 32), "red"), upsample=True)
    >>> explanation.attributions.shape, explanation.pixel_attributions.shape
    (torch.Size([4, 4]), torch.Size([32, 48]))
    ```
    """
    names = _class_names(model)
    batch_size = check_int("batch_size", batch_size, 1)
    if not isinstance(upsample, bool):
        raise TypeError(f"upsample must be a bool, got {type(upsample).__name__}.")
    count, items = _items(images, image_column, batch_size)
    targets = None
    if target is not None:
        if isinstance(target, Sequence) and not isinstance(target, str):
            target = torch.as_tensor(np.asarray(target))
        targets = check_targets(target, count, len(names))
    device = _model_device(model)
    results: list[Explanation] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch, pixels, sizes, boxes in pixel_batches(model, items, image_processor, batch_size):
                logits, attributions = explaining_outputs(model, pixels.to(device), len(names))
                probabilities = logits.float().softmax(dim=-1).cpu()
                predicted = probabilities.argmax(dim=-1)
                chosen = predicted if targets is None else targets[[item.index for item in batch]]
                grid = math.isqrt(attributions.shape[2])
                maps = attributions.float().cpu()[torch.arange(len(batch)), chosen].view(len(batch), grid, grid)
                for row, item in enumerate(batch):
                    label_id, explained = int(predicted[row]), int(chosen[row])
                    explanation = Explanation(
                        label=names[label_id],
                        label_id=label_id,
                        score=float(probabilities[row, label_id]),
                        attributions=maps[row].clone(),
                        target=explained,
                        target_label=names[explained],
                        index=item.index,
                        image=item.source,
                        image_size=sizes[row],
                        view_box=boxes[row],
                    )
                    if upsample:
                        explanation.pixel_attributions = explanation.upsampled()
                    results.append(explanation)
    finally:
        model.train(was_training)
    return results


# ----------------------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------------------


def _display_image(image, explanation: Explanation) -> np.ndarray:
    """An `(H, W, 3)` float array in [0, 1] of what the user gave as the explained image."""
    if image is None:
        if explanation.image is None:
            raise ValueError(
                f"explanation {explanation.index} does not know its image file: pass the image to draw it on."
            )
        image = explanation.image
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        pixels = image.detach().float().cpu()
        pixels = pixels[0] if pixels.dim() == 4 and pixels.shape[0] == 1 else pixels
        if pixels.dim() != 3 or pixels.shape[0] != 3:
            raise ValueError(f"processed pixel_values to draw must have shape (3, H, W), got {tuple(image.shape)}.")
        low, high = pixels.amin(dim=(1, 2), keepdim=True), pixels.amax(dim=(1, 2), keepdim=True)
        array = ((pixels - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()  # min-max per channel
    else:
        if isinstance(image, Image.Image):
            image = to_rgb(image, "image", explanation.index)
        items = _one_item(image, explanation.index)
        if len(items) != 1:
            raise ValueError(f"draw one image at a time, got a batch of {len(items)}.")
        array = np.asarray(_open(items[0]), dtype=np.float32) / 255.0
    if tuple(array.shape[:2]) != tuple(explanation.image_size):
        raise ValueError(
            f"the image is {array.shape[0]}×{array.shape[1]} pixels but explanation {explanation.index} was made for "
            f"an image of {explanation.image_size[0]}×{explanation.image_size[1]}: pass the image that was explained."
        )
    return array


def overlay(explanation: Explanation, image=None, *, alpha: float = 0.5, cmap: str = "RdBu_r", dpi: int = 100):
    r"""
    Draw an explanation as captum's `visualize_image_attr(method="blended_heat_map", sign="all")` does: the image on
    the left; on the right the image in grey with the pixel attributions blended over it (`alpha`) in a diverging
    colour map centred on 0 with a symmetric scale (±max |attribution|, shown by the colour bar; red for the
    explained class, blue against it with the default map). The title gives the predicted label and its probability
    (and the explained class when it is not the prediction); a dashed box marks the region the model saw when the
    image processor cropped the image.

    The figure is a `matplotlib.figure.Figure` made without pyplot: no global state (backend, open figures) changes.
    It shows in a notebook, and `figure.savefig(path)` writes it.

    Args:
        explanation ([`Explanation`]): From [`explain`].
        image (*optional*): The explained image, in any form [`explain`] accepts for one image (processed
            `pixel_values` are shown rescaled to [0, 1] per channel: their colours are not the original's). Defaults
            to the explanation's image file.
        alpha (`float`, *optional*, defaults to 0.5): Opacity of the heatmap (captum's `alpha_overlay`).
        cmap (`str`, *optional*, defaults to `"RdBu_r"`): A diverging matplotlib colour map.
        dpi (`int`, *optional*, defaults to 100): Resolution of the figure.

    Returns:
        `matplotlib.figure.Figure`.

    Raises:
        `ValueError`: no image known, or an image of another size than the explained one.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not isinstance(explanation, Explanation):
        raise TypeError(f"overlay draws an Explanation (from explain), got {type(explanation).__name__}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    array = _display_image(image, explanation)
    values = explanation.upsampled().numpy()
    limit = float(np.abs(values).max()) or 1.0  # an all-zero map still gets a valid symmetric scale
    height, width = explanation.image_size
    panel = 3.5 * min(max(width / height, 0.5), 2.0)  # panel width in inches, for a 3.5-inch-high image
    figure = Figure(figsize=(2 * panel + 1.2, 4.3), dpi=dpi, layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(array)
    left.set_title(Path(explanation.image).name if explanation.image else f"image {explanation.index}", fontsize=9)
    right.imshow(array.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
    heat = right.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, alpha=alpha)
    box_left, box_top, box_right, box_bottom = explanation.view_box
    if (box_left, box_top, box_right, box_bottom) != (0.0, 0.0, float(width), float(height)):
        right.add_patch(Rectangle((box_left - 0.5, box_top - 0.5), box_right - box_left, box_bottom - box_top,
                                  fill=False, ec="black", ls="--", lw=1.0))  # fmt: skip
        right.set_xlim(-0.5, width - 0.5)
        right.set_ylim(height - 0.5, -0.5)
    explained = "" if explanation.target == explanation.label_id else f"\nattributions for {explanation.target_label}"
    right.set_title(f"attributions{explained}", fontsize=9)
    figure.colorbar(heat, ax=right, shrink=0.8, label="attribution (logit units)")
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{explanation.label} ({explanation.score:.1%})")
    return figure


def _file_stem(explanation: Explanation) -> str:
    if explanation.image is None:
        return ""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(explanation.image).stem).lstrip(".")
    return f"-{stem}" if stem else ""


def save_overlays(
    explanations: Sequence[Explanation], images=None, output_dir: str | os.PathLike = ".", **overlay_kwargs
) -> list[Path]:
    r"""
    Write one PNG per explanation, drawn by [`overlay`]: `output_dir/NNNN-<image file stem>.png` (`NNNN.png` for an
    image without a file), NNNN being the position in `explanations`. Existing files of these names are
    overwritten; `output_dir` is created if needed.

    Args:
        explanations (`list[Explanation]`): From [`explain`].
        images (*optional*): The explained images, one per explanation, in any form [`explain`] accepts (a list, a
            batched tensor or a `datasets.Dataset`). Defaults to each explanation's image file.
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `"."`): The folder.
        overlay_kwargs: Passed to [`overlay`] (`alpha`, `cmap`, `dpi`).

    Returns:
        `list[pathlib.Path]`: the files written, in the order of `explanations`.
    """
    explanations = list(explanations)
    if not explanations:
        raise ValueError("explanations is empty: nothing to draw.")
    if not all(isinstance(explanation, Explanation) for explanation in explanations):
        raise TypeError("save_overlays draws Explanation objects (from explain).")
    if images is None:
        drawn = iter([None] * len(explanations))
    else:
        count, items = _items(images, None, 64)
        if count != len(explanations):
            raise ValueError(f"{len(explanations)} explanations but {count} images: give one image per explanation.")
        drawn = (item.pixels if item.pixels is not None else _open(item) for item in items)  # one at a time
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, explanation in enumerate(explanations):
        figure = overlay(explanation, next(drawn), **overlay_kwargs)
        path = directory / f"{position:04d}{_file_stem(explanation)}.png"
        figure.savefig(path)
        paths.append(path)
    return paths
