"""The demo's report: the tables, the summary and verdicts, `report.md` and `results.json` ([`write_report`]).

Everything here formats the results dict that [`hf_explvec.demo.run`] builds, and shows only what the run measured:
every figure comes from that dict, and every setting the text states (the λ rule's tolerance, the paper's goal) is
read from `results["config"]`. The figures are drawn by [`~hf_explvec.demo.plots`].
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import platform
from pathlib import Path

import numpy as np

from .config import DemoConfig, safe_file_name
from .diagnostics import diagnostic_correlations, diagnostic_points, diagnostic_section
from .plots import plot_heatmaps, plot_lambda_sweep

logger = logging.getLogger(__name__)

#: Defaults of the settings the report reads from `results["config"]`: those of [`~hf_explvec.demo.DemoConfig`]
#: (for results written before a setting was recorded). The paper's related-domain result: E-RMSE at least 9% below
#: the prediction-only target, with accuracy within 4 points; the λ rule's tolerance.
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(DemoConfig)}
GOAL_E_RMSE_GAIN: float = _DEFAULTS["goal_e_rmse_gain"]
GOAL_ACCURACY_DROP: float = _DEFAULTS["goal_accuracy_drop"]
MAX_ACCURACY_DROP: float = _DEFAULTS["max_accuracy_drop"]

DEFINITIONS = """\
- **Explained class**: the true label of each image (the class the self-explaining models are trained to explain).
- **E-RMSE** (lower is better): for each test image, `sqrt(mean over the M patches of (a_m - s_m)^2)`, then the mean
  over images, where `a` are the model's own patch attributions for the explained class (one forward pass) and `s`
  the Kernel SHAP values of **that same model** ({value} of the explained class, {eval_n} coalitions, embedding-level
  masking, absent patches = the all-zero image after CLIP normalisation, i.e. the mean pixel). Every row is compared
  with the Kernel SHAP values of its own model, never of another one. ΔE-RMSE is relative to the prediction-only
  target (λ2 = 0); ΔAcc is in accuracy points.
- **E-RMSE (L2)** — the **primary metric**: the same after dividing each image's two vectors by their L2 norms, the
  shape of the explanation only. Why primary: raw E-RMSE also falls when a model's own Kernel SHAP values shrink,
  e.g. when it grows less confident (the **SHAP RMS** column shows that scale), so a vector can win it by costing
  confidence rather than by explaining better. E-RMSE (L2) is unchanged when either vector is multiplied by any
  positive factor, so a smaller scale of the model's scores cannot lower it by itself; a lower E-RMSE (L2) means the
  attributions rank and weigh the patches more like Kernel SHAP does. Its blind spot is the scale (an explanation
  right in shape but off by a factor scores 0), which raw E-RMSE keeps: both are shown, and ΔE-RMSE (L2) is relative
  to λ2 = 0 like ΔE-RMSE.
- **Transfer works?** (rows with λ2 > 0): **yes** only when E-RMSE is lower than at λ2 = 0 **and** pointing,
  deletion AUC and insertion AUC are each not worse than at λ2 = 0 by more than {tolerance:g} (the report's
  precision). These three read the model's probabilities and the evidence masks, not Kernel SHAP, so they cannot be
  won by shrinking the Kernel SHAP scale. Otherwise **no**, naming what failed. A measure the split lacks (no
  evidence masks: no pointing) is not checked, and the cell says so.
- **IoU@{k}**: intersection over union of the top-{k} patches of the attributions and of the Kernel SHAP values.
  **Spearman**: rank correlation over the patches. **Pointing**: share of images whose most attributed patch lies
  on the class object (the domain's evidence mask).
- **Deletion / insertion AUC**: probability of the explained class as patches are removed from the image (or
  restored onto the baseline) in decreasing attribution order, area over the fraction of patches (deletion lower is
  better, insertion higher).
- **s/image**: wall time per image to get the explanation: one batched forward pass for the self-explaining models
  (logits included), Kernel SHAP for the Kernel SHAP rows ({threads} torch thread(s)).
- **cos(τ_S,pred, τ_T)**: cosine between the source's prediction-only task vector θ_S − θ_base and the target's
  θ_T − θ_base (vision tower and projection): how related the two fine-tunings are.
- Kernel SHAP rows explain the prediction-only target θ_T with another seed than the reference values: their E-RMSE
  is the sampling error of Kernel SHAP at that budget (the N = {eval_n} row is the noise floor of the reference).
- **TVE baseline** (a transferable explainer, in the spirit of TVE): the self-explaining head with its projection
  re-fitted, on the **frozen** base backbone θ_base, to the source's Kernel SHAP labels (closed-form ridge regression
  toward the base's own projection, `hf_explvec.evaluation.tve`); it is applied to each target's images with the
  target's class prompts and no target training, and is compared with Kernel SHAP of θ_T (its predictions are θ_T's,
  so its accuracy is θ_T's). Its "Transfer works?" cell applies the same rule against θ_T's own explanations.
- **Equivalent Kernel SHAP budget** (as FastSHAP reports): Kernel SHAP of the same model is run at a ladder of
  budgets (another seed than the reference) on the first test images, and the budget N whose E-RMSE against that
  model's reference equals the one-pass explanation's E-RMSE (on the same images) is read off by linear interpolation
  in log N between the first rung at or below that error and the rung before it. When even the smallest rung (2 M is
  the smallest budget Kernel SHAP accepts) is closer to the reference, only "< smallest" is reported, and "> largest"
  when no rung reaches it; the same for E-RMSE (L2). The paper reports its explanations as comparable to N = 150."""


# ----------------------------------------------------------------------------------------------------------- tables
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    r"""
    A GitHub markdown table; the first column is left-aligned, the others right-aligned.

    Args:
        header (`list[str]`): column titles.
        rows (`list[list[str]]`): cells, each row as long as `header`.

    Returns:
        `str`: the table, one line per row, no trailing newline.

    Raises:
        `ValueError`: a row whose length is not the header's.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"every row needs {len(header)} cells like the header, got {len(row)}: {row}.")

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"
    lines = [line(header), rule] + [line(row) for row in rows]
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _seconds(value) -> str:
    if value is None:
        return "–"
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _relative(value, reference) -> str:
    if value is None or reference in (None, 0):
        return "–"
    return f"{100 * (value - reference) / reference:+.1f}%"


def _points(value, reference) -> str:
    return "–" if value is None or reference is None else f"{100 * (value - reference):+.1f}"


TABLE_HEADER = ["Model", "λ2", "Accuracy", "ΔAcc (pts)", "E-RMSE", "ΔE-RMSE", "E-RMSE (L2)", "ΔE-RMSE (L2)", "IoU@K",
                "Spearman", "Pointing", "Deletion AUC ↓", "Insertion AUC ↑", "SHAP RMS", "s/image",
                "cos(τ_S,pred, τ_T)", "Transfer works?"]  # fmt: skip

TVE_ROW = "TVE baseline on θ_T (head on frozen θ_base, source labels, no target training)"

#: The faithfulness measures the verdict checks, and the direction in which each gets better (+1 higher, -1 lower).
FAITHFULNESS_MEASURES = {"pointing": 1, "deletion_auc": -1, "insertion_auc": 1}
_SHORT_NAMES = {"e_rmse": "E-RMSE", "pointing": "pointing", "deletion_auc": "deletion", "insertion_auc": "insertion"}


#: How much worse than at λ2 = 0 a faithfulness measure may be and still count as "not worse": the report's precision
#: (three decimals), so that float noise in an unchanged measure is not read as a loss.
FAITHFULNESS_TOLERANCE: float = 1e-3


def transfer_verdict(entry: dict, baseline: dict, tolerance: float = FAITHFULNESS_TOLERANCE) -> dict:
    r"""
    Whether a transfer works at one λ2: E-RMSE lower than at λ2 = 0 **and** pointing, deletion AUC and insertion AUC
    each not worse than at λ2 = 0 (deletion lower is better, the other two higher). A raw E-RMSE gain alone can be won
    by losing confidence (the model's own Kernel SHAP values shrink); the three faithfulness measures read the
    model's probabilities and the evidence, not Kernel SHAP's scale.

    Args:
        entry (`dict`): the figures at λ2 (`e_rmse`, and whichever of `pointing`, `deletion_auc`, `insertion_auc`
            were measured).
        baseline (`dict`): the same figures at λ2 = 0 on the same split.
        tolerance (`float`, *optional*, defaults to 1e-3): a measure counts as worse only when it is worse by more
            than this (absolute; the report shows three decimals).

    Returns:
        `dict`: `works` (`bool`), `e_rmse_falls` (`bool`), `worse` (the faithfulness measures that got worse),
        `unchecked` (those missing from either entry, e.g. `pointing` without evidence masks).
    """
    worse, unchecked = [], []
    for name, direction in FAITHFULNESS_MEASURES.items():
        value, reference = entry.get(name), baseline.get(name)
        if value is None or reference is None or math.isnan(value) or math.isnan(reference):
            unchecked.append(name)
        elif direction * (value - reference) < -tolerance:
            worse.append(name)
    falls = bool(entry["e_rmse"] < baseline["e_rmse"])
    return {"works": falls and not worse, "e_rmse_falls": falls, "worse": worse, "unchecked": unchecked}


def _verdict_cell(verdict: dict) -> str:
    failed = ([] if verdict["e_rmse_falls"] else ["E-RMSE not lower"]) + [
        f"{_SHORT_NAMES[name]} worse" for name in verdict["worse"]
    ]
    cell = "yes" if verdict["works"] else "no: " + ", ".join(failed)
    if verdict["unchecked"]:
        cell += " (" + ", ".join(_SHORT_NAMES[name] for name in verdict["unchecked"]) + " not measured)"
    return cell


def _row(name: str, lam: str, metrics: dict, baseline: dict, cosine: str, verdict: str = "–") -> list[str]:
    return [name, lam, f"{100 * metrics['accuracy']:.1f}%", _points(metrics["accuracy"], baseline["accuracy"]),
            _fmt(metrics["e_rmse"]), _relative(metrics["e_rmse"], baseline["e_rmse"]), _fmt(metrics["e_rmse_l2"]),
            _relative(metrics["e_rmse_l2"], baseline["e_rmse_l2"]), _fmt(metrics["iou_at_k"]),
            _fmt(metrics["spearman"]), _fmt(metrics.get("pointing")), _fmt(metrics.get("deletion_auc")),
            _fmt(metrics.get("insertion_auc")), _fmt(metrics.get("shap_rms")),
            _seconds(metrics.get("explain_seconds_per_image")), cosine, verdict]  # fmt: skip


def _kept_mark(target: dict) -> str:
    """The chosen mark on the λ2 = 0 row, when the rule kept λ2 = 0."""
    return " ✓ chosen on validation" if target["chosen_lam"] == 0.0 else ""


def target_table(target: dict, split: str = "test") -> str:
    r"""
    The table of one target domain on `split`: the prediction-only target (λ2 = 0), the target with the vector per
    λ2 (the λ2 chosen on validation marked ✓), the self-explaining model trained on the target, and Kernel SHAP at
    each budget (on the test split only).

    Args:
        target (`dict`): one entry of `results["targets"]` (keys `sweep`, `chosen_lam`, `direct`, `kernel_shap`,
            `cosine_tau_source_prediction_vs_tau_target`).
        split (`str`, defaults to `"test"`): `"test"` or `"validation"`.

    Returns:
        `str`: a markdown table with the columns of `TABLE_HEADER`.
    """
    sweep = target["sweep"][split]
    baseline = next(entry for entry in sweep if entry["lam"] == 0.0)
    cosine = _fmt(target["cosine_tau_source_prediction_vs_tau_target"])
    rows = [_row(f"prediction-only θ_T (no vector){_kept_mark(target)}", "0", baseline, baseline, cosine)]
    for entry in sweep:
        if entry["lam"] == 0.0:
            continue
        mark = " ✓ chosen on validation" if entry["lam"] == target["chosen_lam"] else ""
        verdict = _verdict_cell(transfer_verdict(entry, baseline))
        rows.append(_row(f"θ_T + λ2·τ_S{mark}", f"{entry['lam']:g}", entry, baseline, cosine, verdict))
    direct = target["direct"][split]
    rows.append(_row("self-explaining θ*_T trained on target (lower bound)", "–", direct, baseline, "–"))
    tve = target.get("tve", {}).get(split)
    if tve is not None:
        verdict = _verdict_cell(transfer_verdict(tve, baseline))
        rows.append(_row(TVE_ROW, "–", tve, baseline, "–", verdict))
    if split == "test":
        for entry in target["kernel_shap"]:
            rows.append(_row(f"Kernel SHAP N={entry['num_samples']} on θ_T", "–", entry, baseline, "–"))
    return markdown_table(TABLE_HEADER, rows)


LINEAR_PROBE_ROW = "linear probe only (tower frozen: θ_base of the transfer)"


def linear_head_table(entry: dict, split: str = "test") -> str:
    r"""
    The table of the linear-head target on `split`: the linear probe (θ_base of the transfer), the fine-tuned
    `CLIPForImageClassification` θ_T (λ2 = 0), and θ_T + λ2·τ_S per λ2 (the λ2 chosen on validation marked ✓, each
    with the [`transfer_verdict`]). Every row is compared with Kernel SHAP of its own model (pixel masking).

    Args:
        entry (`dict`): `results["linear_head"]` (keys `sweep`, `chosen_lam`, `probe`).
        split (`str`, defaults to `"test"`): `"test"` or `"validation"`.

    Returns:
        `str`: a markdown table with the columns of `TABLE_HEADER`.
    """
    sweep = entry["sweep"][split]
    baseline = next(row for row in sweep if row["lam"] == 0.0)
    rows = [_row(LINEAR_PROBE_ROW, "–", entry["probe"][split], baseline, "–"),
            _row(f"fine-tuned CLIPForImageClassification θ_T (no vector){_kept_mark(entry)}", "0", baseline,
                 baseline, "–")]  # fmt: skip
    for row in sweep:
        if row["lam"] == 0.0:
            continue
        mark = " ✓ chosen on validation" if row["lam"] == entry["chosen_lam"] else ""
        verdict = _verdict_cell(transfer_verdict(row, baseline))
        rows.append(_row(f"θ_T + λ2·τ_S{mark}", f"{row['lam']:g}", row, baseline, "–", verdict))
    return markdown_table(TABLE_HEADER, rows)


def linear_head_reading(results: dict) -> str:
    r"""
    One sentence read from the figures: whether τ_S transfers to the linear head by the rule at the λ2 chosen on
    validation, its test E-RMSE (L2) and E-RMSE changes against the fine-tuned classifier, and the same for the
    text-head target of the same domain (when the run has it), saying on which of the two heads the vector helped
    more.

    Args:
        results (`dict`): the demo's results with `linear_head` (its `summary`, or computed here).

    Returns:
        `str`
    """
    entry = results["linear_head"]
    settings = report_settings(results.get("config", {}))
    linear = entry.get("summary") or transfer_summary(entry, settings["goal_e_rmse_gain"],
                                                      settings["goal_accuracy_drop"])  # fmt: skip
    text_head = next((t for t in results.get("targets", []) if t["domain"] == entry["domain"]), None)

    def figures(summary: dict) -> str:
        l2 = summary["relative_e_rmse_l2"]
        l2 = "" if l2 is None else f"E-RMSE (L2) {100 * l2:+.1f}%, "
        return (f"λ2 = {summary['lam']:g}: {l2}E-RMSE {100 * summary['relative_e_rmse']:+.1f}%, accuracy "
                f"{100 * summary['accuracy_change']:+.1f} pts")  # fmt: skip

    if linear["lam"] == 0.0:
        head = ("The validation rule applied no vector to the linear head (no λ2 > 0 lowered validation E-RMSE within "
                "the accuracy tolerance), so on this run the text-head vector does not transfer to it")  # fmt: skip
    else:
        works = "transfers" if linear["works"] else "does not transfer"
        head = f"By the rule, the text-head vector {works} to the linear head on test ({figures(linear)})"
    if text_head is None:
        return head + "."
    other = text_head.get("summary") or transfer_summary(text_head, settings["goal_e_rmse_gain"],
                                                         settings["goal_accuracy_drop"])  # fmt: skip
    if other["lam"] == 0.0:
        compare = "the text-head θ_T of the same domain kept λ2 = 0"
    else:
        compare = (f"on the text-head θ_T of the same domain it {'works' if other['works'] else 'does not work'} "
                   f"({figures(other)})")  # fmt: skip
    changes = [(s["relative_e_rmse_l2"] or 0.0) if s["lam"] != 0.0 else 0.0 for s in (linear, other)]
    figures_l2 = f"{100 * changes[0]:+.1f}% against {100 * changes[1]:+.1f}%"
    if round(100 * changes[0], 1) == round(100 * changes[1], 1):
        more = f"at the chosen λ2 the primary metric, E-RMSE (L2), changed alike on both heads ({figures_l2})"
    else:
        better = "more" if changes[0] < changes[1] else "less"
        more = (f"at the chosen λ2 the vector helps the primary metric, E-RMSE (L2), {better} on the linear head than "
                f"on the text head it was trained with ({figures_l2})")  # fmt: skip
    return f"{head}; {compare}; {more}."


def _linear_head_section(results: dict) -> list[str]:
    entry = results.get("linear_head")
    if entry is None:
        return []
    settings = report_settings(results["config"])
    sizes = results["domains"].get(entry["domain"], {}).get("sizes", {})
    check = entry["masking_check"]
    summary = entry.get("summary") or transfer_summary(entry, settings["goal_e_rmse_gain"],
                                                       settings["goal_accuracy_drop"])  # fmt: skip
    return [
        f"## Linear-head target `{entry['domain']}` ({entry['model_class']})",
        "",
        (
            f"The same target as a transformers `{entry['model_class']}` on the base's vision tower (a linear head on "
            f"the mean patch token): a linear probe (tower frozen, learning rate {entry['probe_learning_rate']:g}), "
            "then fine-tuning of everything with the demo's settings, both with transformers' `Trainer`; explained by "
            "`ExplainingCLIPForImageClassification.from_classifier` (a_{c,i} = W_c·h_i / M; largest logit "
            f"difference from the classifier on test {entry['max_abs_logit_difference']:.1g}). θ̃ = probe + "
            "λ1·(θ_T − probe) + λ2·τ_S with the source vector τ_S trained with the text head (its visual projection "
            "has no counterpart here and is skipped); λ2 chosen on validation by the paper's rule (the lowest raw "
            "E-RMSE within the observed accuracy tolerance; this opt-in stage does not use the confidence bound), and "
            "every λ2 measured on test. Kernel SHAP masks "
            f"pixels (baseline 0): this model has no embedding-level path; on θ_base with the text head the two "
            f"maskings differ by at most {check['max_abs_difference']:.1g} on {check['num_images']} test images "
            f"(values' RMS {check['values_rms']:.3f})."
        ),
        "",
        f"- Verdict: {_verdict(entry, summary, settings)}",
        f"- Reading: {linear_head_reading(results)}",
        "",
        f"**Test** ({sizes.get('test', '?')} images):",
        "",
        linear_head_table(entry, "test"),
        "",
        f"**Validation** ({sizes.get('validation', '?')} images; λ2 is chosen here):",
        "",
        linear_head_table(entry, "validation"),
        "",
    ]


def report_settings(config: dict) -> dict:
    r"""
    The settings the report states, read from a run's config: `max_accuracy_drop` (the λ rule's tolerance),
    `goal_e_rmse_gain` and `goal_accuracy_drop` (the paper's related-domain result the verdict compares with),
    `goal_gap_closed`, and `config` itself (for the λ rule's wording).
    Results written before a setting was recorded get the [`~hf_explvec.demo.DemoConfig`] default.

    Args:
        config (`dict`): `results["config"]`.

    Returns:
        `dict[str, float]`
    """
    return {
        "max_accuracy_drop": float(config.get("max_accuracy_drop", MAX_ACCURACY_DROP)),
        "goal_e_rmse_gain": float(config.get("goal_e_rmse_gain", GOAL_E_RMSE_GAIN)),
        "goal_accuracy_drop": float(config.get("goal_accuracy_drop", GOAL_ACCURACY_DROP)),
        "goal_gap_closed": float(config.get("goal_gap_closed", _DEFAULTS["goal_gap_closed"])),
        "config": config,
    }


def transfer_summary(
    target: dict, goal_e_rmse_gain: float = GOAL_E_RMSE_GAIN, goal_accuracy_drop: float = GOAL_ACCURACY_DROP
) -> dict:
    r"""
    The chosen λ2's test figures against the prediction-only target, and whether they meet the paper's related-domain
    result (E-RMSE at least `goal_e_rmse_gain` lower, accuracy at most `goal_accuracy_drop` lower).

    Args:
        target (`dict`): one entry of `results["targets"]`.
        goal_e_rmse_gain (`float`, *optional*, defaults to 0.09): the relative E-RMSE gain of the goal (a fraction).
        goal_accuracy_drop (`float`, *optional*, defaults to 0.04): the accuracy drop the goal allows (a fraction).

    Returns:
        `dict`: `lam`, `relative_e_rmse` and `relative_e_rmse_l2` (fractions; E-RMSE (L2) is the primary metric),
        `accuracy_change` (fraction), `gap_closed` and `gap_closed_l2` (the share of the E-RMSE or E-RMSE (L2)
        gap between θ_T and the self-explaining model trained on the target that the vector closes; `None` when
        that model is not better), `meets_related_goal` (`bool`, the paper's criterion on E-RMSE and accuracy),
        `works`, `worse` and `unchecked` ([`transfer_verdict`] at the chosen λ2; `works` is `False` at λ2 = 0, where
        nothing is transferred), `faithfulness` (per measure, `[value at λ2 = 0, value at the chosen λ2]`), `tve`
        (when the target has TVE baseline figures: its `relative_e_rmse`, `relative_e_rmse_l2`, `works`, `worse`,
        `e_rmse_l2`, `vector_e_rmse_l2`, `vector_better_e_rmse_l2`, `vector_better_e_rmse`), and the same on
        validation with the prefix `validation_`.
    """
    out = {"lam": target["chosen_lam"]}
    for split, prefix in (("test", ""), ("validation", "validation_")):
        sweep = target["sweep"][split]
        base = next(e for e in sweep if e["lam"] == 0.0)
        chosen = next(e for e in sweep if e["lam"] == target["chosen_lam"])
        out[f"{prefix}relative_e_rmse"] = (chosen["e_rmse"] - base["e_rmse"]) / base["e_rmse"]
        l2 = base.get("e_rmse_l2")
        out[f"{prefix}relative_e_rmse_l2"] = (chosen["e_rmse_l2"] - l2) / l2 if l2 else None
        out[f"{prefix}accuracy_change"] = chosen["accuracy"] - base["accuracy"]
        direct = target.get("direct", {}).get(split, {})  # the linear-head target has no target-trained model
        for key, suffix in (("e_rmse", ""), ("e_rmse_l2", "_l2")):
            gap = base.get(key, math.nan) - direct.get(key, math.nan)
            out[f"{prefix}gap_closed{suffix}"] = (base[key] - chosen[key]) / gap if gap > 0 else None
        verdict = transfer_verdict(chosen, base)
        out[f"{prefix}works"] = bool(verdict["works"] and target["chosen_lam"] != 0.0)
        out[f"{prefix}worse"], out[f"{prefix}unchecked"] = verdict["worse"], verdict["unchecked"]
        out[f"{prefix}faithfulness"] = {name: [base[name], chosen[name]] for name in FAITHFULNESS_MEASURES
                                        if base.get(name) is not None and chosen.get(name) is not None}  # fmt: skip
        tve = target.get("tve", {}).get(split)
        if tve is not None:
            verdict = transfer_verdict(tve, base)
            out[f"{prefix}tve"] = {
                "relative_e_rmse": (tve["e_rmse"] - base["e_rmse"]) / base["e_rmse"],
                "relative_e_rmse_l2": (tve["e_rmse_l2"] - l2) / l2 if l2 else None,
                "works": verdict["works"], "worse": verdict["worse"],
                "e_rmse_l2": tve["e_rmse_l2"], "vector_e_rmse_l2": chosen["e_rmse_l2"],
                "vector_better_e_rmse_l2": bool(chosen["e_rmse_l2"] < tve["e_rmse_l2"]),
                "vector_better_e_rmse": bool(chosen["e_rmse"] < tve["e_rmse"]),
            }  # fmt: skip
    out["meets_related_goal"] = bool(
        out["relative_e_rmse"] <= -goal_e_rmse_gain and out["accuracy_change"] >= -goal_accuracy_drop - 1e-9
    )
    return out


def _validation_note(target: dict, goal_e_rmse_gain: float) -> str:
    """What validation says about λ2 > 0: the E-RMSE range when every λ2 > 0 made it worse, else the cost in accuracy
    of the first λ2 that reaches the goal's E-RMSE gain (or the deepest E-RMSE cut when none does)."""
    sweep = target["sweep"]["validation"]
    base = next(entry for entry in sweep if entry["lam"] == 0.0)
    changes = [((e["e_rmse"] - base["e_rmse"]) / base["e_rmse"], e["accuracy"] - base["accuracy"], e["lam"])
               for e in sorted(sweep, key=lambda e: e["lam"]) if e["lam"] > 0]  # fmt: skip
    if not changes:
        return ""
    if all(change >= 0 for change, _, _ in changes):
        low, high = min(c for c, _, _ in changes), max(c for c, _, _ in changes)
        return f"on validation every λ2 > 0 raised E-RMSE (by {100 * low:+.1f}% to {100 * high:+.1f}%)"
    reaching = [c for c in changes if c[0] <= -goal_e_rmse_gain]
    change, accuracy_change, lam = reaching[0] if reaching else min(changes)
    return f"on validation λ2 = {lam:g} gave E-RMSE {100 * change:+.1f}% at {100 * accuracy_change:+.1f} pts"


def _works_text(summary: dict) -> str:
    """The verdict of the rule at the chosen λ2 on test, with the faithfulness figures it read."""
    figures = ", ".join(f"{_SHORT_NAMES[name]} {before:.3f} → {after:.3f}"
                        for name, (before, after) in summary["faithfulness"].items())  # fmt: skip
    if summary["works"]:
        text = "the transfer **works** by the rule (E-RMSE falls and no faithfulness measure is worse than at λ2 = 0"
    else:
        failed = ([] if summary["relative_e_rmse"] < 0 else ["E-RMSE not lower"]) + [
            f"{_SHORT_NAMES[name]} worse" for name in summary["worse"]
        ]
        text = f"the transfer **does not work** by the rule ({', '.join(failed)} than at λ2 = 0"
    text += f": {figures})" if figures else ")"
    if summary["unchecked"]:
        text += f"; not measured: {', '.join(_SHORT_NAMES[name] for name in summary['unchecked'])}"
    return text


def _verdict(target: dict, summary: dict, settings: dict) -> str:
    l2 = summary.get("relative_e_rmse_l2")
    primary = "" if l2 is None else f"E-RMSE (L2, primary) {100 * l2:+.1f}%, "
    change = (f"{primary}E-RMSE {100 * summary['relative_e_rmse']:+.1f}%, accuracy "
              f"{100 * summary['accuracy_change']:+.1f} pts")  # fmt: skip
    if summary["lam"] == 0.0:
        head = f"the validation rule kept λ2 = 0 (the rule: {lambda_rule_text(settings['config'])})"
    else:
        head = f"λ2 = {summary['lam']:g} chosen on validation; on test {change}; {_works_text(summary)}"
    note = _validation_note(target, settings["goal_e_rmse_gain"])
    text = f"{head}; {note}." if note else f"{head}."
    if summary["lam"] != 0.0 and summary.get("gap_closed_l2") is not None:
        raw = "–" if summary["gap_closed"] is None else f"{100 * summary['gap_closed']:.0f}%"
        text += (f" The vector closes {raw} of the E-RMSE gap to the self-explaining model trained on the target "
                 f"({100 * summary['gap_closed_l2']:.0f}% of the E-RMSE (L2) gap; the aim is ≥ "
                 f"{100 * settings['goal_gap_closed']:g}%).")  # fmt: skip
    if target["role"] in ("related", "near"):
        goal = "meets" if summary["meets_related_goal"] else "does not meet"
        paper = (
            f"the paper's related-domain result (≥ {100 * settings['goal_e_rmse_gain']:g}% lower E-RMSE, accuracy "
            f"within {100 * settings['goal_accuracy_drop']:g} points)"
        )
        text += f" The chosen λ2 {goal} {paper}."
    elif target["role"] == "unrelated":
        if -summary["relative_e_rmse"] < settings["goal_e_rmse_gain"]:
            text += " As the paper reports for unrelated domains, the vector does not help here."
        else:
            text += " Unlike the paper's unrelated case, the vector helps here."
    tve = tve_summary(target, summary)
    text = f"{text} {tve}" if tve else text
    budget = budget_summary(target)
    return f"{text} {budget}" if budget else text


def tve_summary(target: dict, summary: dict) -> str:
    r"""
    One sentence on the TVE baseline against the vector at the chosen λ2 (test split): its E-RMSE (L2) and E-RMSE
    relative to θ_T's own explanations, the rule's verdict, and which of the two is closer to Kernel SHAP.

    Args:
        target (`dict`): one entry of `results["targets"]`; without `tve` (older results) the text is empty.
        summary (`dict`): its [`transfer_summary`].

    Returns:
        `str`
    """
    tve = summary.get("tve")
    if tve is None:
        return ""
    l2 = "" if tve["relative_e_rmse_l2"] is None else f"E-RMSE (L2) {100 * tve['relative_e_rmse_l2']:+.1f}%, "
    works = "works" if tve["works"] else "does not work"
    if summary["lam"] == 0.0:
        versus = "the rule applied no vector here"
    else:
        figures = f"{tve['vector_e_rmse_l2']:.3f} vs {tve['e_rmse_l2']:.3f}"
        if tve["vector_better_e_rmse_l2"]:
            versus = f"the vector at λ2 = {summary['lam']:g} beats it on E-RMSE (L2) ({figures})"
        else:
            versus = f"it beats the vector at λ2 = {summary['lam']:g} on E-RMSE (L2) ({figures})"
    return (f"TVE baseline (head on the frozen θ_base fitted to the source's labels, no target training), explaining "
            f"θ_T on test: {l2}E-RMSE {100 * tve['relative_e_rmse']:+.1f}% vs θ_T's own; by the rule it {works}; "
            f"{versus}.")  # fmt: skip


_BUDGET_MODELS = {"prediction_only": "prediction-only θ_T", "transferred": "θ_T + λ2·τ_S (chosen λ2)",
                  "direct": "self-explaining θ*_T trained on target"}  # fmt: skip


def format_budget(equivalent: dict) -> str:
    r"""
    An equivalent Kernel SHAP budget as the report writes it: `≈ 45` within the ladder, `< 32` below its smallest
    rung, `> 500` above its largest.

    Args:
        equivalent (`dict`): a result of [`~hf_explvec.evaluation.budget.interpolate_budget`].

    Returns:
        `str`
    """
    if equivalent["bound"] == "below":
        return f"< {equivalent['smallest']}"
    if equivalent["bound"] == "above":
        return f"> {equivalent['largest']}"
    return f"≈ {equivalent['num_samples']:.0f}"


def _rung(entry: dict, num_samples: int) -> dict | None:
    return next((rung for rung in entry["ladder"] if rung["num_samples"] == num_samples), None)


def _times(value: float, reference: float | None) -> str:
    return "–" if not reference else f"{value / reference:.1f}×"


def budget_summary(target: dict, paper_budget: int = 150) -> str:
    r"""
    One sentence: the equivalent Kernel SHAP budget of each model's one-pass explanation (E-RMSE, and E-RMSE (L2)),
    and how far that is from the paper's "comparable to Kernel SHAP with `paper_budget` samples": the one-pass E-RMSE
    as a multiple of Kernel SHAP-`paper_budget`'s on the same images (when that budget is on the ladder).

    Args:
        target (`dict`): one entry of `results["targets"]`; without `kernel_shap_budget` (older results) the text is
            empty.
        paper_budget (`int`, *optional*, defaults to 150): the paper's budget.

    Returns:
        `str`
    """
    budget = target.get("kernel_shap_budget")
    if not budget:
        return ""
    parts = []
    for key, entry in budget["models"].items():
        name = _BUDGET_MODELS[key] if key != "transferred" else f"θ_T + {entry['lam']:g}·τ_S"
        rung = _rung(entry, paper_budget)
        versus = (
            "" if rung is None else f", E-RMSE {_times(entry['one_pass_e_rmse'], rung['e_rmse'])} KS-{paper_budget}'s"
        )
        parts.append(
            f"{name} {format_budget(entry['equivalent'])} (L2: {format_budget(entry['equivalent_l2'])}{versus})"
        )
    same = "" if "transferred" in budget["models"] else " (λ2 = 0 chosen: the transferred model is θ_T)"
    return (f"Equivalent Kernel SHAP budget of the one-pass explanation (first {budget['num_images']} test images; "
            f"the paper: comparable to N = {paper_budget}): {'; '.join(parts)}{same}.")  # fmt: skip


def budget_table(target: dict) -> str:
    r"""
    The equivalent Kernel SHAP budget table of one target: per model the one-pass E-RMSE and E-RMSE (L2) on the
    ladder's images and the equivalent budgets, then Kernel SHAP's E-RMSE at each rung of the ladder per model.

    Args:
        target (`dict`): one entry of `results["targets"]` with `kernel_shap_budget`.

    Returns:
        `str`: two markdown tables, separated by a blank line.
    """
    budget = target["kernel_shap_budget"]
    models = budget["models"]
    names = {key: (f"θ_T + λ2·τ_S, λ2 = {entry['lam']:g}" if key == "transferred" else _BUDGET_MODELS[key])
             for key, entry in models.items()}  # fmt: skip
    rows = [[names[key], _fmt(entry["one_pass_e_rmse"]), format_budget(entry["equivalent"]),
             _fmt(entry["one_pass_e_rmse_l2"]), format_budget(entry["equivalent_l2"])]
            for key, entry in models.items()]  # fmt: skip
    first = markdown_table(["Model (one pass)", "E-RMSE", "Equivalent N", "E-RMSE (L2)", "Equivalent N (L2)"], rows)
    ladder = [[str(n)] + [f"{_fmt(_rung(e, n)['e_rmse'])} / {_fmt(_rung(e, n)['e_rmse_l2'])}" for e in models.values()]
              for n in budget["ladder"]]  # fmt: skip
    second = markdown_table(["Kernel SHAP N", *(f"{names[key]}: E-RMSE / (L2)" for key in models)], ladder)
    return f"{first}\n\n{second}"


def illustrated_lambda(target: dict, max_accuracy_drop: float = MAX_ACCURACY_DROP) -> tuple[float, bool]:
    r"""
    The λ2 whose attributions the heatmaps show: the chosen one, or, when the rule kept λ2 = 0, the largest λ2 within
    the validation accuracy tolerance (to show what the vector does; it is marked as not chosen).

    Args:
        target (`dict`): one entry of `results["targets"]` (`chosen_lam`, `sweep`).
        max_accuracy_drop (`float`, *optional*, defaults to 0.04): the run's λ-rule tolerance.

    Returns:
        `(float, bool)`: the λ2 and whether it is the chosen one.
    """
    if target["chosen_lam"] != 0.0:
        return target["chosen_lam"], True
    sweep = target["sweep"]["validation"]
    floor = next(e for e in sweep if e["lam"] == 0.0)["accuracy"] - max_accuracy_drop - 1e-9
    within = [e["lam"] for e in sweep if e["lam"] > 0 and e["accuracy"] >= floor]
    return (max(within), False) if within else (0.0, True)


def heatmap_file_name(name: str) -> str:
    """The heatmap PNG of a target: `heatmaps_<safe name>.png` (see [`safe_file_name`])."""
    return f"heatmaps_{safe_file_name(name)}.png"


# ----------------------------------------------------------------------------------------------------------- report
def machine_description(num_threads: int) -> str:
    """One line: CPU, cores, memory, OS, Python and torch versions, torch threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * page_size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at the end"
    return (f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, {num_threads} torch thread(s){load}")  # fmt: skip


def _bullets(results: dict) -> list[str]:
    config, model, hub = results["config"], results["model"], results["hub"]
    history = results["base_stage"]["history"]
    if history:
        base = (
            f"{config['pretrain_steps']} steps of cross-entropy over the class prompts of the base domain, both "
            f"towers trained (last batch accuracy {100 * history[-1]['accuracy']:.0f}%)"
        )
    else:
        base = "none (a pretrained CLIP is the base)"
    zero_shot = results["base_stage"]["zero_shot_validation_accuracy"]
    zero_shot = ", ".join(f"{name} {100 * value:.1f}%" for name, value in zero_shot.items())
    grid = ", ".join(f"{lam:g}" for lam in config["lambdas"])
    return [
        (
            f"- Model: {model['clip']}; vision tower {model['vision_parameters']:,} parameters, image "
            f"{model['image_size']}, patch {model['patch_size']} (M = {model['num_patches']} patches)."
        ),
        f"- Base stage: {base}. Zero-shot validation accuracy of θ_base with each domain's prompt head: {zero_shot}.",
        (
            f"- Fine-tuning (every model, twins alike): AdamW, learning rate {config['learning_rate']:g}, "
            f"{config['num_train_epochs']} epochs, batch {config['batch_size']}, cosine schedule with 10% warmup; "
            f"self-explaining models α = {config['alpha']}."
        ),
        (
            f"- Kernel SHAP: training labels with N = {config['label_num_samples']} (of the prediction-only model of "
            f"the same domain, label class, through `label_dataset`); evaluation references with N = "
            f"{config['eval_num_samples']}; explained score: {config.get('shap_value', 'logit')}."
        ),
        (
            f"- Transfer: θ̃ = θ_base + λ1·(θ_T − θ_base) + λ2·τ_S with λ1 = {config['lam_target']:g} and λ2 in "
            f"{{{grid}}}; λ2 is chosen on validation ({lambda_rule_text(config)}); test is measured afterwards, only "
            f"at λ2 = 0, the chosen λ2 and the λ2 the heatmaps show."
        ),
        (
            f"- Hub: τ_S was pushed to a LocalHub on loopback as `{hub['repo_id']}`, **commit `{hub['commit_sha']}`**, "
            f"and pulled back by name with `TaskVector.from_pretrained` (commit `{hub['pulled_commit']}`, largest "
            f"difference {hub['max_abs_difference']:.1g}); {hub['num_parameters']:,} parameters, "
            f"norm {hub['norm']:.3f}."
        ),
        "- Seeds: " + ", ".join(f"{k} {v}" for k, v in results["seeds"].items()) + ".",
    ]


def lambda_rule_text(config: dict) -> str:
    """The λ rule of a run in words, from its config (older results: raw E-RMSE and the observed drop)."""
    metric = "E-RMSE (L2)" if config.get("lambda_metric", "e_rmse") == "e_rmse_l2" else "E-RMSE"
    confidence = config.get("lambda_confidence")
    drop = (f"{100 * confidence:g}% upper confidence bound of the paired validation accuracy drop"
            if confidence is not None else "validation accuracy drop")  # fmt: skip
    tolerance = 100 * config.get("max_accuracy_drop", MAX_ACCURACY_DROP)
    return (f"the lowest validation {metric} among the λ2 whose {drop} against λ2 = 0 is at most {tolerance:g} "
            "points; λ2 = 0 is always allowed")  # fmt: skip


def _setup_section(results: dict) -> list[str]:
    domains = [
        [name, d["role"], d["origin"], str(len(d["classes"])), ", ".join(f"{k} {v}" for k, v in d["sizes"].items())]
        for name, d in results["domains"].items()
    ]
    source = results["source"]
    twins = [
        [
            name.replace("_", "-"),
            f"{100 * m['accuracy']:.1f}%",
            _fmt(m["e_rmse"]),
            _fmt(m["e_rmse_l2"]),
            _fmt(m["iou_at_k"]),
            _fmt(m["spearman"]),
            _fmt(m.get("pointing")),
            _fmt(m["shap_rms"]),
        ]
        for name, m in source["test"].items()
    ]
    return [
        "## Setup",
        "",
        *_bullets(results),
        "",
        markdown_table(["Domain", "Role", "Pixels from", "Classes", "Images"], domains),
        "",
        (
            f"Source twins on the source test split ({source['domain']}; RMS of the Kernel SHAP labels "
            f"{source['labels_rms']:.3f}; the prediction-only twin is bit-identical to the model the labels were "
            f"taken from: {source['twins_identical_to_labelled_model']}; tve-baseline: the TVE head on the frozen "
            f"θ_base fitted to those labels, explaining the prediction-only twin):"
        ),
        "",
        markdown_table(
            ["Model", "Accuracy", "E-RMSE", "E-RMSE (L2)", "IoU@K", "Spearman", "Pointing", "SHAP RMS"], twins
        ),
        "",
    ]


def _target_section(results: dict, target: dict) -> list[str]:
    name, sizes = target["domain"], results["domains"][target["domain"]]["sizes"]
    return [
        f"## Target `{name}` ({target['role']})",
        "",
        (
            f"cos(τ_S,pred, τ_T) = {_fmt(target['cosine_tau_source_prediction_vs_tau_target'])}; cos(τ_S, τ_T) = "
            f"{_fmt(target['cosine_tau_source_explainability_vs_tau_target'])}; "
            f"‖τ_T‖ = {target['norm_tau_target']:.3f}; RMS of the Kernel SHAP labels of the target's training split "
            f"(for θ*_T only): {target['labels_rms']:.3f}."
        ),
        "",
        f"**Test** ({sizes.get('test', '?')} images):",
        "",
        target_table(target, "test"),
        "",
        f"**Validation** ({sizes.get('validation', '?')} images; λ2 is chosen here):",
        "",
        target_table(target, "validation"),
        "",
        *_budget_section(target),
        f"![heatmaps of {name}]({heatmap_file_name(name)})",
        "",
    ]


def _budget_section(target: dict) -> list[str]:
    budget = target.get("kernel_shap_budget")
    if not budget:
        return []
    return [
        (
            f"**Equivalent Kernel SHAP budget** (first {budget['num_images']} test images; ladder "
            f"{', '.join(str(n) for n in budget['ladder'])}; Kernel SHAP of each model with another seed than its "
            f"reference):"
        ),
        "",
        budget_table(target),
        "",
    ]


def build_report(results: dict) -> str:
    r"""
    The text of `report.md` from the results dict of [`hf_explvec.demo.run`].

    Args:
        results (`dict`): the content of `results.json` (with `date` and `machine`).

    Returns:
        `str`: markdown.
    """
    config = results["config"]
    settings = report_settings(config)
    lines = [
        "# hf-explvec offline demo: explainability vectors by task arithmetic",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {results['machine']}",
        f"- Command: `{config.get('command') or 'hf_explvec.demo.run(...)'}`",
        f"- Wall time: {results['timings_seconds']['total']:.1f} s",
    ]
    if config.get("note"):
        lines.append(f"- **Note: {config['note']}.**")
    lines += ["", "## Summary", ""]
    for target in results["targets"]:
        summary = transfer_summary(target, settings["goal_e_rmse_gain"], settings["goal_accuracy_drop"])
        lines.append(f"- **{target['domain']}** ({target['role']}): {_verdict(target, summary, settings)}")
    if "linear_head" in results:
        entry = results["linear_head"]
        summary = transfer_summary(entry, settings["goal_e_rmse_gain"], settings["goal_accuracy_drop"])
        lines.append(f"- **{entry['domain']} as {entry['model_class']}** (linear head, {entry['role']}): "
                     f"{_verdict(entry, summary, settings)}")  # fmt: skip
    definitions = DEFINITIONS.format(
        eval_n=config["eval_num_samples"],
        k=config["top_k"],
        threads=config["num_threads"],
        value=config.get("shap_value", "logit"),
        tolerance=FAITHFULNESS_TOLERANCE,
    )
    lines += ["", "## Definitions", "", definitions, "", *_setup_section(results)]
    for target in results["targets"]:
        lines += _target_section(results, target)
    lines += _linear_head_section(results)
    if "diagnostic" in results:
        lines += diagnostic_section(results["diagnostic"]["points"], results["diagnostic"]["correlations"], config)
    timings = [[stage, f"{seconds:.1f}"] for stage, seconds in results["timings_seconds"].items()]
    lines += [
        "## λ sweep",
        "",
        "![accuracy against E-RMSE over λ2](lambda_sweep.png)",
        "",
        "## Timings",
        "",
        markdown_table(["Stage", "Seconds"], timings),
    ]
    return "\n".join(lines) + "\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(results: dict, heatmaps: dict, output_dir: str | os.PathLike) -> Path:
    r"""
    Write `results.json`, `report.md`, `heatmaps_<target>.png` and `lambda_sweep.png` to `output_dir`, in that
    order: the results are on disk before anything that may fail (drawing, formatting). Target names become safe file
    names ([`heatmap_file_name`]: `org/name` gives `heatmaps_org--name.png`).

    Args:
        results (`dict`): the results of [`hf_explvec.demo.run`]; `date` and `machine` are added when missing.
        heatmaps (`dict[str, dict]`): per target, the arrays of [`plot_heatmaps`].
        output_dir (`str` or `os.PathLike`): the report folder (created).

    Returns:
        `pathlib.Path`: the path of `report.md`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    results.setdefault("machine", machine_description(results["config"]["num_threads"]))
    settings = report_settings(results["config"])
    for target in results["targets"]:
        target["summary"] = transfer_summary(target, settings["goal_e_rmse_gain"], settings["goal_accuracy_drop"])
    if all("probe" in target for target in results["targets"]):
        points = diagnostic_points(results["targets"], results["config"]["seed"])
        results["diagnostic"] = {"points": points, "correlations": diagnostic_correlations(points)}
    if "linear_head" in results:
        entry = results["linear_head"]
        entry["summary"] = transfer_summary(entry, settings["goal_e_rmse_gain"], settings["goal_accuracy_drop"])
        entry["reading"] = linear_head_reading(results)
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False) + "\n")
    logger.info("results written to %s", output_dir / "results.json")
    report = output_dir / "report.md"
    report.write_text(build_report(results))
    for target in results["targets"]:
        name = target["domain"]
        plot_heatmaps(heatmaps[name], output_dir / heatmap_file_name(name),
                      f"{name} ({target['role']}): test images, explained class = label")  # fmt: skip
    plot_lambda_sweep(results["targets"], output_dir / "lambda_sweep.png", settings["max_accuracy_drop"])
    logger.info("report written to %s", report)
    return report


def _summary_line(name: str, entry: dict, settings: dict) -> str:
    """One closing line: the chosen λ2 of a target (or of the linear-head entry) and its test figures."""
    s = transfer_summary(entry, settings["goal_e_rmse_gain"], settings["goal_accuracy_drop"])
    l2 = "–" if s["relative_e_rmse_l2"] is None else f"{100 * s['relative_e_rmse_l2']:+.1f}%"
    works = "no vector applied" if s["lam"] == 0.0 else "transfer works" if s["works"] else "transfer does not work"
    return (f"{name}: λ2 = {s['lam']:g}, test E-RMSE (L2) {l2}, E-RMSE {100 * s['relative_e_rmse']:+.1f}%, accuracy "
            f"{100 * s['accuracy_change']:+.1f} pts; {works}")  # fmt: skip


def format_summary(results: dict) -> str:
    """The CLI's closing lines: per target the chosen λ2 and its test figures, the Hub commit, the wall time."""
    hub, settings = results["hub"], report_settings(results.get("config", {}))
    lines = [f"report: {results.get('report', '')}", f"hub: {hub['repo_id']} @ {hub['commit_sha']}"]
    for target in results["targets"]:
        lines.append(_summary_line(f"{target['domain']} ({target['role']})", target, settings))
    if "linear_head" in results:
        entry = results["linear_head"]
        lines.append(_summary_line(f"{entry['domain']} as {entry['model_class']} (linear head)", entry, settings))
    lines.append(f"wall time: {results['timings_seconds']['total']:.1f} s")
    return "\n".join(lines)


__all__ = [
    "DEFINITIONS",
    "TABLE_HEADER",
    "TVE_ROW",
    "FAITHFULNESS_MEASURES",
    "FAITHFULNESS_TOLERANCE",
    "budget_summary",
    "budget_table",
    "build_report",
    "format_budget",
    "format_summary",
    "heatmap_file_name",
    "illustrated_lambda",
    "linear_head_reading",
    "linear_head_table",
    "machine_description",
    "markdown_table",
    "plot_heatmaps",
    "plot_lambda_sweep",
    "report_settings",
    "safe_file_name",
    "target_table",
    "transfer_summary",
    "transfer_verdict",
    "tve_summary",
    "write_report",
]
