"""The demo's figures: heatmap overlays and the λ-sweep plot of the report, and the contact sheet of the domains.

Figures use `matplotlib.figure.Figure` (not pyplot), so the caller's backend and open figures are left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .._validation import check_int
from .domain_images import DOMAINS, generate_domain, get_domain

__all__ = ["outline_patches", "plot_heatmaps", "plot_lambda_sweep", "save_contact_sheet"]


def outline_patches(axis, mask, grid: int, patch: int, colour: str) -> None:
    r"""
    Outline the patches of `mask` on an image axis (the evidence of a domain image).

    Args:
        axis (`matplotlib.axes.Axes`): an axis showing an image of `grid * patch` pixels a side.
        mask (`np.ndarray` or `torch.Tensor` of shape `(grid * grid,)`, bool): the patches to outline, row-major.
        grid (`int`): patches per side. patch (`int`): pixels per patch side.
        colour (`str`): the matplotlib edge colour.
    """
    from matplotlib.patches import Rectangle

    for cell in np.flatnonzero(np.asarray(mask)):
        top, left = divmod(int(cell), grid)
        axis.add_patch(Rectangle((left * patch - 0.5, top * patch - 0.5), patch, patch, fill=False, ec=colour))


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
            outline_patches(axis, heatmaps["evidence"][row], grid, patch, "lime")
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


def plot_lambda_sweep(targets: list[dict], path: str | os.PathLike, max_accuracy_drop: float = 0.04) -> None:
    r"""
    Accuracy against E-RMSE over the λ2 grid, one panel per target, validation (circles) and test (squares), λ2
    written next to each point, the chosen λ2 circled, the self-explaining model trained on the target as triangles,
    and the validation accuracy floor of the λ rule as a dotted line.

    Args:
        targets (`list[dict]`): `results["targets"]`.
        path (`str` or `os.PathLike`): the PNG to write.
        max_accuracy_drop (`float`, *optional*, defaults to 0.04): the run's λ-rule tolerance
            (`results["config"]["max_accuracy_drop"]`): the floor is drawn that far below λ2 = 0.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(targets), 4.4))
    axes = figure.subplots(1, len(targets), squeeze=False)[0]
    for axis, target in zip(axes, targets, strict=True):
        for split, marker, colour in (("validation", "o", "tab:blue"), ("test", "s", "tab:orange")):
            sweep = target["sweep"][split]
            x = [e["e_rmse"] for e in sweep]
            y = [100 * e["accuracy"] for e in sweep]
            axis.plot(x, y, marker=marker, color=colour, label=f"θ_T + λ2·τ_S ({split})")
            for entry, xi, yi in zip(sweep, x, y, strict=True):
                axis.annotate(f"{entry['lam']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if entry["lam"] == target["chosen_lam"]:
                    axis.scatter([xi], [yi], s=180, facecolors="none", edgecolors="red", linewidths=1.5)
            direct = target["direct"][split]
            axis.scatter([direct["e_rmse"]], [100 * direct["accuracy"]], marker="^", s=70, color=colour,
                         edgecolors="black", label=f"self-explaining θ*_T ({split})")  # fmt: skip
        base = next(e for e in target["sweep"]["validation"] if e["lam"] == 0.0)
        axis.axhline(100 * (base["accuracy"] - max_accuracy_drop), color="tab:blue", linestyle=":", linewidth=1,
                     label="validation accuracy floor of the λ rule")  # fmt: skip
        axis.set_title(f"{target['domain']} ({target['role']}); red circle: chosen λ2", fontsize=9)
        axis.set_xlabel("E-RMSE vs the model's own Kernel SHAP (lower is better)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def save_contact_sheet(
    path, names: Sequence[str] | None = None, per_domain: int = 8, *, split: str = "train", **kwargs
) -> None:
    r"""
    Save a PNG of examples, one row per domain, with the evidence patches outlined in red and the class as title.

    Args:
        path (`str` or `os.PathLike`): where to write the PNG.
        names (`Sequence[str]`, *optional*): domains to show; all of [`DOMAINS`] by default.
        per_domain (`int`, defaults to 8): examples per row.
        split (`str`, defaults to `"train"`), **kwargs (`image_size`, `patch_size`, `seed`): see [`generate_domain`].
    """
    # Not pyplot: the caller's backend and open figures are left alone.
    from matplotlib.figure import Figure

    names = list(DOMAINS) if names is None else [get_domain(name).name for name in names]
    per_domain = check_int("per_domain", per_domain, 1)
    figure = Figure(figsize=(1.6 * per_domain, 1.9 * len(names)))
    axes = figure.subplots(len(names), per_domain, squeeze=False)
    for row, name in enumerate(names):
        arrays = generate_domain(name, split, per_domain, **kwargs)
        grid = round(np.sqrt(arrays.evidence.shape[1]))
        patch = arrays.images.shape[1] // grid
        for column, axis in enumerate(axes[row]):
            axis.imshow(arrays.images[column], interpolation="nearest")
            outline_patches(axis, arrays.evidence[column], grid, patch, "red")
            axis.set_title(arrays.class_names[arrays.labels[column]], fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
