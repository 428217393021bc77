"""What the demo measures and how it reports it: the metrics of each table row, the λ rule, and the report folder
(`report.md`, `results.json`, heatmap overlays, the λ-sweep plot).

The measurement functions take a model and a split (an object with `pixel_values` `(N, 3, H, W)`, `labels` `(N,)`
and `evidence` `(N, M)` or `None`, like [`hf_explvec.demo.DemoSplit`]); the report functions only format and plot
the results dict that [`hf_explvec.demo.run`] builds. Figures use `matplotlib.figure.Figure` (not pyplot), so the
caller's backend and open figures are left alone.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.vit import model_kernel_shap
from ..evaluation import (
    accuracy,
    deletion_auc,
    e_rmse,
    insertion_auc,
    iou_at_k,
    select_target,
    spearman,
)

logger = logging.getLogger(__name__)

RELATED_GOAL_E_RMSE = -0.09  # the paper's related-domain gain: E-RMSE at least 9% below the prediction-only target
ACCURACY_TOLERANCE = 0.04  # ... with accuracy within 4 points

DEFINITIONS = """\
- **Explained class**: the true label of each image (the class the self-explaining models are trained to explain).
- **E-RMSE** (lower is better): for each test image, `sqrt(mean over the M patches of (a_m - s_m)^2)`, then the mean
  over images, where `a` are the model's own patch attributions for the explained class (one forward pass) and `s`
  the Kernel SHAP values of **that same model** ({value} of the explained class, {eval_n} coalitions, embedding-level
  masking, absent patches = the all-zero image after CLIP normalisation, i.e. the mean pixel). Every row is compared
  with the Kernel SHAP values of its own model, never of another one. ΔE-RMSE is relative to the prediction-only
  target (λ2 = 0); ΔAcc is in accuracy points.
- **E-RMSE (L2)**: the same after dividing each image's two vectors by their L2 norms: the shape of the explanation
  only, blind to its scale (a diagnostic: raw E-RMSE also falls when a model's own Kernel SHAP values shrink, e.g.
  when it becomes less confident; the **SHAP RMS** column shows that scale).
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
  is the sampling error of Kernel SHAP at that budget (the N = {eval_n} row is the noise floor of the reference)."""

DEVELOPMENT_NOTES = """\
How the default configuration was reached. Every comparison below was made on **validation** splits (Kernel SHAP
references at N = 300 during the exploration); figures are validation E-RMSE change / accuracy change of the related
target `digits_on_photos` at a given λ2, against the prediction-only target.

- **Base stage.** Training only the vision tower against a fixed head from the random text tower was dropped: the
  text embeddings of the digit prompts had cosines 0.92-0.97 with each other, so every head was nearly degenerate.
  Training both towers with cross-entropy over the class prompts (the templates of all registered domains, one drawn
  at random per class and step) separates them and gives meaningful zero-shot heads (accuracies in the Setup).
  1,500 instead of 600 base steps raised the unrelated target's accuracy but did not help the transfer.
- **Training length.** With 8 fine-tuning epochs the self-explaining source twin under-fitted its Kernel SHAP labels
  (source E-RMSE only about 40% below its prediction-only twin, attributions at half the scale of the labels); with
  20 epochs it fits them (about 65-70% lower), and τ_S transfers more per unit of λ2.
- **α, learning rate, width, data.** All trace nearly the same trade-off on the related target, about 2.5% of E-RMSE
  per accuracy point: α = 0.8: λ2 = 0.3 gives -10.5% / -4.2 pts; α = 0.9: -9.8% / -4.2; α = 0.95: -12.6% / -4.2 at
  λ2 = 0.4; learning rate 2e-4: -8.2% / -6.7 at 0.4 (a weaker twin); hidden size 128: -4.9% / -3.3 at 0.3 (its
  attributions point at the digit far more often, 0.30 -> 0.68, but E-RMSE falls less); 1,200 training images per
  domain: -9.5% / -3.3 at 0.3, at twice the run time. The paper's α = 0.8, hidden size 64 and 600 images were kept.
- **Normalisation.** Kernel SHAP values of the logit concentrate on the one evidence patch (RMS about 3 with a logit
  scale of 14-16), while a prediction-only model's attributions, divided by M = 16, have an RMS of about 0.3: the
  self-explaining models must make the evidence token about M times longer than [CLS], and τ_S carries that large
  change, which also disturbs the [CLS] embedding through the shared post-layernorm and projection (the accuracy
  cost above). Kernel SHAP of the log-probability instead (labels and references) puts the labels at the scale of
  the attributions and gave a slightly better trade-off (-10.6% / -3.3 pts at λ2 = 0.3), but the model's
  attributions are defined in logit units, so the default stays with the logit (`shap_value` selects it).
  Raw E-RMSE also falls when a model's own Kernel SHAP values shrink (large λ2: the SHAP RMS column), so the report
  adds E-RMSE after L2 normalisation, IoU, Spearman and pointing.
- **Validation size and grid.** The first full run of this configuration used 120 validation images and the grid
  0, 0.1, 0.2, 0.3, 0.5, 0.75, 1: there λ2 = 0.3 missed the 4-point tolerance by one validation image (-10.5% /
  -4.2 pts) and the rule chose 0.2 (validation -5.3% / -1.7; test -4.1% / -1.3). In 5 of the 7 explorations at 120
  validation images, the next λ2 missed the tolerance by a single image, so validation was doubled to 240 images
  (0.4 points per image) and 0.4 added to the grid. That run's test table had been printed before this change (it
  showed -9.3% / -3.3 pts at λ2 = 0.3): the change was decided on validation grounds, but not blind to test.
- **Unrelated target.** On `texture_tiles` E-RMSE rose with λ2 in most variants (up to +17% at λ2 = 0.5); it fell
  by at most 1.4% with 1,200 training images, and by 8% at λ2 = 0.3 with hidden size 128, the one variant where the
  vector helped the unrelated target: the vector taught on digits mostly does not transfer to textures."""


# ------------------------------------------------------------------------------------------------------ measurements
def select_lambda(sweep: list[dict], max_accuracy_drop: float = ACCURACY_TOLERANCE) -> float:
    r"""
    The validation rule that picks λ2: the lowest validation E-RMSE among the λ2 whose validation accuracy is within
    `max_accuracy_drop` of the prediction-only target's (the λ2 = 0 entry); ties go to the smaller λ2. λ2 = 0 is
    always eligible, so a vector that does not help is not applied.

    Args:
        sweep (`list[dict]`): one entry per λ2, with keys `lam`, `accuracy` (a fraction) and `e_rmse`, on validation.
        max_accuracy_drop (`float`, *optional*, defaults to 0.04): the tolerance, a fraction (0.04 is 4 points).

    Returns:
        `float`: the chosen λ2.

    Raises:
        `ValueError`: no λ2 = 0 entry, an entry without those keys, or a negative tolerance.
    """
    if not max_accuracy_drop >= 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}.")
    for entry in sweep:
        missing = {"lam", "accuracy", "e_rmse"} - set(entry)
        if missing:
            raise ValueError(f"every sweep entry needs lam, accuracy and e_rmse; {entry} lacks {sorted(missing)}.")
    baseline = [entry for entry in sweep if entry["lam"] == 0.0]
    if not baseline:
        lams = [entry["lam"] for entry in sweep]
        raise ValueError(f"the sweep needs a lam = 0 entry (the prediction-only target), got {lams}.")
    floor = baseline[0]["accuracy"] - max_accuracy_drop - 1e-9  # 1e-9: a drop of exactly the tolerance is within it
    eligible = [entry for entry in sweep if entry["accuracy"] >= floor or entry["lam"] == 0.0]
    return min(eligible, key=lambda entry: (entry["e_rmse"], entry["lam"]))["lam"]


def kernel_shap_values(model, split, num_samples: int, seed: int, batch_size: int = 256, desc=None, chunk: int = 16,
                       value: str = "logit"):  # fmt: skip
    r"""
    Kernel SHAP values of `model` for the label class of every image of `split` ([`model_kernel_shap`] of `value`,
    embedding-level masking, baseline 0, i.e. the mean pixel after CLIP normalisation), `chunk` images per call with
    the seed `seed + first index` (the result does not depend on `batch_size`).

    Returns:
        `(torch.FloatTensor of shape (N, M), float)`: the values and the wall time per image in seconds.
    """
    values, start, device = [], time.perf_counter(), model.device
    for i in tqdm(range(0, len(split), chunk), desc=desc, disable=desc is None, leave=False):
        pixel_values, labels = split.pixel_values[i : i + chunk].to(device), split.labels[i : i + chunk].to(device)
        values.append(model_kernel_shap(model, pixel_values, labels, num_samples=num_samples, batch_size=batch_size,
                                        seed=seed + i, value=value).cpu())  # fmt: skip
    return torch.cat(values), (time.perf_counter() - start) / len(split)


@torch.inference_mode()
def forward_attributions(model, split, batch_size: int = 256):
    r"""
    One forward pass over `split` in batches.

    Returns:
        `(logits (N, C), attributions of the label class (N, M), seconds per image)`.
    """
    model.eval()
    start = time.perf_counter()
    logits, attributions = [], []
    for i in range(0, len(split), batch_size):
        outputs = model(split.pixel_values[i : i + batch_size].to(model.device))
        logits.append(outputs.logits.float().cpu())
        attributions.append(select_target(outputs.patch_attributions.float().cpu(), split.labels[i : i + batch_size]))
    return torch.cat(logits), torch.cat(attributions), (time.perf_counter() - start) / len(split)


def explanation_metrics(model, split, explained, reference, *, top_k: int = 2, perturbation: bool = True) -> dict:
    r"""
    Agreement of the explanations `explained` `(N, M)` with the `reference` Kernel SHAP values `(N, M)` (E-RMSE, raw
    and L2-normalised, IoU@`top_k`, Spearman), the scales of both, pointing at the evidence (when `split.evidence` is
    not `None`) and, with `perturbation`, deletion and insertion AUC of `explained` on `model` (label class,
    baseline 0).

    Returns:
        `dict[str, float]`.
    """
    metrics = {
        "e_rmse": e_rmse(explained, reference),
        "e_rmse_l2": e_rmse(explained, reference, normalize="l2"),
        "iou_at_k": iou_at_k(explained, reference, k=min(top_k, explained.shape[1])),
        "spearman": spearman(explained, reference),
        "shap_rms": float(reference.double().pow(2).mean().sqrt()),
        "attribution_rms": float(explained.double().pow(2).mean().sqrt()),
    }
    if split.evidence is not None:  # the most attributed patch lies on the class object
        metrics["pointing"] = float(split.evidence.gather(1, explained.argmax(dim=1, keepdim=True)).float().mean())
    if perturbation:
        device = model.device
        inputs = (model, split.pixel_values.to(device), explained.to(device), split.labels.to(device))
        options = {"patch_size": model.config.vision_config.patch_size, "baseline": 0.0}
        with torch.inference_mode():
            metrics["deletion_auc"] = deletion_auc(*inputs, **options)
            metrics["insertion_auc"] = insertion_auc(*inputs, **options)
    return metrics


def evaluate_model(model, split, *, num_samples: int, seed: int, batch_size: int = 256, top_k: int = 2,
                   perturbation: bool = True, value: str = "logit", desc=None) -> tuple[dict, dict]:  # fmt: skip
    r"""
    Accuracy and explanation metrics of a self-explaining model on a split: its own attributions (one forward pass)
    against its own Kernel SHAP values (`num_samples`, `seed`, `value`).

    Returns:
        `(metrics, arrays)`: the metrics of [`explanation_metrics`] plus `accuracy`, `explain_seconds_per_image` and
        `reference_shap_seconds_per_image`; the tensors `attributions`, `reference` and `logits`.
    """
    logits, explained, seconds = forward_attributions(model, split)
    reference, shap_seconds = kernel_shap_values(model, split, num_samples, seed, batch_size, desc, value=value)
    metrics = {
        "accuracy": accuracy(logits, split.labels),
        "explain_seconds_per_image": seconds,
        "reference_shap_seconds_per_image": shap_seconds,
    }
    metrics.update(explanation_metrics(model, split, explained, reference, top_k=top_k, perturbation=perturbation))
    return metrics, {"attributions": explained, "reference": reference, "logits": logits}


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


TABLE_HEADER = ["Model", "λ2", "Accuracy", "ΔAcc (pts)", "E-RMSE", "ΔE-RMSE", "E-RMSE (L2)", "IoU@K", "Spearman",
                "Pointing", "Deletion AUC ↓", "Insertion AUC ↑", "SHAP RMS", "s/image",
                "cos(τ_S,pred, τ_T)"]  # fmt: skip


def _row(name: str, lam: str, metrics: dict, baseline: dict, cosine: str) -> list[str]:
    return [name, lam, f"{100 * metrics['accuracy']:.1f}%", _points(metrics["accuracy"], baseline["accuracy"]),
            _fmt(metrics["e_rmse"]), _relative(metrics["e_rmse"], baseline["e_rmse"]), _fmt(metrics["e_rmse_l2"]),
            _fmt(metrics["iou_at_k"]), _fmt(metrics["spearman"]), _fmt(metrics.get("pointing")),
            _fmt(metrics.get("deletion_auc")), _fmt(metrics.get("insertion_auc")), _fmt(metrics.get("shap_rms")),
            _seconds(metrics.get("explain_seconds_per_image")), cosine]  # fmt: skip


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
    rows = [_row("prediction-only θ_T (no vector)", "0", baseline, baseline, cosine)]
    for entry in sweep:
        if entry["lam"] == 0.0:
            continue
        mark = " ✓ chosen on validation" if entry["lam"] == target["chosen_lam"] else ""
        rows.append(_row(f"θ_T + λ2·τ_S{mark}", f"{entry['lam']:g}", entry, baseline, cosine))
    direct = target["direct"][split]
    rows.append(_row("self-explaining θ*_T trained on target (lower bound)", "–", direct, baseline, "–"))
    if split == "test":
        for entry in target["kernel_shap"]:
            rows.append(_row(f"Kernel SHAP N={entry['num_samples']} on θ_T", "–", entry, baseline, "–"))
    return markdown_table(TABLE_HEADER, rows)


def transfer_summary(target: dict) -> dict:
    r"""
    The chosen λ2's test figures against the prediction-only target, and whether they meet the paper's related-domain
    result (E-RMSE at least 9% lower, accuracy within 4 points).

    Args:
        target (`dict`): one entry of `results["targets"]`.

    Returns:
        `dict`: `lam`, `relative_e_rmse` (fraction), `accuracy_change` (fraction), `meets_related_goal` (`bool`),
        and the same on validation (`validation_relative_e_rmse`, `validation_accuracy_change`).
    """
    out = {"lam": target["chosen_lam"]}
    for split, prefix in (("test", ""), ("validation", "validation_")):
        sweep = target["sweep"][split]
        base = next(e for e in sweep if e["lam"] == 0.0)
        chosen = next(e for e in sweep if e["lam"] == target["chosen_lam"])
        out[f"{prefix}relative_e_rmse"] = (chosen["e_rmse"] - base["e_rmse"]) / base["e_rmse"]
        out[f"{prefix}accuracy_change"] = chosen["accuracy"] - base["accuracy"]
    out["meets_related_goal"] = bool(
        out["relative_e_rmse"] <= RELATED_GOAL_E_RMSE and out["accuracy_change"] >= -ACCURACY_TOLERANCE - 1e-9
    )
    return out


def _validation_note(target: dict) -> str:
    """What validation says about λ2 > 0: the E-RMSE range when every λ2 > 0 made it worse, else the cost in accuracy
    of the first λ2 that reaches the paper's 9% (or the deepest E-RMSE cut when none does)."""
    sweep = target["sweep"]["validation"]
    base = next(entry for entry in sweep if entry["lam"] == 0.0)
    changes = [((e["e_rmse"] - base["e_rmse"]) / base["e_rmse"], e["accuracy"] - base["accuracy"], e["lam"])
               for e in sorted(sweep, key=lambda e: e["lam"]) if e["lam"] > 0]  # fmt: skip
    if not changes:
        return ""
    if all(change >= 0 for change, _, _ in changes):
        low, high = min(c for c, _, _ in changes), max(c for c, _, _ in changes)
        return f"on validation every λ2 > 0 raised E-RMSE (by {100 * low:+.1f}% to {100 * high:+.1f}%)"
    reaching = [c for c in changes if c[0] <= RELATED_GOAL_E_RMSE]
    change, accuracy_change, lam = reaching[0] if reaching else min(changes)
    return f"on validation λ2 = {lam:g} gave E-RMSE {100 * change:+.1f}% at {100 * accuracy_change:+.1f} pts"


def _verdict(target: dict, summary: dict) -> str:
    change = f"E-RMSE {100 * summary['relative_e_rmse']:+.1f}%, accuracy {100 * summary['accuracy_change']:+.1f} pts"
    if summary["lam"] == 0.0:
        head = "the validation rule kept λ2 = 0 (no λ2 > 0 lowered validation E-RMSE within the accuracy tolerance)"
    else:
        head = f"λ2 = {summary['lam']:g} chosen on validation; on test {change}"
    note = _validation_note(target)
    head = f"{head}; {note}" if note else head
    if target["role"] == "related":
        goal = "meets" if summary["meets_related_goal"] else "does not meet"
        paper = "the paper's related-domain result (≥ 9% lower E-RMSE, accuracy within 4 points)"
        return f"{head}. The chosen λ2 {goal} {paper}."
    if target["role"] == "unrelated":
        gain = -summary["relative_e_rmse"]
        if gain < 0.09:
            return f"{head}. As the paper reports for unrelated domains, the vector does not help here."
        return f"{head}. Unlike the paper's unrelated case, the vector helps here."
    return f"{head}."


def illustrated_lambda(target: dict, max_accuracy_drop: float = ACCURACY_TOLERANCE) -> tuple[float, bool]:
    r"""
    The λ2 whose attributions the heatmaps show: the chosen one, or, when the rule kept λ2 = 0, the largest λ2 within
    the validation accuracy tolerance (to show what the vector does; it is marked as not chosen).

    Returns:
        `(float, bool)`: the λ2 and whether it is the chosen one.
    """
    if target["chosen_lam"] != 0.0:
        return target["chosen_lam"], True
    sweep = target["sweep"]["validation"]
    floor = next(e for e in sweep if e["lam"] == 0.0)["accuracy"] - max_accuracy_drop - 1e-9
    within = [e["lam"] for e in sweep if e["lam"] > 0 and e["accuracy"] >= floor]
    return (max(within), False) if within else (0.0, True)


# ---------------------------------------------------------------------------------------------------------- figures
def _overlay(axis, image, values, grid: int, limit: float, title: str):
    size = image.shape[0]
    axis.imshow(image.mean(axis=-1), cmap="gray", interpolation="nearest", vmin=0, vmax=255)
    axis.imshow(values.reshape(grid, grid), cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6,
                interpolation="nearest", extent=(-0.5, size - 0.5, size - 0.5, -0.5))  # fmt: skip
    axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_heatmaps(heatmaps: dict, path: str | os.PathLike, title: str = "") -> None:
    r"""
    Heatmap overlays, one row per test image: the image (evidence patches outlined), Kernel SHAP values of the
    prediction-only target, and the patch attributions of the prediction-only target, of the target with the vector
    (chosen λ2) and of the self-explaining model trained on the target. Red is for the explained class, blue against;
    each panel has its own symmetric colour scale (its maximum |value| is in the title).

    Args:
        heatmaps (`dict`): `images` `(B, H, W, 3)` uint8, `evidence` `(B, M)` bool or `None`, `labels` `(B,)`,
            `class_names`, `kernel_shap`, `prediction_only`, `with_vector`, `direct` (each `(B, M)`), `lam` (the λ2
            of `with_vector`, see [`illustrated_lambda`]) and `chosen` (whether it is the chosen λ2).
        path (`str` or `os.PathLike`): the PNG to write.
        title (`str`, *optional*): the figure title.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    images = np.asarray(heatmaps["images"])
    count, size = images.shape[0], images.shape[1]
    panels = [("Kernel SHAP of θ_T", "kernel_shap"), ("prediction-only θ_T", "prediction_only"),
              (f"θ_T + {heatmaps['lam']:g}·τ_S" + ("" if heatmaps["chosen"] else " (not chosen)"), "with_vector"),
              ("self-explaining θ*_T", "direct")]  # fmt: skip
    grid = round(math.sqrt(np.asarray(heatmaps["kernel_shap"]).shape[1]))
    patch = size // grid
    figure = Figure(figsize=(2.0 * (1 + len(panels)), 2.1 * count + 0.4))
    axes = figure.subplots(count, 1 + len(panels), squeeze=False)
    for row in range(count):
        axis = axes[row][0]
        axis.imshow(images[row], interpolation="nearest")
        if heatmaps.get("evidence") is not None:
            for cell in np.flatnonzero(np.asarray(heatmaps["evidence"][row])):
                top, left = divmod(int(cell), grid)
                axis.add_patch(Rectangle((left * patch - 0.5, top * patch - 0.5), patch, patch, fill=False, ec="lime"))
        axis.set_title(f"label: {heatmaps['class_names'][int(heatmaps['labels'][row])]}", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
        for column, (name, key) in enumerate(panels, start=1):
            values = np.asarray(heatmaps[key][row], dtype=np.float64)
            limit = float(np.abs(values).max()) or 1.0
            _overlay(axes[row][column], images[row], values, grid, limit, f"{name}\nmax |a| = {limit:.3g}")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_lambda_sweep(targets: list[dict], path: str | os.PathLike) -> None:
    r"""
    Accuracy against E-RMSE over the λ2 grid, one panel per target, validation (circles) and test (squares), λ2
    written next to each point, the chosen λ2 circled, the self-explaining model trained on the target as triangles,
    and the validation accuracy floor of the λ rule as a dotted line.

    Args:
        targets (`list[dict]`): `results["targets"]`.
        path (`str` or `os.PathLike`): the PNG to write.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(targets), 4.4))
    axes = figure.subplots(1, len(targets), squeeze=False)[0]
    for axis, target in zip(axes, targets):
        for split, marker, colour in (("validation", "o", "tab:blue"), ("test", "s", "tab:orange")):
            sweep = target["sweep"][split]
            x = [e["e_rmse"] for e in sweep]
            y = [100 * e["accuracy"] for e in sweep]
            axis.plot(x, y, marker=marker, color=colour, label=f"θ_T + λ2·τ_S ({split})")
            for entry, xi, yi in zip(sweep, x, y):
                axis.annotate(f"{entry['lam']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if entry["lam"] == target["chosen_lam"]:
                    axis.scatter([xi], [yi], s=180, facecolors="none", edgecolors="red", linewidths=1.5)
            direct = target["direct"][split]
            axis.scatter([direct["e_rmse"]], [100 * direct["accuracy"]], marker="^", s=70, color=colour,
                         edgecolors="black", label=f"self-explaining θ*_T ({split})")  # fmt: skip
        base = next(e for e in target["sweep"]["validation"] if e["lam"] == 0.0)
        axis.axhline(100 * (base["accuracy"] - ACCURACY_TOLERANCE), color="tab:blue", linestyle=":", linewidth=1,
                     label="validation accuracy floor of the λ rule")  # fmt: skip
        axis.set_title(f"{target['domain']} ({target['role']}); red circle: chosen λ2", fontsize=9)
        axis.set_xlabel("E-RMSE vs the model's own Kernel SHAP (lower is better)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


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
            f"- Kernel SHAP: training labels with N = {config['label_num_samples']} (of the prediction-only model of the "
            f"same domain, label class, through `label_dataset`); evaluation references with N = "
            f"{config['eval_num_samples']}; explained score: {config.get('shap_value', 'logit')}."
        ),
        (
            f"- Transfer: θ̃ = θ_base + λ1·(θ_T − θ_base) + λ2·τ_S with λ1 = {config['lam_target']:g} and λ2 in "
            f"{{{grid}}}; λ2 is chosen on validation: the lowest validation E-RMSE with validation accuracy within "
            f"{100 * config['max_accuracy_drop']:g} points of λ2 = 0."
        ),
        (
            f"- Hub: τ_S was pushed to a LocalHub on loopback as `{hub['repo_id']}`, **commit `{hub['commit_sha']}`**, "
            f"and pulled back by name with `TaskVector.from_pretrained` (commit `{hub['pulled_commit']}`, largest "
            f"difference {hub['max_abs_difference']:.1g}); {hub['num_parameters']:,} parameters, norm {hub['norm']:.3f}."
        ),
        "- Seeds: " + ", ".join(f"{k} {v}" for k, v in results["seeds"].items()) + ".",
    ]


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
            f"taken from: {source['twins_identical_to_labelled_model']}):"
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
            f"{_fmt(target['cosine_tau_source_explainability_vs_tau_target'])}; ‖τ_T‖ = {target['norm_tau_target']:.3f}; "
            f"RMS of the Kernel SHAP labels of the target's training split (for θ*_T only): {target['labels_rms']:.3f}."
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
        f"![heatmaps of {name}](heatmaps_{name}.png)",
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
        lines.append(f"- **{target['domain']}** ({target['role']}): {_verdict(target, transfer_summary(target))}")
    definitions = DEFINITIONS.format(
        eval_n=config["eval_num_samples"],
        k=config["top_k"],
        threads=config["num_threads"],
        value=config.get("shap_value", "logit"),
    )
    lines += ["", "## Definitions", "", definitions, "", *_setup_section(results)]
    for target in results["targets"]:
        lines += _target_section(results, target)
    timings = [[stage, f"{seconds:.1f}"] for stage, seconds in results["timings_seconds"].items()]
    lines += [
        "## λ sweep",
        "",
        "![accuracy against E-RMSE over λ2](lambda_sweep.png)",
        "",
        "## Timings",
        "",
        markdown_table(["Stage", "Seconds"], timings),
        "",
        "## What we tried",
        "",
    ]
    if results.get("default_config"):
        lines.append(DEVELOPMENT_NOTES)
    else:
        lines.append("This run does not use the default configuration; `results.json` has its settings.")
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
    Write `results.json`, `report.md`, `heatmaps_<target>.png` and `lambda_sweep.png` to `output_dir`.

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
    for target in results["targets"]:
        target["summary"] = transfer_summary(target)
        name = target["domain"]
        plot_heatmaps(heatmaps[name], output_dir / f"heatmaps_{name}.png",
                      f"{name} ({target['role']}): test images, explained class = label")  # fmt: skip
    plot_lambda_sweep(results["targets"], output_dir / "lambda_sweep.png")
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2, ensure_ascii=False) + "\n")
    report = output_dir / "report.md"
    report.write_text(build_report(results))
    logger.info("report written to %s", report)
    return report


def format_summary(results: dict) -> str:
    """The CLI's closing lines: per target the chosen λ2 and its test figures, the Hub commit, the wall time."""
    hub = results["hub"]
    lines = [f"report: {results.get('report', '')}", f"hub: {hub['repo_id']} @ {hub['commit_sha']}"]
    for target in results["targets"]:
        s = transfer_summary(target)
        lines.append(f"{target['domain']} ({target['role']}): λ2 = {s['lam']:g}, test E-RMSE "
                     f"{100 * s['relative_e_rmse']:+.1f}%, accuracy {100 * s['accuracy_change']:+.1f} pts")  # fmt: skip
    lines.append(f"wall time: {results['timings_seconds']['total']:.1f} s")
    return "\n".join(lines)


__all__ = [
    "build_report",
    "evaluate_model",
    "explanation_metrics",
    "format_summary",
    "forward_attributions",
    "illustrated_lambda",
    "kernel_shap_values",
    "markdown_table",
    "plot_heatmaps",
    "plot_lambda_sweep",
    "select_lambda",
    "target_table",
    "transfer_summary",
    "write_report",
]
