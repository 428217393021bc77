"""Benchmark Hub transfers of a task vector through a LocalHub on loopback, against a raw copy of the same bytes.

Builds a random float32 vector of the ViT-B/16 vision tower + projection (~344 MB, 12 layers; `--size-mb` picks the
number of layers for another size), saves it once with `TaskVector.save_pretrained`, then runs interleaved rounds of:

- copy: `shutil.copyfile` of the saved `*.safetensors` files to a fresh folder (the reference, page cache warm; on
  Linux the kernel copies, with `sendfile`);
- rw copy: the same bytes read and written through Python in 16 MiB blocks (for context: a copy in user space);
- push: `TaskVector.push_to_hub` to a LocalHub repo (serialisation, hashing, LFS upload, commit), with one value
  changed before each round so that every push uploads its weights (the Hub skips content it already holds);
- pull: `TaskVector.from_pretrained(repo_id, revision=<that push's commit>)` into an empty cache (download + load).

Prints the median time of each and the ratios push/copy and pull/copy (goal: the Hub path at least 0.5x the raw
copy's throughput, i.e. a ratio of at most 2), and the throughput in MB/s.

    python scripts/bench_hub_transfer.py                   # ~344 MB, 3 rounds
    python scripts/bench_hub_transfer.py --size-mb 40 --rounds 2
"""

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub.utils import disable_progress_bars
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from hf_explvec import TaskVector
from hf_explvec.arithmetic import vision_state
from hf_explvec.testing import LocalHub, hub_client_env

MB = 1e6


def vit_b16_shapes(size_mb: float) -> dict[str, torch.Size]:
    """Shapes of the ViT-B/16 vision tower + projection, with as many layers as fit `size_mb` (at least one)."""

    def shapes(layers: int) -> dict[str, torch.Size]:
        config = CLIPVisionConfig(patch_size=16, num_hidden_layers=layers)
        with torch.device("meta"):  # shapes only: no memory
            model = CLIPVisionModelWithProjection(config)
        return {k: v.shape for k, v in vision_state(model.state_dict()).items()}

    def nbytes(s: dict) -> int:
        return sum(4 * shape.numel() for shape in s.values())

    one, two = nbytes(shapes(1)), nbytes(shapes(2))
    layers = max(1, round((size_mb * MB - (2 * one - two)) / (two - one)))
    return shapes(layers)


def folder_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=350.0, help="approximate vector size in MB (default 350)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary directory)")
    args = parser.parse_args()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    disable_progress_bars()

    torch.manual_seed(0)
    vector = TaskVector({k: torch.randn(shape) for k, shape in vit_b16_shapes(args.size_mb).items()})
    first = next(iter(vector.state_dict()))
    with tempfile.TemporaryDirectory(prefix="bench-hub-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        vector.save_pretrained(tmp / "saved")
        sources = folder_files(tmp / "saved")
        size = sum(p.stat().st_size for p in sources)
        python = platform.python_version()
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, Python {python}")
        print(f"vector: {len(vector.state_dict())} tensors, {size / MB:.1f} MB in {len(sources)} safetensors file(s)")
        times: dict[str, list[float]] = {"copy": [], "rw copy": [], "push": [], "pull": []}
        with LocalHub(tmp / "hub") as hub, hub_client_env(hub.endpoint, tmp / "home"):
            for round_ in range(args.rounds):
                dest = tmp / "copy"
                dest.mkdir()
                start = time.perf_counter()
                for src in sources:
                    shutil.copyfile(src, dest / src.name)
                times["copy"].append(time.perf_counter() - start)
                shutil.rmtree(dest)
                dest.mkdir()
                start = time.perf_counter()
                for src in sources:
                    with open(src, "rb") as fin, open(dest / src.name, "wb") as fout:
                        while block := fin.read(16 << 20):
                            fout.write(block)
                times["rw copy"].append(time.perf_counter() - start)
                shutil.rmtree(dest)

                vector.state_dict()[first].view(-1)[0] = float(round_)  # new content: the push uploads it all
                start = time.perf_counter()
                commit = vector.push_to_hub("bench/vector")
                times["push"].append(time.perf_counter() - start)

                cache = tmp / f"cache{round_}"
                start = time.perf_counter()
                pulled = TaskVector.from_pretrained("bench/vector", revision=commit.oid, cache_dir=cache)
                times["pull"].append(time.perf_counter() - start)
                if not torch.equal(pulled.state_dict()[first], vector.state_dict()[first]):
                    raise RuntimeError("the pulled vector differs from the pushed one")
                del pulled
                shutil.rmtree(cache)
                print(f"round {round_}: " + "  ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"median of {args.rounds} interleaved rounds:")
    for k, v in median.items():
        print(f"  {k:7s} {v:8.3f} s  {size / MB / v:8.1f} MB/s")
    print(f"  push/copy time ratio {median['push'] / median['copy']:.2f}  (goal <= 2.0: >= 0.5x the copy's throughput)")
    print(f"  pull/copy time ratio {median['pull'] / median['copy']:.2f}  (goal <= 2.0)")
    rw = median["rw copy"]
    print(f"  push/rw copy time ratio {median['push'] / rw:.2f}, pull/rw copy time ratio {median['pull'] / rw:.2f}")


if __name__ == "__main__":
    main()
