"""The machinery of [`~hf_explvec.data.label_dataset`]: images to pixels, per-example Kernel SHAP, the split of the
work between processes, and the on-disk shard store.

A labelling run owns one directory:

    output_dir/
      manifest.json          {"format", "fingerprint", "shard_size", "num_patches", "provenance"}
      shard-00000.parquet    rows [0, shard_size): index (int64), shap_values (M float32), shap_target (int64)
      shard-00001.parquet    rows [shard_size, 2 shard_size) ...

Each shard is written to a hidden temporary name in the same directory, flushed to disk and moved into place with
`os.replace`, so a shard file either is complete or does not exist, whenever the job is killed. Its Parquet schema
metadata records the run's fingerprint and a SHA-256 of the inputs it was computed from. A finished shard is
recognised by its name, its fingerprint and its row count, without reading its values; one that cannot be read is
recomputed. Only SHAP values are stored here, never the images.

Process `r` of `P` labels shards `r, r + P, r + 2P, ...`: a fixed assignment, so that processes that list the
finished shards at different moments never disagree about who does what.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per output_dir
    fcntl = None

from ..attribution._forward import logits_of
from .images import check_labels, preprocess, rows_sha256, to_rgb

__all__ = [
    "STORE_FORMAT",
    "LabellingRun",
    "ShardStore",
    "Subject",
    "compute_shards",
    "example_seed",
    "file_sha256",
    "forward_of",
    "label_rows",
    "read_rows",
    "resolve_subject",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
_META_KEY = b"hf_explvec"
_DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # PIL's UnidentifiedImageError and truncated files are OSErrors


@dataclass(frozen=True)
class ShardStore:
    r"""The shard files of one labelling run.

    Args:
        directory (`Path`): where the manifest and the shards live.
        fingerprint (`str`): the run's fingerprint (provenance + inputs); a directory holds one run only.
        shard_size (`int`): rows per shard (the last one may be shorter).
        num_patches (`int`): ``M``, values per row.
    """

    directory: Path
    fingerprint: str
    shard_size: int
    num_patches: int

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def path(self, shard: int) -> Path:
        """`directory / "shard-{shard:05d}.parquet"`."""
        return self.directory / f"shard-{shard:05d}.parquet"

    # -- the run's directory --------------------------------------------------------------------------------------
    @classmethod
    def read_manifest(cls, directory: Path) -> dict | None:
        """The manifest of `directory`, or `None` when there is none.

        Raises:
            `ValueError`: the manifest is not a JSON object (naming the file).
        """
        path = Path(directory) / "manifest.json"
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the labelling manifest {path}: {error}") from error
        if not isinstance(manifest, dict):
            raise ValueError(f"the labelling manifest {path} must hold a JSON object, got {type(manifest).__name__}")
        return manifest

    def checksums(self) -> dict[str, str]:
        """The SHA-256 of each finished shard, by file name, as recorded in the manifest (empty when none is)."""
        recorded = (self.read_manifest(self.directory) or {}).get("shards")
        return dict(recorded) if isinstance(recorded, dict) else {}

    def prepare(self, provenance: dict, *, resume: bool) -> None:
        """Create the directory and its manifest (main process only, before any shard is written).

        With `resume=False`, shards of an earlier run are deleted. Temporary files left by a killed run are removed.

        Raises:
            `ValueError`: `resume=True` and the directory holds shards of another run (another fingerprint).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.read_manifest(self.directory)
        if manifest is not None and resume and manifest.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"output_dir {self.directory} holds SHAP values of another labelling run (fingerprint "
                f"{manifest.get('fingerprint')!r}, expected {self.fingerprint!r}: another model, data set or "
                "settings). Use another output_dir, or resume=False to overwrite it."
            )
        for stale in [*self.directory.glob(".shard-*.tmp"), *self.directory.glob(".manifest.json.*.tmp")]:
            stale.unlink(missing_ok=True)
        if not resume:
            for shard in self.directory.glob("shard-*.parquet"):
                shard.unlink()
        if manifest is None or not resume:
            record = {
                "format": STORE_FORMAT,
                "fingerprint": self.fingerprint,
                "shard_size": self.shard_size,
                "num_patches": self.num_patches,
                "provenance": provenance,
                "shards": {},
            }
            with _locked(self.directory):
                _atomic_write_bytes(self.manifest_path, _manifest_bytes(record))

    def _record_checksum(self, name: str, sha256: str) -> None:
        """Add one shard's checksum to the manifest (under a lock: the processes of a run write concurrently)."""
        with _locked(self.directory):
            manifest = self.read_manifest(self.directory)
            if manifest is None:
                raise FileNotFoundError(f"the labelling manifest {self.manifest_path} disappeared during the run")
            manifest.setdefault("shards", {})[name] = sha256
            _atomic_write_bytes(self.manifest_path, _manifest_bytes(manifest))

    # -- shards ---------------------------------------------------------------------------------------------------
    def _metadata(self, shard: int) -> tuple[dict, int] | None:
        path = self.path(shard)
        try:
            parquet = pq.ParquetFile(path)
            meta = json.loads(parquet.schema_arrow.metadata[_META_KEY])
            return meta, parquet.metadata.num_rows
        except (OSError, ValueError, KeyError, TypeError) as error:  # a truncated or foreign file: recomputed
            logger.warning("cannot read %s (%s); it will be recomputed.", path, error)
            return None

    def is_done(
        self, shard: int, num_rows: int, input_sha256: str | None = None, *, checksums: dict[str, str] | None = None
    ) -> bool:
        r"""Whether shard `shard` is on disk, intact (its SHA-256 is the one the manifest records), complete
        (`num_rows` rows) and of this run (and, when `input_sha256` is given, computed from those inputs). A shard
        that is not intact is recomputed, with a warning that names it.

        Args:
            shard (`int`), num_rows (`int`): the shard and the rows it must hold.
            input_sha256 (`str`, *optional*): hash of the rows' inputs (streams: checked against the shard's).
            checksums (`dict`, *optional*): [`checksums`] read once for many shards; read here when not given.

        Raises:
            `ValueError`: the shard was computed from other inputs (the data set changed).
        """
        path = self.path(shard)
        if not path.is_file():
            return False
        expected = (checksums if checksums is not None else self.checksums()).get(path.name)
        if expected is None:
            logger.warning(
                "%s has no checksum in %s (the run was stopped before recording it); it will be recomputed.",
                path, self.manifest_path,
            )  # fmt: skip
            return False
        actual = file_sha256(path)
        if actual != expected:
            logger.warning(
                "%s is corrupt: its SHA-256 is %s but the manifest records %s; it will be recomputed.",
                path, actual, expected,
            )  # fmt: skip
            return False
        found = self._metadata(shard)
        if found is None:
            return False
        meta, rows = found
        if meta.get("fingerprint") != self.fingerprint or rows != num_rows:
            logger.warning("%s belongs to another run or is incomplete; it will be recomputed.", path)
            return False
        if input_sha256 is not None and meta.get("input_sha256") != input_sha256:
            raise ValueError(
                f"{path} was computed from other inputs than rows {shard * self.shard_size}.."
                f"{shard * self.shard_size + num_rows - 1} of this data set (input SHA-256 {meta.get('input_sha256')}"
                f", now {input_sha256}): the data set changed or is not iterated in a fixed order. Use another "
                "output_dir, or resume=False."
            )
        return True

    def write(
        self, shard: int, indices: np.ndarray, values: np.ndarray, targets: np.ndarray, input_sha256: str
    ) -> Path:
        r"""Write one shard atomically, then record its SHA-256 in the manifest.

        Args:
            shard (`int`): the shard number.
            indices (`np.ndarray` of shape `(n,)`): row indices in the data set.
            values (`np.ndarray` of shape `(n, M)`): SHAP values, stored as float32; all finite.
            targets (`np.ndarray` of shape `(n,)`): the explained class of each row.
            input_sha256 (`str`): hash of the rows' inputs, checked when the shard is skipped on resume.

        Raises:
            `ValueError`: values of another shape, or not finite (nothing is written).
        """
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape != (len(indices), self.num_patches):
            raise ValueError(f"shard values must have shape ({len(indices)}, {self.num_patches}), got {values.shape}")
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.asarray(indices)[~finite][0])
            raise ValueError(f"row {row}: its SHAP values are not finite (NaN or Inf); shard {shard} is not written")
        meta = {"fingerprint": self.fingerprint, "shard": shard, "input_sha256": input_sha256}
        table = pa.table(
            {
                "index": pa.array(np.asarray(indices, dtype=np.int64)),
                "shap_values": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), self.num_patches),
                "shap_target": pa.array(np.asarray(targets, dtype=np.int64)),
            }
        ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        path = self.path(shard)
        _atomic_write_bytes(path, data)
        self._record_checksum(path.name, hashlib.sha256(data).hexdigest())
        return path

    def read(self, num_shards: int, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        r"""Read shards `0 .. num_shards - 1` back in row order, each checked against its recorded SHA-256.

        Returns:
            `tuple(np.ndarray, np.ndarray)`: values of shape `(num_rows, M)` float32 and targets of shape
            `(num_rows,)` int64.

        Raises:
            `FileNotFoundError`: a shard is missing (a process of the run failed before writing it).
            `ValueError`: a shard is corrupt (named; a resumed run recomputes it), or the shards do not cover rows
                `0 .. num_rows - 1` exactly once.
        """
        values = np.empty((num_rows, self.num_patches), dtype=np.float32)
        targets = np.empty(num_rows, dtype=np.int64)
        checksums = self.checksums()
        seen = 0
        for shard in range(num_shards):
            path = self.path(shard)
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} is missing: a process of the labelling run did not finish it.")
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if checksums.get(path.name) != digest:
                raise ValueError(
                    f"shard {path} is corrupt: its SHA-256 is {digest}, the manifest records "
                    f"{checksums.get(path.name)}. Run label_dataset again with the same arguments to recompute it."
                )
            table = pq.read_table(pa.BufferReader(data))
            index = table.column("index").to_numpy()
            start = shard * self.shard_size
            if not np.array_equal(index, np.arange(start, start + len(index))):
                raise ValueError(f"{path} holds rows {index[:1]}..{index[-1:]}, expected rows from {start} in order")
            flat = table.column("shap_values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            values[start : start + len(index)] = flat.reshape(len(index), self.num_patches)
            targets[start : start + len(index)] = table.column("shap_target").to_numpy()
            seen += len(index)
        if seen != num_rows:
            raise ValueError(f"the shards in {self.directory} hold {seen} rows, expected {num_rows}")
        return values, targets


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory / ".manifest.lock"` (POSIX `flock`; no lock where there is none)."""
    with open(directory / ".manifest.lock", "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
