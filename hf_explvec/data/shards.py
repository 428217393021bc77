"""The on-disk shard store of a labelling run ([`~hf_explvec.data.label_dataset`]): atomic, checksummed, resumable.

A labelling run owns one directory:

    output_dir/
      manifest.json          {"format", "fingerprint", "shard_size", "num_patches", "provenance",
                              "shards": {"shard-00000.parquet": "<sha256>", ...}}
      .manifest.lock         the lock the processes of a run take to record checksums in the manifest
      shard-00000.parquet    rows [0, shard_size): index (int64), shap_values (M float32), shap_target (int64)
      shard-00001.parquet    rows [shard_size, 2 shard_size) ...

Each shard is written to a hidden temporary name in the same directory, flushed to disk and moved into place with
`os.replace`, so a shard file either is complete or does not exist, whenever the job is killed; then its SHA-256 is
recorded in the manifest. Its Parquet schema metadata records the run's fingerprint and a SHA-256 of the inputs it
was computed from. A finished shard is one whose bytes match the recorded SHA-256 (a file damaged on disk, even one
whose Parquet footer still reads, does not), of this run's fingerprint and row count; any other is recomputed, with a
warning that names it. Only SHAP values are stored here, never the images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per output_dir
    fcntl = None


__all__ = ["STORE_FORMAT", "ShardStore", "file_sha256"]

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
_META_KEY = b"hf_explvec"


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
