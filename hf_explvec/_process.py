"""The process group of a run, shared by labelling (`hf_explvec.data`) and training (`hf_explvec.training`)."""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

__all__ = ["process_state"]


def process_state() -> PartialState:
    r"""
    Accelerate's process state, checked against the launcher.

    On a machine without CUDA, processes started by `accelerate launch` / torchrun (`WORLD_SIZE > 1`) join a CPU
    (gloo) group, as they do with `ACCELERATE_USE_CPU=1`.

    Returns:
        `accelerate.PartialState`: the state of this process (`num_processes`, `process_index`, `is_main_process`).

    Raises:
        `ValueError`: `WORLD_SIZE` is not a positive integer, or names more processes than Accelerate joined (each
            process would then work alone and write the same files).
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(raw)
    except ValueError:
        raise ValueError(f"the environment variable WORLD_SIZE must be a positive integer, got {raw!r}.") from None
    if world_size < 1:
        raise ValueError(f"the environment variable WORLD_SIZE must be a positive integer, got {raw!r}.")
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (world_size > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if world_size > state.num_processes:
        raise ValueError(
            f"WORLD_SIZE={world_size} but Accelerate started {state.num_processes} process group member(s); "
            "expected one member per process. On CPU, launch with ACCELERATE_USE_CPU=1."
        )
    return state
