"""The training data: checking a data set against the model before any step ([`prepare_dataset`],
[`check_examples`]), the per-epoch data order ([`EpochShuffleSampler`]) and batching ([`Collator`])."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.images import check_labels
from .config import LABELS, PIXELS, SHAP, DatasetFormatError

__all__ = ["Collator", "EpochShuffleSampler", "check_examples", "prepare_dataset"]

# Rows read at a time by `check_examples` (a 64 x 3 x 224 x 224 float32 block is 38 MB).
_CHECK_BATCH_SIZE = 64
_LABELS_SOURCE = "the model's config.num_labels"


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of `range(num_examples)` per epoch that depends on `(seed, epoch)` only: the same on
    every process and after a resume. Set the epoch with `set_epoch` before iterating."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        yield from torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(seed)).tolist()


def _expected(model_config) -> str:
    pixel_shape = _pixel_shape(model_config)
    return (
        f"expected '{PIXELS}' (float, {pixel_shape}, as CLIPImageProcessor returns), '{LABELS}' (int in "
        f"[0, {model_config.num_labels})) and '{SHAP}' ({model_config.num_patches} floats: Kernel SHAP values "
        "per patch)"
    )


def _pixel_shape(model_config) -> tuple[int, int, int]:
    vision = model_config.vision_config
    return (vision.num_channels, vision.image_size, vision.image_size)


def prepare_dataset(dataset, model_config, need_shap: bool, name: str):
    r"""
    Check a data set's columns and first example against the model and return it in torch format.

    Args:
        dataset (`datasets.Dataset` or a map-style `torch.utils.data.Dataset`): The data (see [`train`]).
        model_config ([`SelfExplainingCLIPVisionConfig`]): The model's config (image size, classes, patches).
        need_shap (`bool`): Whether `shap_values` are required (`alpha < 1`).
        name (`str`): The argument's name for the messages (`"train_dataset"`, `"eval_dataset"`).

    Returns:
        `tuple`: the data set (a `datasets.Dataset` in torch format unless it has a transform of its own) and
        whether its examples have `shap_values`.

    Raises:
        [`DatasetFormatError`] naming the column, the expected and the actual value; `TypeError` when the data set
        is not map-style.
    """
    import datasets

    if isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset)):
        raise TypeError(f"{name} must be a map-style data set (len and indexing, for exact resume), not iterable.")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"{name} must be a datasets.Dataset or a torch Dataset, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise DatasetFormatError(f"{name} is empty.")
    pixel_shape, num_patches = _pixel_shape(model_config), model_config.num_patches
    expected = _expected(model_config)
    required = [PIXELS, LABELS] + ([SHAP] if need_shap else [])
    if isinstance(dataset, datasets.Dataset):
        missing = [c for c in required if c not in dataset.column_names]
        if missing:
            raise DatasetFormatError(f"{name} is missing column(s) {missing} (has {dataset.column_names}); {expected}.")
        custom = dataset.format["type"] == "custom"  # set_transform / with_transform: keep the user's transform
        if not custom and isinstance(dataset.features[PIXELS], datasets.Image):
            raise DatasetFormatError(f"{name}: '{PIXELS}' holds images; process them with CLIPImageProcessor first.")
        if not custom:
            dataset = dataset.with_format(
                "torch", columns=[c for c in (PIXELS, LABELS, SHAP) if c in dataset.column_names]
            )
    first = dataset[0]
    if not isinstance(first, Mapping):
        raise DatasetFormatError(f"{name}[0] must be a mapping of column -> value, got {type(first).__name__}.")
    missing = [c for c in required if c not in first]
    if missing:
        raise DatasetFormatError(f"{name} examples lack key(s) {missing} (have {list(first)}); {expected}.")
    pixels = torch.as_tensor(first[PIXELS])
    if tuple(pixels.shape) != pixel_shape or not pixels.is_floating_point():
        raise DatasetFormatError(
            f"{name}[0]: '{PIXELS}' must be a float tensor of shape {pixel_shape}, "
            f"got {pixels.dtype} of shape {tuple(pixels.shape)}."
        )
    if SHAP in first and (length := torch.as_tensor(first[SHAP]).numel()) != num_patches:
        raise DatasetFormatError(
            f"{name}[0]: '{SHAP}' must hold {num_patches} values (one per patch of the {model_config.grid_size}x"
            f"{model_config.grid_size} grid), got {length}."
        )
    return dataset, SHAP in first


def check_examples(dataset, model_config, use_shap: bool, name: str, num_workers: int = 0) -> None:
    r"""
    Check every example of a prepared data set before training: `pixel_values` of the model's shape and finite,
    `labels` integers in `[0, num_labels)`, and (with `use_shap`) `shap_values` of `num_patches` finite values.

    One pass over the data: a `datasets.Dataset` without a transform is read from Arrow in blocks of 64 rows
    (about 15 s per 10,000 images of 224 x 224 on a busy 2-core machine); any other data set is read example by
    example, through its `__getitem__` and transform, like one epoch of data loading.

    Args:
        dataset: A data set returned by [`prepare_dataset`].
        model_config ([`SelfExplainingCLIPVisionConfig`]): The model's config.
        use_shap (`bool`): Whether the examples' `shap_values` are used (they are then checked).
        name (`str`): The argument's name for the messages.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` workers for data sets read example by example.

    Raises:
        [`DatasetFormatError`] (a `ValueError`) naming the column, the (first) bad row index, how many rows are bad
        in all, the expected and the actual value.
    """
    import datasets

    columns = [PIXELS, LABELS] + ([SHAP] if use_shap else [])
    if isinstance(dataset, datasets.Dataset) and dataset.format["type"] != "custom":
        view = dataset.with_format("numpy", columns=columns)
        blocks = ((start, view[start : start + _CHECK_BATCH_SIZE]) for start in range(0, len(view), _CHECK_BATCH_SIZE))
    else:
        loader = DataLoader(dataset, batch_size=_CHECK_BATCH_SIZE, num_workers=num_workers, collate_fn=_as_columns)
        blocks = ((i * _CHECK_BATCH_SIZE, block) for i, block in enumerate(loader))
    pixel_shape, num_patches = _pixel_shape(model_config), model_config.num_patches
    bad: dict[str, list] = {}  # column -> [first row, message, count]
    for start, block in blocks:
        for column in columns:
            values = block[column]
            if column == PIXELS:
                problems = _check_floats(values, pixel_shape, f"float values of shape {pixel_shape}")
            elif column == SHAP:
                problems = _check_floats(values, (num_patches,), f"{num_patches} float values (one per patch)")
            else:
                problems = _check_labels(values, model_config.num_labels, start)
            for offset, message in problems:
                if column not in bad:
                    row = start + offset
                    text = message if column == LABELS else f"'{column}' of row {row} {message}"
                    bad[column] = [row, text, 0]
                bad[column][2] += 1
    if bad:
        column = min(bad, key=lambda c: bad[c][0])
        _, message, count = bad[column]
        others = f" ({count} rows in all)" if count > 1 else ""
        more = [c for c in bad if c != column]
        also = f"; column(s) {more} have bad rows too" if more else ""
        raise DatasetFormatError(f"{name}: {message}{others}{also}. Fix or drop the row(s).")


def _as_columns(rows: list) -> dict[str, list]:
    """`collate_fn` of `check_examples`: a list of examples as columns of values (missing keys as `None`)."""
    return {key: [row.get(key) if isinstance(row, Mapping) else None for row in rows] for key in (PIXELS, LABELS, SHAP)}


def _as_float_rows(values) -> list[np.ndarray] | np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    return [None if v is None else np.asarray(torch.as_tensor(v).detach().cpu()) for v in values]


def _check_floats(values, shape: tuple, expected: str) -> list[tuple[int, str]]:
    """(row offset, problem) for each row that is not a finite float array of `shape` (`shap_values` may be
    flat or not: only the number of values counts for them)."""
    rows = _as_float_rows(values)
    if isinstance(rows, np.ndarray):  # one block of equal shapes: check it at once
        flat = len(shape) == 1
        ok_shape = (int(np.prod(rows.shape[1:])) == shape[0]) if flat else tuple(rows.shape[1:]) == shape
        if ok_shape and rows.dtype.kind == "f":
            finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
            return [(int(i), _non_finite(rows[i])) for i in np.flatnonzero(~finite)]
        rows = list(rows)
    problems = []
    for i, row in enumerate(rows):
        if row is None:
            problems.append((i, f"is missing; expected {expected}"))
            continue
        size_ok = row.size == shape[0] if len(shape) == 1 else tuple(row.shape) == shape
        if not size_ok or row.dtype.kind != "f":
            problems.append((i, f"must hold {expected}, got {row.dtype} of shape {tuple(row.shape)}"))
        elif not np.isfinite(row).all():
            problems.append((i, _non_finite(row)))
    return problems


def _non_finite(row: np.ndarray) -> str:
    flat = row.reshape(-1)
    index = int(np.flatnonzero(~np.isfinite(flat))[0])
    return f"holds a non-finite value ({flat[index]} at flat position {index}); expected finite floats"


def _label_value(value):
    """A one-element tensor as a Python number (what `check_labels` reads); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _check_labels(values, num_labels: int, start: int) -> list[tuple[int, str]]:
    """(row offset, message of [`hf_explvec.data.images.check_labels`]) for each label that is not an int class
    index in `[0, num_labels)`."""
    problems = []
    for i, value in enumerate(values):
        try:
            check_labels([_label_value(value)], num_labels, column=LABELS, start=start + i, source=_LABELS_SOURCE)
        except (TypeError, ValueError) as error:
            problems.append((i, str(error)))
    return problems


class Collator:
    """Stack examples into a batch of tensors, checking labels and SHAP lengths (picklable for worker processes).

    Args:
        num_labels (`int`): Classes of the model; labels must lie in `[0, num_labels)`.
        num_patches (`int`): Values per example in `shap_values`.
        use_shap (`bool`): Whether to batch `shap_values`.
    """

    def __init__(self, num_labels: int, num_patches: int, use_shap: bool):
        self.num_labels, self.num_patches, self.use_shap = num_labels, num_patches, use_shap

    def __call__(self, rows: list) -> dict[str, torch.Tensor]:
        try:  # checked before training too: this catches a transform that changed the data since
            values = check_labels([_label_value(row[LABELS]) for row in rows], self.num_labels, column=LABELS)
        except (TypeError, ValueError) as error:
            raise DatasetFormatError(f"a batch (rows counted within it): {error}") from None
        labels = torch.as_tensor(values, dtype=torch.long)
        batch = {PIXELS: torch.stack([torch.as_tensor(r[PIXELS], dtype=torch.float32) for r in rows]), LABELS: labels}
        if self.use_shap:
            shap = [torch.as_tensor(row[SHAP], dtype=torch.float32).flatten() for row in rows]
            lengths = sorted({s.numel() for s in shap})
            if lengths != [self.num_patches]:
                raise DatasetFormatError(f"'{SHAP}' must hold {self.num_patches} values per example, found {lengths}.")
            batch[SHAP] = torch.stack(shap)
        return batch
