"""The equivalent Kernel SHAP budget of a one-pass explanation: how many coalitions Kernel SHAP needs to be as close to
the reference values as the model's own attributions are (the figure FastSHAP and ViT-Shapley report).

The rule ([`interpolate_budget`]): Kernel SHAP of the same model is run at a ladder of budgets `N_1 < ... < N_k` with
another seed than the reference, and its E-RMSE against the reference is measured at each rung. The equivalent budget
of an explanation with E-RMSE `e` is found at the first rung `i` whose Kernel SHAP E-RMSE is `<= e`, by interpolating
linearly in `log N` between rungs `i - 1` and `i`:

    log N = log N_{i-1} + (e_{i-1} - e) / (e_{i-1} - e_i) * (log N_i - log N_{i-1}).

When even the smallest rung is closer to the reference than the explanation (`e > e_1`), the budget is only known to
be *below* `N_1` (`bound="below"`: no figure is invented; Kernel SHAP accepts no budget under `2 M`); when no rung
reaches `e`, it is *above* `N_k` (`bound="above"`).

The small rungs are meant to be small: near `2 M` coalitions the least-squares system is often rank deficient, and
the solver's minimum-norm solutions are part of what the ladder measures. The solver's warning about it is therefore
silenced while the ladder runs (the demo would otherwise print it for every small rung).
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from ..attribution.kernel_shap import min_num_samples
from ._checks import check_positive_int
from .agreement import e_rmse
from .protocol import forward_attributions, kernel_shap_values

__all__ = ["default_budget_ladder", "equivalent_kernel_shap_budget", "interpolate_budget"]


@contextlib.contextmanager
def _small_budgets_expected():
    """Silence the solver's rank-deficiency warning (expected on the ladder's small rungs) for the duration."""
    solver_logger = logging.getLogger("hf_explvec.attribution.solver")
    level = solver_logger.level
    solver_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        solver_logger.setLevel(level)


def default_budget_ladder(num_patches: int, largest: int = 500) -> tuple[int, ...]:
    r"""
    A ladder of Kernel SHAP budgets for `num_patches` players: `2 M, 4 M, 8 M, ...` (doubling from the smallest
    budget Kernel SHAP accepts) below `largest`, plus 150 (the budget the paper compares with) when it lies in that
    range, plus `largest` itself.

    Args:
        num_patches (`int`): M, the number of patches (players).
        largest (`int`, *optional*, defaults to 500): the top rung (e.g. the reference's budget: there Kernel SHAP
            with another seed gives the reference's own noise floor).

    Returns:
        `tuple[int, ...]`: increasing budgets, each `>= 2 M`.

    Raises:
        `ValueError`: `largest < 2 M`, or non-positive arguments.
    """
    num_patches, largest = check_positive_int(num_patches, "num_patches"), check_positive_int(largest, "largest")
    smallest = min_num_samples(num_patches)
    if largest < smallest:
        raise ValueError(f"largest={largest} is below 2 M = {smallest}, the smallest budget Kernel SHAP accepts.")
    rungs, n = {largest}, smallest
    while n < largest:
        rungs.add(n)
        n *= 2
    if smallest <= 150 <= largest:
        rungs.add(150)
    return tuple(sorted(rungs))


def interpolate_budget(ladder: list[dict], error: float, key: str = "e_rmse") -> dict:
    r"""
    The Kernel SHAP budget whose error equals `error`, by the rule of the module docstring (linear in `log N` between
    the first rung at or below `error` and the rung before it).

    Args:
        ladder (`list[dict]`): one entry per budget, with `num_samples` and `key`, in any order (sorted here).
        error (`float`): the explanation's error (same metric as `key`, same images and reference).
        key (`str`, *optional*, defaults to `"e_rmse"`): the metric compared, e.g. `"e_rmse_l2"`.

    Returns:
        `dict`: `num_samples` (`float`, or `None` when outside the ladder), `bound` (`"within"`, `"below"`: fewer
        than the smallest rung, `"above"`: more than the largest), `smallest` and `largest` (the ladder's ends).

    Raises:
        `ValueError`: an empty ladder, an entry without `num_samples` or `key`, a repeated budget, a non-finite or
        negative `error`.
    """
    if not ladder:
        raise ValueError("the ladder is empty: measure Kernel SHAP at one budget at least.")
    for entry in ladder:
        if "num_samples" not in entry or key not in entry:
            raise ValueError(f"every ladder entry needs num_samples and {key!r}; got {entry}.")
    rungs = sorted(ladder, key=lambda entry: entry["num_samples"])
    budgets = [entry["num_samples"] for entry in rungs]
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"the ladder repeats a budget: {budgets}.")
    error = float(error)
    if not math.isfinite(error) or error < 0:
        raise ValueError(f"error must be a finite number >= 0, got {error}.")
    out = {"smallest": budgets[0], "largest": budgets[-1]}
    first = next((i for i, entry in enumerate(rungs) if entry[key] <= error), None)
    if first is None:
        return {"num_samples": None, "bound": "above", **out}
    if first == 0:
        if rungs[0][key] == error:
            return {"num_samples": float(budgets[0]), "bound": "within", **out}
        return {"num_samples": None, "bound": "below", **out}
    (n0, e0), (n1, e1) = (budgets[first - 1], rungs[first - 1][key]), (budgets[first], rungs[first][key])
    share = (e0 - error) / (e0 - e1)  # e0 > error >= e1, so 0 < share <= 1
    log_n = math.log(n0) + share * (math.log(n1) - math.log(n0))
    return {"num_samples": math.exp(log_n), "bound": "within", **out}


class _FirstImages:
    """The first `count` images of a split (what [`kernel_shap_values`] reads: pixel values, labels, length)."""

    def __init__(self, split, count: int):
        self.pixel_values, self.labels = split.pixel_values[:count], split.labels[:count]

    def __len__(self) -> int:
        return len(self.labels)


def equivalent_kernel_shap_budget(
    model,
    split,
    budgets,
    *,
    seed: int,
    explained: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    reference_num_samples: int = 500,
    reference_seed: int | None = None,
    num_images: int | None = None,
    batch_size: int = 256,
    value: str = "logit",
) -> dict:
    r"""
    The Kernel SHAP budget that matches `model`'s one-pass explanation: Kernel SHAP of `model` at each budget of
    `budgets` (seed `seed`) against the reference values (another seed), and the budget whose E-RMSE equals the
    explanation's, by [`interpolate_budget`], for the raw E-RMSE and for the scale-free E-RMSE (L2).

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the explained model (put in eval mode).
        split: `pixel_values` `(N, 3, H, W)` and `labels` `(N,)` (the explained class), as in
            [`~hf_explvec.evaluation.protocol`].
        budgets (sequence of `int`): the ladder, e.g. [`default_budget_ladder`]; each at least `2 M`.
        seed (`int`): the ladder's Kernel SHAP seed (see [`kernel_shap_values`]).
        explained (`torch.Tensor` of shape `(N, M)`, *optional*): the one-pass explanations for the label class;
            by default `model`'s own attributions ([`forward_attributions`]).
        reference (`torch.Tensor` of shape `(N, M)`, *optional*): Kernel SHAP values of `model` to compare with; by
            default computed with `reference_num_samples` coalitions and `reference_seed`.
        reference_num_samples (`int`, *optional*, defaults to 500): the reference's budget when it is computed here.
        reference_seed (`int`, *optional*): the reference's seed when it is computed here (defaults to `seed + 1`);
            it must differ from `seed`, or the top rung would copy the reference.
        num_images (`int`, *optional*): use only the first `num_images` images of `split` (and rows of `explained`
            and `reference`); by default all.
        batch_size (`int`, *optional*, defaults to 256): coalitions per forward pass.
        value (`str`, *optional*, defaults to `"logit"`): the explained score (as for the reference).

    Returns:
        `dict`: `num_images`; `one_pass_e_rmse` and `one_pass_e_rmse_l2` (on those images); `ladder` (per budget
        `num_samples`, `e_rmse`, `e_rmse_l2`, `seconds_per_image`); `equivalent` and `equivalent_l2` (the results of
        [`interpolate_budget`] for each metric).

    Raises:
        `ValueError`: an empty split or ladder, a budget below `2 M` or repeated, `explained` / `reference` of another
        shape than `(N, M)`, or `reference_seed == seed`.
    """
    if len(split) == 0:
        raise ValueError("the split holds no images.")
    if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__"):
        raise TypeError(f"budgets must be a sequence of ints, got {type(budgets).__name__}: {budgets!r}.")
    budgets = [check_positive_int(n, f"budgets[{i}]") for i, n in enumerate(budgets)]
    if not budgets:
        raise ValueError("budgets is empty: give at least one Kernel SHAP budget.")
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"budgets must not repeat a value, got {budgets}.")
    vision = model.config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    too_small = [n for n in budgets if n < min_num_samples(num_patches)]
    if too_small:
        raise ValueError(f"budgets {too_small} are below 2 M = {min_num_samples(num_patches)}, the smallest budget "
                         f"Kernel SHAP accepts for M = {num_patches} patches.")  # fmt: skip
    reference_seed = seed + 1 if reference_seed is None else reference_seed
    if reference_seed == seed:
        raise ValueError(f"reference_seed must differ from seed ({seed}): the ladder must not reuse its coalitions.")
    count = len(split) if num_images is None else min(check_positive_int(num_images, "num_images"), len(split))
    subset = _FirstImages(split, count)
    for name, tensor in (("explained", explained), ("reference", reference)):
        if tensor is not None and tuple(tensor.shape) != (len(split), num_patches):
            raise ValueError(f"{name} must have shape {(len(split), num_patches)} (images, patches), got "
                             f"{tuple(tensor.shape)}.")  # fmt: skip
    if explained is None:
        _, explained, _ = forward_attributions(model, subset)
    if reference is None:
        reference, _ = kernel_shap_values(model, subset, reference_num_samples, reference_seed, batch_size, value=value)
    explained, reference = explained[:count].float().cpu(), reference[:count].float().cpu()
    ladder = []
    for n in sorted(budgets):
        with _small_budgets_expected():
            values, seconds = kernel_shap_values(model, subset, n, seed, batch_size, value=value)
        errors = {"e_rmse": e_rmse(values, reference), "e_rmse_l2": e_rmse(values, reference, normalize="l2")}
        ladder.append({"num_samples": n, **errors, "seconds_per_image": seconds})
    one_pass, one_pass_l2 = e_rmse(explained, reference), e_rmse(explained, reference, normalize="l2")
    return {
        "num_images": count,
        "one_pass_e_rmse": one_pass,
        "one_pass_e_rmse_l2": one_pass_l2,
        "ladder": ladder,
        "equivalent": interpolate_budget(ladder, one_pass, "e_rmse"),
        "equivalent_l2": interpolate_budget(ladder, one_pass_l2, "e_rmse_l2"),
    }
