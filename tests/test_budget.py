"""The equivalent Kernel SHAP budget (hf_explvec.evaluation.budget): the log-N interpolation rule with known answers,
honest bounds outside the ladder, the default ladder, and the measured ladder on a tiny self-explaining CLIP."""

import logging
import math

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.evaluation import e_rmse, kernel_shap_values
from hf_explvec.evaluation.budget import default_budget_ladder, equivalent_kernel_shap_budget, interpolate_budget
from hf_explvec.testing import tiny_clip_model


def ladder(*pairs, key="e_rmse"):
    return [{"num_samples": n, key: e} for n, e in pairs]


# ------------------------------------------------------------------------------------------- the interpolation rule
def test_interpolation_is_linear_in_log_n_between_the_rungs_around_the_error():
    rungs = ladder((32, 1.0), (64, 0.5), (128, 0.25))
    assert interpolate_budget(rungs, 0.5)["num_samples"] == pytest.approx(64)
    assert interpolate_budget(rungs, 0.75)["num_samples"] == pytest.approx(math.sqrt(32 * 64))  # half way in log N
    assert interpolate_budget(rungs, 0.3)["num_samples"] == pytest.approx(64 * 2 ** (0.2 / 0.25))
    assert interpolate_budget(rungs, 1.0) == {"num_samples": 32.0, "bound": "within", "smallest": 32, "largest": 128}
    assert interpolate_budget(list(reversed(rungs)), 0.75)["num_samples"] == pytest.approx(math.sqrt(32 * 64))


def test_outside_the_ladder_only_a_bound_is_reported():
    rungs = ladder((32, 1.0), (64, 0.5), (128, 0.25))
    assert interpolate_budget(rungs, 3.0) == {"num_samples": None, "bound": "below", "smallest": 32, "largest": 128}
    assert interpolate_budget(rungs, 0.1) == {"num_samples": None, "bound": "above", "smallest": 32, "largest": 128}


def test_a_non_monotone_ladder_uses_the_first_rung_at_or_below_the_error():
    rungs = ladder((32, 1.0), (64, 1.2), (128, 0.4))
    assert interpolate_budget(rungs, 0.8)["num_samples"] == pytest.approx(math.sqrt(64 * 128))
    assert interpolate_budget(ladder((32, 0.2), (64, 0.5), key="e_rmse_l2"), 0.3, "e_rmse_l2")["bound"] == "below"
    assert interpolate_budget(ladder((32, 0.4), (64, 0.2), key="e_rmse_l2"), 0.3, "e_rmse_l2")["bound"] == "within"


def test_interpolation_rejects_bad_ladders_and_errors():
    with pytest.raises(ValueError, match="empty"):
        interpolate_budget([], 1.0)
    with pytest.raises(ValueError, match="e_rmse_l2"):
        interpolate_budget(ladder((32, 1.0)), 1.0, "e_rmse_l2")
    with pytest.raises(ValueError, match="repeats"):
        interpolate_budget(ladder((32, 1.0), (32, 0.5)), 1.0)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="error"):
            interpolate_budget(ladder((32, 1.0)), bad)


def test_default_ladder_doubles_from_two_m_and_holds_150_and_the_top():
    assert default_budget_ladder(16) == (32, 64, 128, 150, 256, 500)
    assert default_budget_ladder(16, 96) == (32, 64, 96)
    assert default_budget_ladder(49, 98) == (98,)
    with pytest.raises(ValueError, match="2 M = 98"):
        default_budget_ladder(49, 64)


# ---------------------------------------------------------------------------------------------- measured on a model
class Split:
    def __init__(self, count=6, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.arange(count) % 3

    def __len__(self):
        return len(self.labels)


@pytest.fixture(scope="module")
def model():
    clip = tiny_clip_model(seed=0)
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return SelfExplainingCLIPVision.from_clip(clip, ["a", "b", "c"], class_embeddings=embeddings).eval()


@pytest.fixture(scope="module")
def reference(model):
    return kernel_shap_values(model, Split(), 256, seed=7)[0]


def test_the_ladder_is_kernel_shap_at_each_budget_against_the_reference(model, reference):
    split = Split()
    result = equivalent_kernel_shap_budget(model, split, (128, 32, 64), seed=3, reference=reference, batch_size=64)
    assert [rung["num_samples"] for rung in result["ladder"]] == [32, 64, 128]
    values, _ = kernel_shap_values(model, split, 64, seed=3, batch_size=64)
    assert result["ladder"][1]["e_rmse"] == pytest.approx(e_rmse(values, reference))
    assert result["ladder"][1]["e_rmse_l2"] == pytest.approx(e_rmse(values, reference, normalize="l2"))
    assert result["ladder"][0]["e_rmse"] > result["ladder"][-1]["e_rmse"] > 0  # more coalitions, closer
    own = model(split.pixel_values).patch_attributions[torch.arange(len(split)), split.labels]
    assert result["one_pass_e_rmse"] == pytest.approx(e_rmse(own, reference), rel=1e-5)
    assert result["num_images"] == len(split) and result["equivalent"]["smallest"] == 32
    for key, equivalent in (("e_rmse", result["equivalent"]), ("e_rmse_l2", result["equivalent_l2"])):
        assert equivalent == interpolate_budget(result["ladder"], result[f"one_pass_{key}"], key)


def test_known_explanations_land_where_they_should(model, reference):
    split, budgets = Split(), (32, 64, 128)
    noisy = reference + 50 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    assert equivalent_kernel_shap_budget(model, split, budgets, seed=3, explained=noisy,
                                         reference=reference)["equivalent"]["bound"] == "below"  # fmt: skip
    exact = equivalent_kernel_shap_budget(model, split, budgets, seed=3, explained=reference, reference=reference)
    assert exact["one_pass_e_rmse"] == 0 and exact["equivalent"] == {"num_samples": None, "bound": "above",
                                                                      "smallest": 32, "largest": 128}  # fmt: skip
    kernel_64, _ = kernel_shap_values(model, split, 64, seed=3)  # Kernel SHAP-64 itself, as an explanation
    same = equivalent_kernel_shap_budget(model, split, budgets, seed=3, explained=kernel_64, reference=reference)
    assert same["equivalent"]["num_samples"] == pytest.approx(64)


def test_reference_computed_with_another_seed_and_a_subset_of_images(model):
    split = Split()
    result = equivalent_kernel_shap_budget(model, split, (32, 64), seed=3, reference_num_samples=128, num_images=2)
    assert result["num_images"] == 2
    subset = Split(2)
    subset.pixel_values, subset.labels = split.pixel_values[:2], split.labels[:2]
    reference, _ = kernel_shap_values(model, subset, 128, seed=4)  # reference_seed defaults to seed + 1
    values, _ = kernel_shap_values(model, subset, 32, seed=3)
    assert result["ladder"][0]["e_rmse"] == pytest.approx(e_rmse(values, reference))


def test_bad_input_is_named(model, reference):
    split = Split()
    with pytest.raises(ValueError, match="below 2 M = 32"):
        equivalent_kernel_shap_budget(model, split, (16, 64), seed=3, reference=reference)
    with pytest.raises(ValueError, match="reference_seed"):
        equivalent_kernel_shap_budget(model, split, (32,), seed=3, reference_seed=3)
    with pytest.raises(ValueError, match="repeat"):
        equivalent_kernel_shap_budget(model, split, (32, 32), seed=3, reference=reference)
    with pytest.raises(ValueError, match="empty"):
        equivalent_kernel_shap_budget(model, split, (), seed=3, reference=reference)
    with pytest.raises(TypeError, match="budgets"):
        equivalent_kernel_shap_budget(model, split, 64, seed=3, reference=reference)
    with pytest.raises(ValueError, match=r"reference must have shape \(6, 16\)"):
        equivalent_kernel_shap_budget(model, split, (32,), seed=3, reference=reference[:3])
    with pytest.raises(ValueError, match="no images"):
        equivalent_kernel_shap_budget(model, Split(0), (32,), seed=3)


def test_small_rungs_do_not_warn_about_rank_deficiency_but_plain_kernel_shap_still_does(model, reference, caplog):
    """The ladder's small rungs are rank deficient by design: the demo must not print the solver's warning for each."""
    split = Split()
    solver_logger = logging.getLogger("hf_explvec.attribution.solver")
    with caplog.at_level(logging.WARNING, logger="hf_explvec.attribution.solver"):
        kernel_shap_values(model, split, 32, seed=3, batch_size=64)
    assert "rank deficient" in caplog.text  # the case does occur at 2 M coalitions
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_explvec.attribution.solver"):
        equivalent_kernel_shap_budget(model, split, (32,), seed=3, reference=reference, batch_size=64)
        assert solver_logger.level == logging.WARNING  # restored after the ladder
    assert "rank deficient" not in caplog.text
