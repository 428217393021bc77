"""The per-row work of [`~hf_explvec.data.label_dataset`]: what is explained (the model or forward function and what
its config says), per-example seeds, Kernel SHAP of rows with every value checked finite, and the split of the work
between processes, shard by shard into a [`~hf_explvec.data.shards.ShardStore`].

Process `r` of `P` labels shards `r, r + P, r + 2P, ...`: a fixed assignment, so that processes that list the
finished shards at different moments never disagree about who does what. Example `i` is explained alone with the seed
[`example_seed`]`(seed, i)`, so its values depend neither on batching, nor on sharding, nor on the number of processes.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..attribution._forward import logits_of
from .images import check_labels, preprocess, rows_sha256, to_rgb
from .shards import ShardStore

__all__ = [
    "LabellingRun",
    "Subject",
    "compute_shards",
    "example_seed",
    "forward_of",
    "iterate_shards",
    "label_rows",
    "read_rows",
    "resolve_subject",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

_DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # PIL's UnidentifiedImageError and truncated files are OSErrors


# -- seeds and the explained model ------------------------------------------------------------------------------
def example_seed(seed: int, index: int) -> int:
    """The Kernel SHAP seed of example `index` in a run seeded with `seed`: 63 bits of SHA-256 over both, so that
    nearby seeds and indices give unrelated coalitions."""
    digest = hashlib.sha256(f"hf_explvec:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Subject:
    """What is explained: the forward function, and what the model's config says about it."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    module: torch.nn.Module | None
    patch_size: int
    image_size: int | None
    num_classes: int | None
    num_classes_source: str
    device: torch.device
    identity: dict


def forward_of(model_or_forward_fn) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(model_or_forward_fn, torch.nn.Module):
        model = model_or_forward_fn

        def forward(pixel_values: torch.Tensor) -> torch.Tensor:
            return logits_of(model(pixel_values=pixel_values), name="the model")

        return forward
    if callable(model_or_forward_fn):
        return model_or_forward_fn
    raise TypeError(
        f"model_or_forward_fn must be a torch.nn.Module or a callable (N, C, H, W) -> (N, num_classes), got "
        f"{type(model_or_forward_fn).__name__}"
    )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in name order), streamed one tensor at a
    time: the identity of the weights whatever the repo name."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(memoryview(flat.view(torch.uint8).numpy()))
    return hasher.hexdigest()


def config_value(config, name: str):
    value = getattr(getattr(config, "vision_config", None), name, None)
    return value if value is not None else getattr(config, name, None)


def resolve_subject(model_or_forward_fn, patch_size, model_id, model_revision, device) -> Subject:
    forward = forward_of(model_or_forward_fn)
    module = model_or_forward_fn if isinstance(model_or_forward_fn, torch.nn.Module) else None
    config = getattr(module, "config", None)
    image_size = num_classes = None
    if config is not None:
        patch_size = patch_size if patch_size is not None else config_value(config, "patch_size")
        image_size = config_value(config, "image_size")
        if type(module).__name__ == "SelfExplainingCLIPVision" or type(module).__name__.endswith(
            "ForImageClassification"
        ):
            num_classes = config.num_labels
    if patch_size is None:
        raise ValueError("patch_size is required: it is read from the model's config only for transformers models")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if module is None and not model_id:
        raise ValueError(
            "model_id is required with a forward function (and model_revision where there is one): it identifies "
            "the model in the provenance and in the cache key; with a torch module, its weights are hashed instead"
        )
    identity: dict[str, Any] = {"model": model_id, "model_revision": model_revision}
    if module is not None:
        identity["model"] = model_id or getattr(config, "_name_or_path", None) or type(module).__name__
        identity["model_revision"] = model_revision or getattr(config, "_commit_hash", None)
        identity["weights_sha256"] = weights_fingerprint(module)
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device(device or "cpu")
    return Subject(
        forward=forward,
        module=module,
        patch_size=patch_size,
        image_size=image_size,
        num_classes=num_classes,
        num_classes_source=f"the config of {type(module).__name__}" if num_classes is not None else "",
        device=torch.device(device or "cpu"),
        identity=identity,
    )


# -- rows ----------------------------------------------------------------------------------------------------------
@dataclass
class LabellingRun:
    """Everything one shard computation needs."""

    subject: Subject
    explainer: Callable[..., torch.Tensor]
    image_processor: Any
    image_column: str
    label_column: str | None
    target: str
    explainer_kwargs: dict
    seed: int
    pixel_shape: tuple[int, int, int]
    num_patches: int

    def labels(self, rows: dict, start: int) -> list[int] | None:
        """The checked labels of `rows` (a column dict whose first row is row `start`), or `None` without a label
        column."""
        if self.label_column is None:
            return None
        subject = self.subject
        return check_labels(
            rows[self.label_column], subject.num_classes, column=self.label_column, start=start,
            source=subject.num_classes_source,
        )  # fmt: skip


def label_rows(rows: dict, start: int, run: LabellingRun, progress) -> tuple[np.ndarray, np.ndarray, str]:
    r"""Explain rows `start .. start + n - 1`.

    Returns:
        `tuple`: values `(n, M)` float32 (all finite), targets `(n,)` int64 and the inputs' hash.

    Raises:
        `ValueError`: non-finite pixels, scores or SHAP values (naming the row and the column), or an explainer
            output of the wrong shape.
    """
    column = run.image_column
    images = [to_rgb(v, column, start + i) for i, v in enumerate(rows[column])]
    labels = run.labels(rows, start)
    pixels = preprocess(run.image_processor, images).to(run.subject.device)
    if tuple(pixels.shape[1:]) != run.pixel_shape:
        raise ValueError(
            f"rows {start}..{start + len(images) - 1}: image_processor gave images of shape {tuple(pixels.shape[1:])}"
            f", expected {run.pixel_shape} like row 0"
        )
    finite = torch.isfinite(pixels).flatten(1).all(dim=1)
    if not bool(finite.all()):
        row = start + int((~finite).nonzero()[0, 0])
        raise ValueError(f"column {column!r}, row {row}: pixel_values are not finite (NaN or Inf) after preprocessing")
    values = np.empty((len(images), run.num_patches), dtype=np.float32)
    targets = np.empty(len(images), dtype=np.int64)
    for i in range(len(images)):
        row, image = start + i, pixels[i : i + 1]
        if run.target == "prediction":
            with torch.inference_mode():
                scores = run.subject.forward(image)
            scores = logits_of(scores)
            if not bool(torch.isfinite(scores).all()):
                raise ValueError(f"column {column!r}, row {row}: the model's scores are not finite (NaN or Inf)")
            target = int(scores.argmax(dim=-1)[0])
        else:
            target = labels[i]
        try:
            explained = run.explainer(
                image,
                torch.tensor([target], device=run.subject.device),
                seed=example_seed(run.seed, row),
                **run.explainer_kwargs,
            )
        except ValueError as error:  # e.g. non-finite scores of a coalition: name the row
            raise ValueError(f"column {column!r}, row {row}: {error}") from error
        if not isinstance(explained, torch.Tensor) or tuple(explained.shape) != (1, run.num_patches):
            got = tuple(explained.shape) if isinstance(explained, torch.Tensor) else type(explained).__name__
            raise ValueError(f"the explainer must return a (1, {run.num_patches}) tensor for one image, got {got}")
        values[i] = explained.detach().float().cpu().numpy()[0]
        if not np.isfinite(values[i]).all():
            raise ValueError(
                f"column {column!r}, row {row}: the Kernel SHAP values are not finite (NaN or Inf): the model's "
                "scores of some masked images are not finite; no value of this shard is written"
            )
        targets[i] = target
        progress.update(1)
    return values, targets, rows_sha256(images, labels)


def read_rows(view, start: int, stop: int, image_column: str) -> dict:
    """Rows `start .. stop - 1` of a `Dataset` as a column dict. An image `datasets` cannot decode raises a
    `ValueError` naming its row and column (found by reading the rows one by one)."""
    try:
        return view[start:stop]
    except _DECODE_ERRORS:
        for row in range(start, stop):
            try:
                view[row]
            except _DECODE_ERRORS as error:
                raise ValueError(f"column {image_column!r}, row {row}: the image cannot be decoded: {error}") from error
        raise


def iterate_shards(dataset, columns: list[str], shard_size: int) -> Iterator[tuple[int, dict]]:
    """Consecutive `shard_size`-row chunks of an `IterableDataset`, as column dicts. An image `datasets` cannot decode
    raises a `ValueError` naming its row and the image column (`columns[0]`)."""
    shard, batch = 0, {column: [] for column in columns}
    rows = iter(dataset.select_columns(columns).with_format(None))
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except _DECODE_ERRORS as error:
            raise ValueError(f"column {columns[0]!r}, row {index}: the image cannot be decoded: {error}") from error
        index += 1
        for column in columns:
            batch[column].append(row[column])
        if len(batch[columns[0]]) == shard_size:
            yield shard, batch
            shard, batch = shard + 1, {column: [] for column in columns}
    if batch[columns[0]]:
        yield shard, batch


def compute_shards(dataset, run: LabellingRun, store: ShardStore, state: PartialState, show_progress: bool) -> int:
    """Compute this process's missing shards; returns the number of rows of the data set."""
    rank, world = state.process_index, state.num_processes
    columns = [run.image_column] + ([run.label_column] if run.label_column else [])
    streaming = isinstance(dataset, datasets.IterableDataset)
    size = store.shard_size
    if streaming:
        total, checksums = None, store.checksums()
    else:
        num_rows = len(dataset)
        mine = [s for s in range(rank, math.ceil(num_rows / size), world)]
        checksums = store.checksums()
        todo = [s for s in mine if not store.is_done(s, min(size, num_rows - s * size), checksums=checksums)]
        total = sum(min(size, num_rows - s * size) for s in todo)
        logger.info(
            "process %d/%d: %d of its %d shards to label (%d rows) in %s",
            rank, world, len(todo), len(mine), total, store.directory,
        )  # fmt: skip
    disable = not (show_progress and state.is_local_main_process) or total == 0
    with tqdm(total=total, desc="Kernel SHAP", unit="img", disable=disable) as progress:
        if streaming:
            num_rows = 0
            for shard, rows in iterate_shards(dataset, columns, size):
                count = len(rows[run.image_column])
                num_rows += count
                if shard % world != rank:
                    continue
                images = [to_rgb(v, run.image_column, shard * size + i) for i, v in enumerate(rows[run.image_column])]
                labels = run.labels(rows, shard * size)
                if store.is_done(shard, count, rows_sha256(images, labels), checksums=checksums):
                    continue
                store.write(
                    shard,
                    np.arange(shard * size, shard * size + count),
                    *label_rows(rows, shard * size, run, progress),
                )
        else:
            view = dataset.select_columns(columns).with_format(None)
            for shard in todo:
                start, stop = shard * size, min((shard + 1) * size, num_rows)
                rows = read_rows(view, start, stop, run.image_column)
                values, targets, digest = label_rows(rows, start, run, progress)
                store.write(shard, np.arange(start, stop), values, targets, digest)
    return num_rows
