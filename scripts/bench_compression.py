"""Measure compressed and merged explainability vectors on the demo's related target (issue 12).

The models are the demo's (`hf-explvec demo`, [`hf_explvec.demo`]), built by the demo's own code: the small CLIP and
its base stage, the source twins and τ_S on `digits_on_textures`, the prediction-only target θ_T on
`digits_on_photos` (the related target of the default transfer). λ2 is chosen on the validation split by the demo's
rule ([`select_lambda`]: lowest E-RMSE within 4 accuracy points of λ2 = 0) for the full vector; every compressed vector
is then applied at that λ2 and measured on the test split exactly as the demo measures (accuracy, E-RMSE against
Kernel SHAP values of *that* model, N = 500, logit of the label class, plus the demo's faithfulness metrics).

Variants of τ_S:

- sparse, per tensor: density in {0.3, 0.1, 0.03, 0.01}, by magnitude and by DARE (`random_rescaled`, one seeded draw);
- low rank: rank in {16, 8, 4, 2} (2-D non-embedding tensors factored, the others dense);
- merges of τ_S with a second source vector τ_S' (the source stage run again with the demo seed + 1: other source
  images of the same domain, its own Kernel SHAP labels and training order, same base): sum (weights 1/2, 1/2),
  TIES and DARE-TIES (density 0.2), each against τ_S and τ_S' alone, both at the λ2 of τ_S and at a λ2 chosen for
  that vector on validation (`--own-lam` gives other families that second λ2 too).

The size is the vector's safetensors file on disk as `save_pretrained` writes it (and, for context, the bytes of
tensor data). Prints a table and writes a plot of ΔE-RMSE and accuracy against file size.

    python scripts/bench_compression.py --cache DIR        # the demo's default sizes: about 13 min to build the
                                                           # models (kept in DIR for reruns), 20 min to measure, on
                                                           # 2 shared cores
    python scripts/bench_compression.py --tiny             # toy sizes (quick_config), seconds; numbers mean nothing
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_explvec import TaskVector
from hf_explvec.demo import DemoConfig, quick_config
from hf_explvec.demo.data import load_domain, load_domains
from hf_explvec.demo.domains import DEFAULT_TRANSFER, DOMAINS
from hf_explvec.demo.pipeline import _Clock, _evaluate, _source_stage, _training_config, _training_set
from hf_explvec.demo.pretrain import build_clip, pretrain_clip, start_model
from hf_explvec.evaluation import select_lambda
from hf_explvec.task_vector import transfer
from hf_explvec.training import train

DENSITIES = (0.3, 0.1, 0.03, 0.01)
RANKS = (16, 8, 4, 2)
MERGE_DENSITY = 0.2
DARE_SEED = 0
FAMILIES = ("magnitude", "dare", "low_rank", "merge")


# ----------------------------------------------------------------------------------------------- the demo's models
def run_description(config: DemoConfig, tiny: bool) -> str:
    """The first line a benchmark prints: library, threads, machine and the demo settings it measures."""
    return (f"torch {torch.__version__}, {config.num_threads} thread(s), {platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
            f"{'quick_config (toy sizes)' if tiny else 'DemoConfig defaults'}, target "
            f"{config.targets[0]}, sizes train/val/test {config.train_size}/{config.validation_size}/"
            f"{config.test_size}, Kernel SHAP N={config.eval_num_samples}")  # fmt: skip


def demo_config(tiny: bool, output_dir: str) -> DemoConfig:
    """The demo's default settings (only the related target), or `quick_config`'s toy sizes with `tiny`."""
    settings = {"output_dir": output_dir, "show_progress": False, "targets": (DEFAULT_TRANSFER["related"],)}
    return quick_config(**settings) if tiny else DemoConfig(**settings)


def build_demo_models(config: DemoConfig, *, second_source: bool = False, cache: str | None = None, log=print) -> dict:
    r"""
    The demo's base, source and related-target models, by the demo's own stages ([`hf_explvec.demo.pipeline`]).

    Args:
        config ([`DemoConfig`]): the demo settings (`targets` holds the related target).
        second_source (`bool`): also run the source stage with seed `config.seed + 1` (other source images of the
            same domain, own labels and training order, same base) for a second source vector.
        cache (`str`, *optional*): a folder; when it holds models built with the same settings they are loaded
            (safetensors) instead of trained, else they are trained and saved there.
        log: where progress lines go.

    Returns:
        `dict` with `clip`, `tokenizer`, `target` (the [`Domain`]), `base` (θ_base of the target with its head),
        `prediction_only` (θ_T), `vector` (τ_S), `vector2` (τ_S' or `None`), `work` (the demo's work folder) and
        `timings` (seconds per stage).
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.num_threads)
    cache = None if cache is None else Path(cache)
    settings = {"config": {k: v for k, v in config.to_dict().items() if k not in ("output_dir", "show_progress")},
                "second_source": second_source}  # fmt: skip
    stamp = None if cache is None else cache / "settings.json"
    if stamp is not None and stamp.exists():
        saved, current = json.loads(stamp.read_text()), json.loads(json.dumps(settings["config"]))
        # A setting added to DemoConfig after the cache was written matches when it has its default value.
        defaults = json.loads(json.dumps(DemoConfig().to_dict()))
        current = {k: v for k, v in current.items() if k in saved["config"] or v != defaults.get(k)}
        if saved["config"] == current and saved["second_source"] >= second_source:
            return _load_models(config, cache, second_source, log)
    models = _build_models(config, second_source, log)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        models["clip"].save_pretrained(cache / "clip")
        models["prediction_only"].save_pretrained(cache / "prediction_only")
        models["vector"].save_pretrained(cache / "vector")
        if models["vector2"] is not None:
            models["vector2"].save_pretrained(cache / "vector2")
        (cache / "timings.json").write_text(json.dumps(models["timings"]))
        stamp.write_text(json.dumps(settings))
        log(f"models saved to {cache}")
    return models


def _load_models(config: DemoConfig, cache: Path, second_source: bool, log) -> dict:
    from transformers import CLIPModel

    from hf_explvec import SelfExplainingCLIPVision
    from hf_explvec.demo.clip import tiny_clip_tokenizer
    from hf_explvec.demo.data import domain_role

    clip = CLIPModel.from_pretrained(cache / "clip", use_safetensors=True).eval()
    tokenizer = tiny_clip_tokenizer()  # the demo's small CLIP: its tokenizer is built in code (build_clip)
    image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    name = config.targets[0]
    target = load_domain(name, domain_role(name, config.source), sizes, config, image_size, patch_size)
    log(f"models loaded from {cache} (built by an earlier run with the same settings)")
    return {"clip": clip, "tokenizer": tokenizer, "target": target, "base": start_model(clip, tokenizer, target),
            "prediction_only": SelfExplainingCLIPVision.from_pretrained(cache / "prediction_only").eval(),
            "vector": TaskVector.from_pretrained(cache / "vector"),
            "vector2": TaskVector.from_pretrained(cache / "vector2") if second_source else None,
            "work": Path(config.output_dir) / "work",
            "timings": json.loads((cache / "timings.json").read_text()), "cached": True}  # fmt: skip


def _build_models(config: DemoConfig, second_source: bool, log) -> dict:
    clock, work = _Clock(), Path(config.output_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    clip, tokenizer = build_clip(config)
    clip.to(config.device or "cpu")
    image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    domains = load_domains(config, image_size, patch_size)
    t = clock.lap("data", t)
    # As the demo's run(): the base stage sees the prompt templates of every registered domain.
    templates = sorted({template for d in [*DOMAINS.values(), *domains.all()] for template in d.templates})
    pretrain_clip(clip, tokenizer, domains.base.train, domains.base.class_names, templates, config)
    clock.lap("base stage", t)
    log(f"[{time.strftime('%H:%M:%S')}] base stage done")
    source = _source_stage(clip, tokenizer, domains.source, config, work, clock)
    log(f"[{time.strftime('%H:%M:%S')}] source stage done: |τ_S| = {source['twins'].vector.norm():.4f}")
    vector2 = None
    if second_source:
        t = time.perf_counter()
        config2 = dataclasses.replace(config, seed=config.seed + 1)
        sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
        source2 = load_domain(config.source, "source", sizes, config2, image_size, patch_size)
        clock.lap("data (second source)", t)
        vector2 = _source_stage(clip, tokenizer, source2, config2, work / "second_source", clock)["twins"].vector
        log(f"[{time.strftime('%H:%M:%S')}] second source stage done: |τ_S'| = {vector2.norm():.4f}")

    target = domains.targets[0]
    t = time.perf_counter()
    base = start_model(clip, tokenizer, target)
    run = _training_config(config, work, f"{target.name}_prediction_only", 1.0, len(target.train))
    prediction_only = train(copy.deepcopy(base), _training_set(target.train), run).model
    clock.lap("target: prediction-only training", t)
    log(f"[{time.strftime('%H:%M:%S')}] target prediction-only trained")
    return {"clip": clip, "tokenizer": tokenizer, "target": target, "base": base, "prediction_only": prediction_only,
            "vector": source["twins"].vector.to(device="cpu"), "vector2": None if vector2 is None else
            vector2.to(device="cpu"), "work": work, "timings": clock.stages}  # fmt: skip


def lambda_sweep(models: dict, vector, config: DemoConfig, split: str = "validation") -> list[dict]:
    """Accuracy and E-RMSE of θ_T + λ2·`vector` for each λ2 of the demo's grid on a split (no perturbation metrics)."""
    rows = []
    for lam in config.lambdas:
        model = apply_vector(models, vector, lam, config)
        metrics, _ = _evaluate(model, getattr(models["target"], split), config, f"{split}_shap", split, False)
        rows.append({"lam": lam, **metrics})
    return rows


def apply_vector(models: dict, vector, lam: float, config: DemoConfig):
    """θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ, the demo's transfer (a copy; θ_T is left unchanged)."""
    return transfer(models["base"], models["prediction_only"], vector, lam=lam, lam_target=config.lam_target)


# ------------------------------------------------------------------------------------------------- compression
def variants(
    vector: TaskVector, vector2: TaskVector | None, families=FAMILIES, dare_seeds=(DARE_SEED,)
) -> list[tuple[str, str, TaskVector]]:
    """(family, label, vector) of every measured form of τ_S (and the merges with τ_S'), by TaskVector's methods;
    the full vector always comes first."""
    out = [("full", "full", vector)]
    if "magnitude" in families:
        for density in DENSITIES:
            out.append(("magnitude", f"d={density:g}", vector.sparsify(density, method="magnitude")))
    if "dare" in families:
        for density in DENSITIES:
            for seed in dare_seeds:
                generator = torch.Generator().manual_seed(seed)
                label = f"d={density:g}" + (f" seed {seed}" if tuple(dare_seeds) != (DARE_SEED,) else "")
                out.append(("dare", label, vector.sparsify(density, method="random_rescaled", generator=generator)))
    if "low_rank" in families:
        for rank in RANKS:
            out.append(("low_rank", f"r={rank}", vector.low_rank(rank)))
    if vector2 is not None and "merge" in families:
        pair = [vector, vector2]
        out.append(("merge", "τ_S' alone", vector2))
        out.append(("merge", "sum ½+½", TaskVector.merge(pair, weights=[0.5, 0.5], method="sum")))
        out.append(("merge", "ties", TaskVector.merge(pair, method="ties", density=MERGE_DENSITY)))
        generator = torch.Generator().manual_seed(DARE_SEED)
        merged = TaskVector.merge(pair, method="dare_ties", density=MERGE_DENSITY, generator=generator)
        out.append(("merge", "dare_ties", merged))
    return out


def file_size(vector: TaskVector, folder: Path) -> tuple[int, int]:
    """(bytes of the safetensors file(s) `save_pretrained` writes, bytes of the whole folder with config and card);
    the folder is loaded back and must hold the same entries kind (`storage_format`)."""
    shutil.rmtree(folder, ignore_errors=True)  # only what this save writes is measured
    vector.save_pretrained(folder)
    if TaskVector.from_pretrained(folder).storage_format != vector.storage_format:
        raise RuntimeError(f"{folder} did not load back as a {vector.storage_format} vector")
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.suffix == ".safetensors"), sum(p.stat().st_size for p in files)


def relative_error(form: TaskVector, vector: TaskVector) -> float:
    """`|form - vector| / |vector|` (dense copies)."""
    return (form.to_dense() - vector).norm() / vector.norm()


# ---------------------------------------------------------------------------------------------------------- report
def gain_kept(row: dict, zero: dict, full: dict) -> float:
    """Fraction of the full vector's E-RMSE gain (vs λ2 = 0) that `row` keeps."""
    gain = zero["e_rmse"] - full["e_rmse"]
    return (zero["e_rmse"] - row["e_rmse"]) / gain if gain else math.nan


def print_table(rows: list[dict], zero: dict, full: dict, accuracy_slack: float) -> None:
    header = (f"{'family':<10} {'variant':<24} {'λ2':>5} {'file B':>8} {'x smaller':>9} {'data B':>8} {'rel.err':>7} "
              f"{'acc':>6} {'ΔAcc':>6} {'E-RMSE':>7} {'ΔE-RMSE':>8} {'gain kept':>9} {'E(L2)':>6} {'SHAPrms':>7} "
              f"{'IoU@2':>6} {'Spear.':>6} {'point.':>6} {'del.AUC':>7} {'ins.AUC':>7}  goal")  # fmt: skip
    print(header)
    for row in rows:
        kept = gain_kept(row, zero, full) if row["family"] != "λ2=0" else math.nan
        goal = ""
        if row["family"] in ("magnitude", "dare", "low_rank"):
            small = row["ratio"] >= 10
            keeps = kept >= 0.9
            same = row["accuracy"] >= full["accuracy"] - accuracy_slack - 1e-9
            goal = "MET" if small and keeps and same else "no (" + ", ".join(
                w for w, ok in (("<10x", small), ("<90% gain", keeps), ("acc", same)) if not ok) + ")"  # fmt: skip
        print(
            f"{row['family']:<10} {row['label']:<24} {row['lam']:>5g} {row['file_bytes']:>8} {row['ratio']:>9.2f} "
            f"{row['data_bytes']:>8} {row['relative_error']:>7.3f} {100 * row['accuracy']:>5.1f}% "
            f"{100 * (row['accuracy'] - zero['accuracy']):>+6.1f} {row['e_rmse']:>7.3f} "
            f"{100 * (row['e_rmse'] / zero['e_rmse'] - 1):>+7.1f}% {100 * kept:>8.0f}% {row['e_rmse_l2']:>6.3f} "
            f"{row['shap_rms']:>7.3f} {row['iou_at_k']:>6.3f} "
            f"{row['spearman']:>6.3f} {row.get('pointing', math.nan):>6.3f} {row['deletion_auc']:>7.3f} "
            f"{row['insertion_auc']:>7.3f}  {goal}"
        )


def plot(rows: list[dict], zero: dict, full: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"full": ("k", "*"), "magnitude": ("tab:blue", "o"), "dare": ("tab:orange", "s"),
              "low_rank": ("tab:green", "^"), "merge": ("tab:purple", "D")}  # fmt: skip
    fig, axes = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for family, (color, marker) in styles.items():
        chosen = [r for r in rows if r["family"] == family and r.get("at_chosen", True)]
        if not chosen:
            continue
        x = [r["file_bytes"] / 1024 for r in chosen]
        line = "-" if family in ("magnitude", "dare", "low_rank") else "none"
        change = [100 * (r["e_rmse"] / zero["e_rmse"] - 1) for r in chosen]
        axes[0].plot(x, change, marker=marker, color=color, linestyle=line, label=family)
        axes[1].plot(x, [100 * r["accuracy"] for r in chosen], marker=marker, color=color, linestyle=line, label=family)
        for r, xi in zip(chosen, x, strict=True):
            axes[0].annotate(r["label"], (xi, 100 * (r["e_rmse"] / zero["e_rmse"] - 1)), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")  # fmt: skip
    full_change = 100 * (full["e_rmse"] / zero["e_rmse"] - 1)
    axes[0].axhline(0, color="grey", linestyle=":", label="λ2 = 0 (no vector)")
    axes[0].axhline(0.9 * full_change, color="red", linestyle="--", linewidth=0.8, label="90% of the full gain")
    axes[1].axhline(100 * zero["accuracy"], color="grey", linestyle=":", label="λ2 = 0 (no vector)")
    axes[1].axhline(100 * full["accuracy"], color="k", linestyle="--", linewidth=0.8, label="full vector")
    for ax in axes:
        ax.axvline(full["file_bytes"] / 1024 / 10, color="red", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test E-RMSE change vs λ2 = 0 (%)")
    axes[1].set_ylabel("test accuracy (%)")
    axes[1].set_xlabel("safetensors file size (KiB, log); red dotted line: 10× smaller than the full vector")
    axes[0].legend(fontsize=7)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="quick_config's toy sizes (a smoke run)")
    parser.add_argument("--output-dir", default=None, help="work folder (models, vectors); a temporary one by default")
    parser.add_argument("--plot", default="benchmarks/compression.png", help="where the PNG goes ('' for none)")
    parser.add_argument(
        "--cache", default=None, help="folder for the trained models: reused by a later run with the same settings"
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--accuracy-slack",
        type=float,
        default=0.01,
        help="'same accuracy' = test accuracy at least the full vector's minus this (a fraction)",
    )
    parser.add_argument("--no-merge", action="store_true", help="skip the second source stage and the merges")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + str(FAMILIES))
    parser.add_argument("--dare-seeds", default=str(DARE_SEED), help="comma-separated seeds of the DARE draws")
    parser.add_argument(
        "--own-lam",
        default="merge",
        help="families whose vectors also get a λ2 chosen for them on validation (comma-separated)",
    )
    parser.add_argument(
        "--lam",
        type=float,
        default=None,
        help="apply at this λ2 instead of choosing it on validation (e.g. an earlier run's choice)",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = Path(args.output_dir or scratch)
        config = demo_config(args.tiny, str(output_dir / "demo"))
        print(run_description(config, args.tiny))
        models = build_demo_models(config, second_source=not args.no_merge, cache=args.cache)
        vector, vector2 = models["vector"], models["vector2"]
        if vector2 is not None:
            print(f"cos(τ_S, τ_S') = {vector.cosine_similarity(vector2):.3f}, |τ_S| = {vector.norm():.4f}, "
                  f"|τ_S'| = {vector2.norm():.4f}")  # fmt: skip

        families = tuple(f for f in args.families.split(",") if f)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            parser.error(f"unknown families {unknown}; expected a subset of {FAMILIES}")
        dare_seeds = tuple(int(seed) for seed in args.dare_seeds.split(","))
        own_lam_families = tuple(f for f in args.own_lam.split(",") if f)
        t, sweep = time.perf_counter(), []
        if args.lam is None:
            sweep = lambda_sweep(models, vector, config)
            chosen = select_lambda(sweep, config.max_accuracy_drop)
            listed = ", ".join(f"{r['lam']:g}: {100 * r['accuracy']:.1f}% {r['e_rmse']:.3f}" for r in sweep)
            print(f"validation λ2 sweep of the full τ_S (λ2: accuracy E-RMSE): {listed}; chosen λ2 = {chosen:g}")
            print(f"[{time.strftime('%H:%M:%S')}] validation sweep {time.perf_counter() - t:.0f} s")
        else:
            chosen = args.lam
            print(f"λ2 = {chosen:g} given with --lam (no validation sweep)")

        test, rows = models["target"].test, []
        zero, _ = _evaluate(models["prediction_only"], test, config, "test_shap", "test", True)
        full_bytes = None
        for family, label, form in variants(vector, vector2, families, dare_seeds):
            sizes = file_size(form, output_dir / "vectors" / f"{family}-{label}".replace("/", "_").replace(" ", "_"))
            full_bytes = full_bytes or sizes[0]
            lams = [(chosen, True)]
            if family in own_lam_families and family != "full":
                own = select_lambda(lambda_sweep(models, form, config), config.max_accuracy_drop)
                if own != chosen:  # else the row at the chosen λ2 is this vector's own choice too
                    lams.append((own, False))
                label += " (own λ2 too)" if own == chosen else ""
            for lam, at_chosen in lams:
                model = apply_vector(models, form, lam, config)
                metrics, _ = _evaluate(model, test, config, "test_shap", "test", True)
                rows.append({"family": family, "label": label + ("" if at_chosen else " (own λ2)"), "lam": lam,
                             "at_chosen": at_chosen, "file_bytes": sizes[0], "folder_bytes": sizes[1],
                             "ratio": full_bytes / sizes[0], "data_bytes": form.storage_nbytes,
                             "relative_error": relative_error(form, vector), **metrics})  # fmt: skip
            print(f"[{time.strftime('%H:%M:%S')}] {family} {label} done")
        full = rows[0]
        zero_row = {"family": "λ2=0", "label": "no vector", "lam": 0.0, "file_bytes": 0, "folder_bytes": 0,
                    "ratio": math.inf, "data_bytes": 0, "relative_error": 1.0, **zero}  # fmt: skip

        how = "given" if args.lam is not None else "chosen on validation for the full τ_S"
        print(
            f"\nrelated target {config.targets[0]}, test split ({len(test)} images); λ2 {how}: {chosen:g}; ΔAcc in "
            f"points and ΔE-RMSE vs λ2 = 0; gain kept = (E0 - E)/(E0 - E_full); goal: >= 10x smaller file, >= 90% "
            f"gain kept, accuracy >= full - {100 * args.accuracy_slack:g} pts"
        )
        print_table([zero_row, *rows], zero, full, args.accuracy_slack)
        built = "loaded from the cache; when they were built" if models.get("cached") else "built in this run"
        print(f"models {built}, seconds per stage: " + json.dumps({k: round(v) for k, v in models["timings"].items()}))
        print(f"wall time: {time.perf_counter() - start:.0f} s")
        if args.plot:
            title = (f"τ_S compressed, applied at λ2 = {chosen:g} to {config.targets[0]} (test, {len(test)} images)"
                     + (" — toy sizes" if args.tiny else ""))  # fmt: skip
            plot(rows, zero_row, full, Path(args.plot), title)
            print(f"plot: {args.plot}")
        if args.json:
            Path(args.json).write_text(json.dumps({"chosen_lam": chosen, "sweep": sweep, "zero": zero_row,
                                                   "rows": rows}, indent=1, default=str))  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
