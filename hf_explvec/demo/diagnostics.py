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

__all__ = ["EXPECTED_SIGN", "PREDICTORS", "diagnostic_correlations", "diagnostic_points", "diagnostic_section",
           "per_target_means"]  # fmt: skip

#: The predictors: name → column title.
PREDICTORS = {
    "probe": "probe ΔE-RMSE (L2)",
    "cosine": "cos(τ_S,pred, τ_T)",
}
#: The sign a useful predictor's correlation with the realised change should have: the probe is itself a predicted
#: change (same sign), a larger cosine should mean a larger gain, i.e. a more negative change.
EXPECTED_SIGN = {"probe": "positive", "cosine": "negative"}


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
        probe = target.get("probe") or {}
        points.append({"domain": target["domain"], "role": target["role"], "seed": seed,
                       "probe": _probe_change(target), "cosine": target["cosine_tau_source_prediction_vs_tau_target"],
                       "realised": realised, "lam": summary["lam"], "works": bool(summary["works"]),
                       "probe_num_images": probe.get("num_images"),
                       "probe_num_samples": probe.get("num_samples")})  # fmt: skip
    return points


def per_target_means(points: list[dict]) -> list[dict]:
    r"""
    One point per target: the mean of each predictor and of the realised change over its seeds. Points of the same
    target are not independent draws, so the correlation over these means is the honest one when there are seeds.

    Args:
        points (`list[dict]`): [`diagnostic_points`] of one or several runs.

    Returns:
        `list[dict]`: `domain`, `role`, `seed` (`None`), `probe`, `cosine`, `realised` (means; `None` when a value is
        missing), `lam` (the mean chosen λ2), `works` (whether it worked in most seeds), `num_seeds`.
    """
    by_domain: dict[str, list[dict]] = {}
    for point in points:
        by_domain.setdefault(point["domain"], []).append(point)

    def mean(values):
        return None if any(v is None for v in values) else sum(values) / len(values)

    return [{"domain": domain, "role": group[0]["role"], "seed": None,
             **{key: mean([p[key] for p in group]) for key in ("probe", "cosine", "realised", "lam")},
             "works": 2 * sum(p["works"] for p in group) > len(group), "num_seeds": len(group),
             "probe_num_images": group[0].get("probe_num_images"),
             "probe_num_samples": group[0].get("probe_num_samples")}
            for domain, group in by_domain.items()]  # fmt: skip


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


def diagnostic_section(points: list[dict], correlations: dict, probe_settings: dict,
                       by_target: dict | None = None) -> list[str]:  # fmt: skip
    r"""
    The report's diagnostic section: a table of the points and a line per predictor.

    Args:
        points (`list[dict]`): [`diagnostic_points`].
        correlations (`dict`): [`diagnostic_correlations`] of those points.
        probe_settings (`dict`): the run's config (`probe_lam`; the images and budget are read from the points).
        by_target (`dict`, *optional*): the correlations over [`per_target_means`], shown too (several seeds).

    Returns:
        `list[str]`: markdown lines.
    """
    from .report import markdown_table

    rows = [[p["domain"], p["role"], "–" if p["seed"] is None else str(p["seed"]), _pct(p["probe"]),
             "–" if p["cosine"] is None else f"{p['cosine']:+.3f}", f"{p['lam']:g}", _pct(p["realised"]),
             "yes" if p["works"] else "no"] for p in points]  # fmt: skip
    header = ["Target", "Role", "Seed", PREDICTORS["probe"], PREDICTORS["cosine"], "Chosen λ2",
              "Realised test ΔE-RMSE (L2)", "Transfer works?"]  # fmt: skip
    images = sorted({p["probe_num_images"] for p in points if p.get("probe_num_images") is not None})
    budgets = sorted({p["probe_num_samples"] for p in points if p.get("probe_num_samples") is not None})
    lines = [
        "## Diagnostic: does a cheap measurement predict the transfer?",
        "",
        (
            f"The probe measures E-RMSE (L2) at λ2 = {probe_settings['probe_lam']:g} against λ2 = 0 on the first "
            f"{'/'.join(map(str, images)) or '?'} validation images with Kernel SHAP N = "
            f"{'/'.join(map(str, budgets)) or '?'}, before the sweep; the realised gain is the test E-RMSE (L2) "
            "change at the λ2 chosen on validation (0 when λ2 = 0 is kept; that choice reads the whole validation "
            "split, the probe's images included). A useful probe correlates positively with it (both are changes, "
            "negative is better); a useful cosine negatively (a larger cosine, a larger gain)."
        ),
        "",
        markdown_table(header, rows),
        "",
        *[f"- {_correlation_text(name, result)}." for name, result in correlations.items()],
    ]
    if by_target is not None:
        lines += [f"- Over the per-target means (one point per target; the seeds of a target are not independent): "
                  f"{_correlation_text(name, result)}." for name, result in by_target.items()]  # fmt: skip
    return [*lines, ""]
