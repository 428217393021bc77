"""The demo over several seeds (`hf-explvec demo --seeds N`): the whole pipeline once per seed, then the mean and
spread of every headline figure, the validation–test gap of the λ rule, and the diagnostic over every (target, seed).

Each seed is a complete run of [`~hf_explvec.demo.run`] (its own base stage, data composition, training order and
Kernel SHAP draws; seed `config.seed + k`) with its own report folder `seed-<seed>/`; the folder given holds
`results.json` (every run's results and the aggregate) and `report.md`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from .config import DemoConfig
from .diagnostics import diagnostic_correlations, diagnostic_points, diagnostic_section, per_target_means
from .report import _jsonable, lambda_rule_text, machine_description, markdown_table, report_settings

__all__ = ["SEED_FIGURES", "aggregate_runs", "build_seeds_report", "run_seeds"]

#: The figures aggregated over seeds: key of the target's `summary` → (column title, scale, unit). Relative changes
#: and shares are shown in %, accuracy changes in points.
SEED_FIGURES = {
    "relative_e_rmse": ("test ΔE-RMSE", 100, "%"),
    "relative_e_rmse_l2": ("test ΔE-RMSE (L2)", 100, "%"),
    "accuracy_change": ("test ΔAcc", 100, " pts"),
    "gap_closed": ("share of the E-RMSE gap closed", 100, "%"),
    "gap_closed_l2": ("share of the E-RMSE (L2) gap closed", 100, "%"),
    "validation_relative_e_rmse_l2": ("validation ΔE-RMSE (L2)", 100, "%"),
    "validation_accuracy_change": ("validation ΔAcc", 100, " pts"),
    "optimism_relative_e_rmse_l2": ("optimism, ΔE-RMSE (L2): test − validation (λ2 > 0 seeds)", 100, " pts"),
    "optimism_accuracy_change": ("optimism, ΔAcc: validation − test (λ2 > 0 seeds)", 100, " pts"),
    "tve_relative_e_rmse_l2": ("TVE test ΔE-RMSE (L2)", 100, "%"),
}


def run_seeds(config: DemoConfig, num_seeds: int, *, clip=None, tokenizer=None, data=None) -> dict:
    r"""
    Run the demo once per seed (`config.seed`, `config.seed + 1`, ...) and write the aggregate report.

    Args:
        config ([`DemoConfig`]): the settings of every run; `output_dir` holds one `seed-<seed>` folder per run.
        num_seeds (`int`): how many seeds (at least 1).
        clip, tokenizer, data: as in [`~hf_explvec.demo.run`] (a given CLIP is copied for each run, so that the base
            stage of one seed does not start from another's).

    Returns:
        `dict`: what `results.json` holds: `config`, `num_seeds`, `runs` (each run's results), `aggregate`
        ([`aggregate_runs`]), `date`, `machine`, `report`.

    Raises:
        `TypeError` / `ValueError`: `config` is not a `DemoConfig`, or `num_seeds` is not an int ≥ 1.
    """
    import copy
    import datetime

    from .pipeline import run

    if not isinstance(config, DemoConfig):
        raise TypeError(f"config must be a DemoConfig, got {type(config).__name__}.")
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be an int >= 1, got {num_seeds!r}.")
    output_dir = Path(config.output_dir)
    runs = []
    for k in range(num_seeds):
        seed = config.seed + k
        run_config = dataclasses.replace(config, seed=seed, output_dir=str(output_dir / f"seed-{seed}"))
        runs.append(run(run_config, clip=copy.deepcopy(clip), tokenizer=tokenizer, data=data))
    results = {
        "config": config.to_dict(),
        "num_seeds": num_seeds,
        "runs": runs,
        "aggregate": aggregate_runs(runs),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(config.num_threads),
        "wall_seconds": sum(r["timings_seconds"]["total"] for r in runs),
        "report": str(output_dir / "report.md"),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False) + "\n")
    (output_dir / "report.md").write_text(build_seeds_report(results))
    return results


def _figures(summary: dict) -> dict:
    out = {key: summary.get(key) for key in SEED_FIGURES}
    # The λ rule's optimism on the seeds where it applied a vector: how much better the chosen λ2 looked on
    # validation than it is on test (positive = optimistic; lower E-RMSE and higher accuracy are better).
    applied = summary["lam"] != 0.0
    test, validation = summary.get("relative_e_rmse_l2"), summary.get("validation_relative_e_rmse_l2")
    out["optimism_relative_e_rmse_l2"] = test - validation if applied and None not in (test, validation) else None
    test, validation = summary.get("accuracy_change"), summary.get("validation_accuracy_change")
    out["optimism_accuracy_change"] = validation - test if applied and None not in (test, validation) else None
    tve = summary.get("tve") or {}
    out["tve_relative_e_rmse_l2"] = tve.get("relative_e_rmse_l2")
    return out


def _spread(values: list) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def aggregate_runs(runs: list[dict]) -> dict:
    r"""
    Mean, sample standard deviation, minimum and maximum over runs of each target's headline figures
    ([`SEED_FIGURES`], from each run's `summary` at the λ2 chosen on validation), how many runs chose each λ2, how
    many met the paper's goal, the gap aim and the transfer rule, and the diagnostic over every (target, seed).

    Args:
        runs (`list[dict]`): results of [`~hf_explvec.demo.run`] with the same targets.

    Returns:
        `dict`: `targets` (per domain: `role`, `lams`, `works`, `meets_goal`, `meets_gap_aim`, `num_runs` and one
        spread dict per figure) and `diagnostic` (`points`, `correlations`).

    Raises:
        `ValueError`: no runs, or runs whose targets differ.
    """
    if not runs:
        raise ValueError("aggregate_runs needs at least one run.")
    names = [t["domain"] for t in runs[0]["targets"]]
    for run in runs[1:]:
        if [t["domain"] for t in run["targets"]] != names:
            raise ValueError(f"runs have different targets: {names} vs {[t['domain'] for t in run['targets']]}.")
    targets, points = {}, []
    for index, name in enumerate(names):
        entries = [run["targets"][index] for run in runs]
        summaries = [entry["summary"] for entry in entries]
        settings = [report_settings(run["config"]) for run in runs]
        figures = [_figures(summary) for summary in summaries]
        targets[name] = {
            "role": entries[0]["role"],
            "num_runs": len(runs),
            "lams": [summary["lam"] for summary in summaries],
            "works": sum(bool(summary["works"]) for summary in summaries),
            "meets_goal": sum(bool(summary["meets_related_goal"] and summary["works"]) for summary in summaries),
            "meets_gap_aim": sum(
                summary["lam"] != 0.0
                and summary.get("gap_closed") is not None
                and summary["gap_closed"] >= setting["goal_gap_closed"] - 1e-9
                for summary, setting in zip(summaries, settings, strict=True)
            ),
            **{key: _spread([f[key] for f in figures]) for key in SEED_FIGURES},
        }
    for run in runs:
        points += diagnostic_points(run["targets"], run["config"]["seed"])
    means = per_target_means(points)
    diagnostic = {"points": points, "correlations": diagnostic_correlations(points),
                  "per_target_means": means, "correlations_per_target": diagnostic_correlations(means)}  # fmt: skip
    return {"targets": targets, "diagnostic": diagnostic}


def _cell(spread: dict, scale: float, unit: str, num_runs: int) -> str:
    if not spread["n"]:
        return "–"
    mean, std = scale * spread["mean"], scale * spread["std"]
    count = f", n = {spread['n']}" if spread["n"] < num_runs else ""
    return f"{mean:+.1f} ± {std:.1f}{unit} ({scale * spread['min']:+.1f} to {scale * spread['max']:+.1f}{count})"


def build_seeds_report(results: dict) -> str:
    r"""
    The text of the multi-seed `report.md`: per target the mean ± standard deviation (min to max) of each figure over
    the seeds, the λ2 chosen by each seed, how many seeds met the goal, and the diagnostic.

    Args:
        results (`dict`): what [`run_seeds`] returns.

    Returns:
        `str`: markdown.
    """
    config, aggregate = results["config"], results["aggregate"]
    settings = report_settings(config)
    seeds = [run["config"]["seed"] for run in results["runs"]]
    header = ["Target", "Role", "λ2 chosen per seed", "Transfer works", "Meets the paper's goal and works",
              f"Closes ≥ {100 * settings['goal_gap_closed']:g}% of the E-RMSE gap"]  # fmt: skip
    rows, figure_rows = [], []
    for name, entry in aggregate["targets"].items():
        n = entry["num_runs"]
        goal = f"{entry['meets_goal']}/{n}" if entry["role"] in ("related", "near") else "– (not a related target)"
        rows.append([name, entry["role"], ", ".join(f"{lam:g}" for lam in entry["lams"]), f"{entry['works']}/{n}",
                     goal, f"{entry['meets_gap_aim']}/{n}"])  # fmt: skip
        cells = [_cell(entry[key], scale, unit, n) for key, (_, scale, unit) in SEED_FIGURES.items()]
        figure_rows.append([name, *cells])
    lines = [
        f"# hf-explvec demo over {results['num_seeds']} seeds",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {results['machine']}",
        f"- Command: `{config.get('command') or 'hf_explvec.demo.run_seeds(...)'}`",
        f"- Seeds: {', '.join(str(seed) for seed in seeds)} (one complete run each, reports in `seed-<seed>/`)",
        f"- Wall time: {results['wall_seconds']:.1f} s in all",
        f"- λ rule (validation only): {lambda_rule_text(config)}.",
        (
            "- The paper's related-domain goal (counted only where the transfer also works): test E-RMSE ≥ "
            f"{100 * settings['goal_e_rmse_gain']:g}% lower than θ_T "
            f"with accuracy within {100 * settings['goal_accuracy_drop']:g} points; the aim beyond it: the vector "
            f"closes ≥ {100 * settings['goal_gap_closed']:g}% of the E-RMSE gap to the self-explaining model "
            'trained on the target. "Transfer works": E-RMSE falls and pointing, deletion and insertion AUC are not '
            "worse than at λ2 = 0 (counted only where a λ2 > 0 was chosen)."
        ),
        "",
        "## Verdicts per target (counts over seeds)",
        "",
        markdown_table(header, rows),
        "",
        "## Figures at the chosen λ2 (mean ± standard deviation over seeds, min to max)",
        "",
        (
            "Changes are against the prediction-only target θ_T (λ2 = 0) on the same split; a seed that keeps λ2 = 0 "
            "counts as no change. The optimism rows are the validation–test gap of the λ rule, over the seeds that "
            "applied a vector (n shown when fewer than all): how much better the chosen λ2 looked on validation than "
            "it is on test (positive = optimistic; for ΔE-RMSE (L2) in points of the relative change)."
        ),
        "",
        markdown_table(["Target", *[title for title, _, _ in SEED_FIGURES.values()]], figure_rows),
        "",
        *diagnostic_section(
            aggregate["diagnostic"]["points"],
            aggregate["diagnostic"]["correlations"],
            config,
            aggregate["diagnostic"].get("correlations_per_target"),
        ),
    ]
    return "\n".join(lines) + "\n"
