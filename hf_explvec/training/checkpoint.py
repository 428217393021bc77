"""Checkpoints and the output folder of a training run.

Checkpoints (`output_dir/checkpoints/step_00000100/`) are written by `accelerator.save_state`: the model weights in
safetensors; the optimizer, scheduler and random-number-generator states with `torch.save`, which is pickle-based
(Accelerate reads them back with the restricted unpickler, `weights_only=True`). The trainer's own counters are in
`trainer_state.json`, written last: a folder without it is an unfinished checkpoint and is never resumed from.
Resume only from checkpoints you wrote yourself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from accelerate import Accelerator

from .config import CHECKPOINTS_DIR, RESUME_KEYS, TRAINER_STATE_NAME, TrainingConfig

logger = logging.getLogger(__name__)

__all__ = [
    "check_output_dir",
    "check_resumable",
    "list_checkpoints",
    "read_trainer_state",
    "resolve_resume",
    "save_checkpoint",
]

# Keys of `trainer_state.json` that a resume reads.
_STATE_KEYS = ("global_step", "epoch", "batches_in_epoch", "pending_sums", "history")


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    r"""
    Read a checkpoint's `trainer_state.json`.

    Args:
        checkpoint (`str` or `os.PathLike`): The checkpoint folder.

    Returns:
        `dict`: the counters (`global_step`, `epoch`, `batches_in_epoch`), the run's settings, the pending loss sums
        and the history at the checkpoint.

    Raises:
        `FileNotFoundError`: the folder has no `trainer_state.json`.
        `ValueError`: the file is not a JSON object with the keys a resume needs (it names the file).
    """
    path = Path(checkpoint) / TRAINER_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"resume_from={os.fspath(checkpoint)!r} is not a checkpoint folder (no {TRAINER_STATE_NAME})."
        )
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the checkpoint is damaged.") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(state).__name__}; the checkpoint is damaged.")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing} that a resume needs; the checkpoint is damaged.")
    return state


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete, readable checkpoints (with a valid `trainer_state.json`) under `output_dir/checkpoints`, oldest
    first. Damaged ones are skipped with a warning."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not (path.name.startswith("step_") and (path / TRAINER_STATE_NAME).is_file()):
            continue
        try:
            found.append((int(read_trainer_state(path)["global_step"]), path))
        except (ValueError, TypeError) as error:
            logger.warning("skipping the damaged checkpoint %s: %s", path, error)
    return [path for _, path in sorted(found)]


def resolve_resume(config: TrainingConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its trainer state, or `(None, None)` for a fresh start.

    Raises:
        `FileNotFoundError` / `ValueError`: `resume_from` is not a (readable) checkpoint folder.
    """
    if config.resume_from is None:
        return None, None
    if config.resume_from == "latest":
        found = list_checkpoints(config.output_dir)
        if not found:
            logger.info("resume_from='latest': no checkpoint under %s; starting from scratch.", config.output_dir)
            return None, None
        path = found[-1]
    else:
        path = Path(config.resume_from)
    return path, read_trainer_state(path)


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Raise `ValueError` naming each setting (of `RESUME_KEYS`) where the checkpoint and this run differ."""
    mismatched = {k: (saved.get(k), current[k]) for k in RESUME_KEYS if saved.get(k) != current[k]}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(f"cannot resume from {path}: the run differs in {details}; resume needs the same settings.")


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    r"""
    Check, without leaving anything behind, that `output_dir` is a folder (or can be created as one) where this
    process can write.

    Args:
        output_dir (`str` or `os.PathLike`): The folder.

    Returns:
        `pathlib.Path`: `output_dir`.

    Raises:
        `NotADirectoryError`: `output_dir`, or the closest of its parents that exists, is not a folder.
        `PermissionError`: files cannot be created there (read-only file system, permissions, immutable folder).
    """
    path = Path(output_dir)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f": its parent {existing} is not a folder"
        kind = "a file" if existing.is_file() else "not a folder"
        raise NotADirectoryError(
            f"output_dir={os.fspath(path)!r} must be a folder (existing or to be created), but "
            f"{os.fspath(existing)!r} is {kind}{where}."
        )
    try:  # a real test: os.access ignores read-only mounts for some file systems and always says yes to root
        probe = tempfile.mkdtemp(prefix=".hf_explvec-write-test-", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"output_dir={os.fspath(path)!r} is not writable: cannot create entries in {os.fspath(existing)!r} "
            f"({error.strerror or error})."
        ) from None
    os.rmdir(probe)
    return path


def save_checkpoint(accelerator: Accelerator, config: TrainingConfig, state: dict) -> Path:
    """`accelerator.save_state` (all processes), then `trainer_state.json` last, which marks the folder complete;
    then drop the checkpoints beyond `config.save_total_limit`. Returns the checkpoint folder."""
    path = Path(config.output_dir) / CHECKPOINTS_DIR / f"step_{state['global_step']:08d}"
    accelerator.save_state(os.fspath(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        if config.save_total_limit is not None:
            for old in list_checkpoints(config.output_dir)[: -config.save_total_limit]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", path)
    accelerator.wait_for_everyone()
    return path
