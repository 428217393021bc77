"""Benchmark TaskVector.apply_to against a bare in-place add over the same tensors.

Prints, for a float32 and a bfloat16 model of the ViT-B/32 vision architecture (random weights, ~88M parameters):
- the time ratio apply_to / bare `p.add_(d, alpha=lam)` loop, medians of interleaved rounds (target: <= 1.5x);
- the peak extra resident memory of one apply_to, measured in a fresh process with the kernel's high-water mark
  (`/proc/self/clear_refs` then `VmHWM`), against the size of the largest parameter in float32 (target: at most one
  tensor in flight besides the model and the vector).

    python scripts/bench_apply_vector.py            # ViT-B/32
    python scripts/bench_apply_vector.py --tiny     # the tiny test architecture, seconds
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from hf_explvec import TaskVector
from hf_explvec.arithmetic import vision_state
from hf_explvec.testing import TINY_VISION


def build(tiny: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    config = CLIPVisionConfig(**TINY_VISION) if tiny else CLIPVisionConfig()
    model = CLIPVisionModelWithProjection(config).to(dtype).eval()
    vector = TaskVector({k: torch.randn(v.shape) * 1e-3 for k, v in vision_state(model.state_dict()).items()})
    return model, vector


def bare_pairs(model, vector):
    params = vision_state(model.state_dict(keep_vars=True))
    return [(params[k], d) for k, d in vector.state_dict().items()]


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_memory(tiny: bool, dtype_name: str, method: str) -> dict:
    """Run in a fresh process: peak extra RSS of one apply (KB) and the largest parameter's float32 size (KB)."""
    model, vector = build(tiny, getattr(torch, dtype_name))
    pairs = bare_pairs(model, vector)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS
    before = status_kb("VmRSS")
    with torch.no_grad():
        if method == "apply_to":
            vector.apply_to(model, lam=0.8)
        else:
            for p, d in pairs:
                p.add_(d, alpha=0.8)
    largest = max(p.numel() for p in model.parameters()) * 4 // 1024
    return {"extra_kb": status_kb("VmHWM") - before, "largest_fp32_kb": largest}


def time_rounds(model, vector, rounds: int) -> tuple[list[float], list[float]]:
    pairs = bare_pairs(model, vector)
    ours, bare = [], []
    with torch.no_grad():
        for i in range(rounds):
            lam = 0.8 if i % 2 == 0 else -0.8  # keep the weights where they started
            start = time.perf_counter()
            vector.apply_to(model, lam=lam)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for p, d in pairs:
                p.add_(d, alpha=-lam)
            bare.append(time.perf_counter() - start)
    return ours, bare


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny architecture instead of ViT-B/32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory:
        print(json.dumps(measure_memory(args.tiny, *args._memory)))
        return

    torch.set_num_threads(torch.get_num_threads())
    tower = "tiny" if args.tiny else "ViT-B/32"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tower} vision tower")
    print(
        f"{'model dtype':<12} {'params':>12} {'apply_to ms':>12} {'bare add ms':>12} {'ratio':>6}  "
        f"{'apply extra MB':>14} {'bare extra MB':>13} {'largest fp32 MB':>15}"
    )
    for dtype_name in ("float32", "bfloat16"):
        model, vector = build(args.tiny, getattr(torch, dtype_name))
        ours, bare = time_rounds(model, vector, args.rounds)
        del model
        memory = {}
        for method in ("apply_to", "bare"):
            command = [sys.executable, __file__, "--_memory", dtype_name, method] + (["--tiny"] if args.tiny else [])
            memory[method] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        ratio = statistics.median(ours) / statistics.median(bare)
        print(
            f"{dtype_name:<12} {vector.num_parameters:>12,} {1e3 * statistics.median(ours):>12.1f} "
            f"{1e3 * statistics.median(bare):>12.1f} {ratio:>6.2f}  {memory['apply_to']['extra_kb'] / 1024:>14.1f} "
            f"{memory['bare']['extra_kb'] / 1024:>13.1f} {memory['apply_to']['largest_fp32_kb'] / 1024:>15.1f}"
        )


if __name__ == "__main__":
    main()
