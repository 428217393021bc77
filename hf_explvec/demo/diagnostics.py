"""Does a cheap measurement predict whether the vector transfers? The demo's diagnostic, formatted for its reports.

Two predictors are recorded for every target before (or without) the λ2 sweep:

- **cos(τ_S,pred, τ_T)**: the cosine between the source's prediction-only task vector and the target's;
- **the probe** ([`~hf_explvec.evaluation.probe_transfer`]): the relative change of E-RMSE (L2) at one λ2
  (`probe_lam`) against λ2 = 0, on a handful of validation images with a small Kernel SHAP budget.

Each is set against the realised gain: the test E-RMSE (L2) change at the λ2 chosen on validation (0 when the rule
keeps λ2 = 0). Their agreement is a Pearson and Spearman correlation with bootstrap intervals
([`~hf_explvec.evaluation.correlation_with_uncertainty`]) over every (target, seed) point.
"""

from __future__ import annotations

import math

from ..evaluation.diagnostic import correlation_with_uncertainty

__all__ = ["PREDICTORS", "diagnostic_points", "diagnostic_section", "diagnostic_correlations"]

#: The predictors: name → (column title, how to read it from one entry of `results["targets"]`).
PREDICTORS = {
    "probe": "probe ΔE-RMSE (L2)",
    "cosine": "cos(τ_S,pred, τ_T)",
}


def _probe_change(target: dict) -> float | None:
    probe = target.get("probe")
    return None if probe is None else probe.get("relative_change_e_rmse_l2")


def diagnostic_points(targets: list[dict], seed: int | None = None) -> list[dict]:
    r"""
    One point per target: its role, the two predictors and the realised test E-RMSE (L2) change at the chosen λ2.

    Args:
        targets (`list[dict]`): `results["targets"]` of one run (each with its `summary`).
        seed (`int`, *optional*): the run's seed, recorded with each point.

    Returns:
        `list[dict]`: `domain`, `role`, `seed`, `probe`, `cosine`, `realised` (fractions; `None` where not measured),
        `lam` and `works`.
    """
    points = []
    for target in targets:
        summary = target["summary"]
        realised = summary.get("relative_e_rmse_l2") if summary["lam"] != 0.0 else 0.0
        points.append({"domain": target["domain"], "role": target["role"], "seed": seed,
                       "probe": _probe_change(target), "cosine": target["cosine_tau_source_prediction_vs_tau_target"],
                       "realised": realised, "lam": summary["lam"], "works": bool(summary["works"])})  # fmt: skip
    return points


def diagnostic_correlations(points: list[dict], *, seed: int = 0) -> dict:
    r"""
    The correlation of each predictor with the realised gain over `points`, with 90% bootstrap intervals; a
    predictor with fewer than three complete points, or a constant side, gets the reason instead.

    Args:
        points (`list[dict]`): from [`diagnostic_points`] (one or several runs).
        seed (`int`, *optional*, defaults to 0): the bootstrap seed.

    Returns:
        `dict`: per predictor, the result of [`correlation_with_uncertainty`] or `{"n": ..., "reason": ...}`.
    """
    out = {}
    for name in PREDICTORS:
        pairs = [(p[name], p["realised"]) for p in points if p[name] is not None and p["realised"] is not None]
        pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        if len(pairs) < 3:
            out[name] = {"n": len(pairs), "reason": "fewer than 3 targets"}
        elif len(set(xs)) < 2 or len(set(ys)) < 2:
            out[name] = {"n": len(pairs), "reason": "one side is constant"}
        else:
            out[name] = correlation_with_uncertainty(xs, ys, seed=seed)
    return out


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:+.1f}%"


def _correlation_text(name: str, result: dict) -> str:
    if "reason" in result:
        return f"{PREDICTORS[name]}: not computed ({result['reason']}, n = {result['n']})"
    pearson, spearman = result["pearson"], result["spearman"]
    return (f"{PREDICTORS[name]}: Pearson r = {pearson['estimate']:+.2f} (90% bootstrap interval "
            f"{pearson['low']:+.2f} to {pearson['high']:+.2f}), Spearman ρ = {spearman['estimate']:+.2f} "
            f"({spearman['low']:+.2f} to {spearman['high']:+.2f}), n = {result['n']}")  # fmt: skip


def diagnostic_section(points: list[dict], correlations: dict, probe_settings: dict) -> list[str]:
    r"""
    The report's diagnostic section: a table of the points and a line per predictor.

    Args:
        points (`list[dict]`): [`diagnostic_points`].
        correlations (`dict`): [`diagnostic_correlations`] of those points.
        probe_settings (`dict`): the run's `probe_lam`, `probe_num_images` and `probe_num_samples`.

    Returns:
        `list[str]`: markdown lines.
    """
    from .report import markdown_table

    rows = [[p["domain"], p["role"], "–" if p["seed"] is None else str(p["seed"]), _pct(p["probe"]),
             "–" if p["cosine"] is None else f"{p['cosine']:+.3f}", f"{p['lam']:g}", _pct(p["realised"]),
             "yes" if p["works"] else "no"] for p in points]  # fmt: skip
    header = ["Target", "Role", "Seed", PREDICTORS["probe"], PREDICTORS["cosine"], "Chosen λ2",
              "Realised test ΔE-RMSE (L2)", "Transfer works?"]  # fmt: skip
    return [
        "## Diagnostic: does a cheap measurement predict the transfer?",
        "",
        (
            f"The probe measures E-RMSE (L2) at λ2 = {probe_settings['probe_lam']:g} against λ2 = 0 on the first "
            f"{probe_settings['probe_num_images']} validation images with Kernel SHAP N = "
            f"{probe_settings['probe_num_samples']}, before the sweep; the realised gain is the test E-RMSE (L2) "
            "change at the λ2 chosen on validation (0 when λ2 = 0 is kept). A useful predictor correlates positively "
            "with it (both are changes, negative is better)."
        ),
        "",
        markdown_table(header, rows),
        "",
        *[f"- {_correlation_text(name, result)}." for name, result in correlations.items()],
        "",
    ]
