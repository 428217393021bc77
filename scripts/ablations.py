"""Ablation rows of the explainability transfer (issue 11, item 7): α, per-layer parts of τ_S, the post-hoc efficiency
correction and twice the source data, each with its λ2 chosen on validation, against the demo's reference transfer.

A thin wrapper over [`hf_explvec.demo.ablations.run_ablations`]: one base stage, the reference source twins and each
variant's source, θ_T once per related target; prints the table and writes `results.json` and `ablations.md` to the
output folder (the models and Kernel SHAP label shards under `work/`).

    python scripts/ablations.py --output-dir reports/ablations          # the demo's default sizes (long: see below)
    python scripts/ablations.py --quick --output-dir /tmp/ablations     # toy sizes, seconds; numbers mean nothing
    python scripts/ablations.py --variants efficiency layers_last       # a subset of the rows
    python scripts/ablations.py --variants efficiency --hidden-size 128 --intermediate-size 256  # capacity

The first printed line describes the run: date, machine, command and the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from hf_explvec.demo.ablations import DEFAULT_VARIANTS, ablation_report, related_targets, run_ablations
from hf_explvec.demo.config import DemoConfig, quick_config


def _settings_description(config: DemoConfig, quick: bool) -> str:
    """bench_compression's `run_description` (library, threads, machine, settings) when it imports, else the same
    facts written here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from bench_compression import run_description

        return run_description(config, quick)
    except Exception:  # noqa: BLE001  (the shared helper is a convenience; the facts below are the same)
        import torch

        return (f"torch {torch.__version__}, {config.num_threads} thread(s), {platform.machine()}, "
                f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
                f"{'quick_config (toy sizes)' if quick else 'DemoConfig defaults'}, sizes train/val/test "
                f"{config.train_size}/{config.validation_size}/{config.test_size}, "
                f"Kernel SHAP N={config.eval_num_samples}")  # fmt: skip
    finally:
        sys.path.pop(0)


def run_line(config: DemoConfig, quick: bool, argv: list[str]) -> str:
    """The first printed line: UTC date, machine, the command, then the settings."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python", "scripts/ablations.py", *argv])
    host = platform.node() or "unknown host"
    return (f"{now} on {host}; command: {command}; {_settings_description(config, quick)}; source {config.source}, "
            f"targets {', '.join(config.targets)}, seed {config.seed}; small CLIP hidden {config.hidden_size}, MLP "
            f"{config.intermediate_size}, {config.num_hidden_layers} layers")  # fmt: skip


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="reports/ablations", help="where results.json and ablations.md go")
    parser.add_argument("--seed", type=int, default=0, help="the one seed every seed derives from")
    parser.add_argument("--quick", action="store_true", help="quick_config's toy sizes (a smoke run)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"a subset of the rows (default: all): {', '.join(DEFAULT_VARIANTS)}")  # fmt: skip
    parser.add_argument("--targets", nargs="+", default=None, metavar="DOMAIN",
                        help="target domains (default: the related targets of the demo's defaults)")  # fmt: skip
    parser.add_argument("--source", default=None, help="source domain (default: the demo's)")
    parser.add_argument("--base", default=None, help="base-stage domain (default: the demo's)")
    parser.add_argument("--hidden-size", type=int, default=None, help="capacity: the small CLIP's hidden size")
    parser.add_argument("--intermediate-size", type=int, default=None, help="capacity: its MLP size")
    parser.add_argument("--num-hidden-layers", type=int, default=None, help="capacity: its transformer layers")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)

    output_dir = Path(args.output_dir)
    settings = {"output_dir": str(output_dir), "seed": args.seed, "show_progress": args.progress,
                "command": " ".join(["python", "scripts/ablations.py", *argv])}  # fmt: skip
    settings.update(
        {
            key: getattr(args, key)
            for key in ("source", "base", "hidden_size", "intermediate_size", "num_hidden_layers")
            if getattr(args, key) is not None
        }
    )
    if args.targets is not None:
        settings["targets"] = tuple(args.targets)
    config = quick_config(**settings) if args.quick else DemoConfig(**settings)
    config = dataclasses.replace(config, targets=config.targets if args.targets else related_targets(config))
    description = run_line(config, args.quick, argv)
    print(description, flush=True)
    start = time.perf_counter()
    results = run_ablations(config, tuple(args.variants), targets=config.targets)
    results["run"] = {"description": description, "quick": args.quick,
                      "wall_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    report = ablation_report(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (output_dir / "ablations.md").write_text(f"{results['run']['description']}\n\n{report}")
    print(report)
    print(f"wall time {results['run']['wall_seconds']:.0f} s; wrote {output_dir / 'results.json'} and "
          f"{output_dir / 'ablations.md'}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
