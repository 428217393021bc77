"""The λ2 rule robust to small validation sets (hf_explvec.evaluation.protocol): Tango's score upper bound on the paired
accuracy drop (hand-computed cases, the Wilson case, zero discordant pairs, monotone in the confidence and in n, never
below the observed drop), select_lambda with a confidence and with metric="e_rmse_l2", the old rule unchanged, and
typed errors."""

import copy
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from hf_explvec.evaluation import accuracy_drop_bound, add_accuracy_drop_bounds, per_image_correct, select_lambda
from hf_explvec.evaluation.protocol import eligible_lambdas

Z_ONE = NormalDist().cdf(1.0)  # the confidence whose normal quantile is 1: hand computation stays in rationals


def table(n, lost=0, gained=0, both=None):
    """(correct_at_lam, correct_at_zero) for n images: `lost` right only at λ = 0, `gained` right only at λ, `both`
    right at both (defaults to the rest), the others wrong at both."""
    both = n - lost - gained if both is None else both
    neither = n - lost - gained - both
    at_zero = [1] * lost + [0] * gained + [1] * both + [0] * neither
    at_lam = [0] * lost + [1] * gained + [1] * both + [0] * neither
    return at_lam, at_zero


def wilson_upper(successes, n, z):
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + half) / (1 + z * z / n)


# ---------------------------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize(
    ("lost", "gained", "expected"),
    [(0, 0, 0.2), (1, 0, 0.5), (1, 1, math.sqrt(0.12)), (4, 0, 1.0)],
    ids=["no discordant pair: z²/(n+z²)", "one lost: (4Δ−1)² = 4Δ(1−Δ)", "one lost one gained", "all lost"],
)
def test_bound_matches_hand_computed_cases_with_z_equal_to_one(lost, gained, expected):
    # n = 4, z = 1. One lost: Z(Δ) = (1 − 4Δ)/sqrt(4Δ(1 − Δ)) = −1  ⇒  20Δ² − 12Δ + 1 = 0  ⇒  Δ = 0.5.
    # One lost, one gained: q = (5Δ² − Δ)/2 at Z = −1, which with the MLE of q gives 1600Δ⁴ = 192Δ², Δ² = 0.12.
    assert accuracy_drop_bound(*table(4, lost, gained), confidence=Z_ONE) == pytest.approx(expected, abs=1e-9)


def test_bound_without_gained_images_is_the_wilson_score_bound():
    z = NormalDist().inv_cdf(0.9)
    for n, lost in ((20, 3), (7, 1), (50, 2), (12, 11)):
        assert accuracy_drop_bound(*table(n, lost)) == pytest.approx(wilson_upper(lost, n, z), abs=1e-9)


def test_zero_discordant_pairs_give_a_positive_bound_that_shrinks_with_n():
    z = NormalDist().inv_cdf(0.9)
    for n in (5, 10, 100):
        all_right, half_right = table(n), table(n, both=n // 2)
        expected = z * z / (n + z * z)
        assert expected > 0 and accuracy_drop_bound(*all_right) == pytest.approx(expected, abs=1e-9)
        assert accuracy_drop_bound(*half_right) == pytest.approx(expected, abs=1e-9)
    assert accuracy_drop_bound(*table(10)) > accuracy_drop_bound(*table(100)) > accuracy_drop_bound(*table(1000))


def test_bound_is_monotone_in_the_confidence_and_never_below_the_observed_drop():
    levels = (0.55, 0.7, 0.8, 0.9, 0.95, 0.99)
    for n, lost, gained in ((10, 2, 1), (30, 0, 5), (25, 4, 0), (8, 3, 3), (40, 1, 9)):
        observed = (lost - gained) / n
        bounds = [accuracy_drop_bound(*table(n, lost, gained), confidence=c) for c in levels]
        assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False)), bounds
        assert bounds[0] > observed and bounds[-1] <= 1.0
    # a clear gain has a negative bound; a median-level confidence bounds below the estimate
    assert accuracy_drop_bound(*table(40, 0, 20)) < 0
    assert accuracy_drop_bound(*table(10, 2, 1), confidence=0.3) < 0.1


def test_bound_is_deterministic_and_accepts_bools_tensors_and_arrays():
    at_lam, at_zero = table(12, 2, 1, both=5)
    expected = accuracy_drop_bound(at_lam, at_zero)
    assert accuracy_drop_bound(at_lam, at_zero) == expected
    assert accuracy_drop_bound(torch.tensor(at_lam).bool(), torch.tensor(at_zero).bool()) == expected
    assert accuracy_drop_bound(np.array(at_lam, dtype=float), np.array(at_zero, dtype=np.int64)) == expected
    # the order of the images does not matter, the pairing does
    order = np.random.default_rng(0).permutation(12)
    assert accuracy_drop_bound(np.array(at_lam)[order], np.array(at_zero)[order]) == pytest.approx(expected, abs=1e-12)
    assert accuracy_drop_bound(at_lam, at_zero[::-1]) != pytest.approx(expected)


@pytest.mark.parametrize(
    ("at_lam", "at_zero", "confidence", "error", "message"),
    [
        ([1, 0], [1, 0], 0.0, ValueError, r"confidence.*between 0 and 1, got 0.0"),
        ([1, 0], [1, 0], 1.0, ValueError, r"confidence.*between 0 and 1, got 1.0"),
        ([1, 0], [1, 0], float("nan"), ValueError, r"confidence.*between 0 and 1, got nan"),
        ([1, 0], [1, 0], "0.9", TypeError, r"confidence.*got str"),
        ([1, 0], [1, 0], True, TypeError, r"confidence.*got bool"),
        ([1, 0, 1], [1, 0], 0.9, ValueError, r"same images, got 3 and 2 values"),
        ([1, 0.5], [1, 0], 0.9, ValueError, r"correct_at_lam.*only 0 and 1.*0.5 at index 1"),
        ([1, 0], [2, 0], 0.9, ValueError, r"correct_at_zero.*only 0 and 1.*2 at index 0"),
        ([], [], 0.9, ValueError, r"correct_at_lam.*empty"),
        ([[1, 0]], [[1, 0]], 0.9, ValueError, r"correct_at_lam.*one-dimensional"),
        (["a", "b"], [1, 0], 0.9, TypeError, r"correct_at_lam"),
    ],
    ids=["conf 0", "conf 1", "conf nan", "conf str", "conf bool", "lengths", "half", "two", "empty", "2-D", "text"],
)
def test_bound_refuses_bad_input_with_typed_errors(at_lam, at_zero, confidence, error, message):
    with pytest.raises(error, match=message):
        accuracy_drop_bound(at_lam, at_zero, confidence)


def test_per_image_correct_reads_argmax_against_labels():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    assert per_image_correct(logits, torch.tensor([0, 0, 0])).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="labels"):
        per_image_correct(logits, torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------ the λ2 rule
def sweep(*entries):
    return [{"lam": lam, "accuracy": acc, "e_rmse": err} for lam, acc, err in entries]


def bounded_sweep(n=50):
    """λ2 = 0.5 loses 2 of 50 images (drop 0.04, within the tolerance; bound ≈ 0.08, not); λ2 = 0.25 changes nothing
    (bound z²/(n + z²) ≈ 0.032); 0.5 has the lowest E-RMSE, then 0.25."""
    at_zero = [1] * 40 + [0] * (n - 40)
    at_half = [0, 0] + at_zero[2:]
    correct = {0.0: at_zero, 0.25: list(at_zero), 0.5: at_half}
    figures = ((0.0, at_zero, 3.0, 0.9), (0.25, at_zero, 2.5, 0.95), (0.5, at_half, 2.0, 0.8))
    rows = [{"lam": lam, "accuracy": sum(c) / n, "e_rmse": err, "e_rmse_l2": l2} for lam, c, err, l2 in figures]
    return rows, correct


def test_confidence_excludes_a_lambda_whose_drop_is_within_the_tolerance_but_whose_bound_is_not():
    rows, correct = bounded_sweep()
    assert select_lambda(rows) == 0.5  # observed drop 0.04 = the tolerance
    bounded = add_accuracy_drop_bounds(rows, correct, confidence=0.9)
    by_lam = {entry["lam"]: entry["accuracy_drop_bound"] for entry in bounded}
    assert by_lam[0.5] > 0.04 >= by_lam[0.25] and by_lam[0.25] > 0
    assert select_lambda(bounded, confidence=0.9) == 0.25
    assert eligible_lambdas(bounded, 0.04, confidence=0.9) == [0.0, 0.25]
    assert select_lambda(bounded) == 0.5  # without a confidence the bounds are ignored
    assert select_lambda(bounded, max_accuracy_drop=0.1, confidence=0.9) == 0.5  # a looser tolerance admits it


def test_confidence_keeps_lambda_zero_even_when_its_own_bound_exceeds_the_tolerance():
    rows, correct = bounded_sweep()
    bounded = add_accuracy_drop_bounds(rows, correct, confidence=0.99)  # at 0.99 even λ2 = 0's bound is > 0.04
    assert bounded[0]["accuracy_drop_bound"] > 0.04 and bounded[1]["accuracy_drop_bound"] > 0.04
    assert select_lambda(bounded, confidence=0.99) == 0.0


def test_more_validation_images_let_the_same_observed_drop_through():
    rows = sweep((0.0, 0.8, 3.0), (0.5, 0.78, 2.0))  # a drop of 2 points, half the tolerance
    small_zero = [1] * 40 + [0] * 10
    small = add_accuracy_drop_bounds(rows, {0.0: small_zero, 0.5: [0] + small_zero[1:]})
    large_zero = [1] * 800 + [0] * 200
    large = add_accuracy_drop_bounds(rows, {0.0: large_zero, 0.5: [0] * 20 + large_zero[20:]})
    assert select_lambda(small, confidence=0.9) == 0.0
    assert select_lambda(large, confidence=0.9) == 0.5


def test_metric_e_rmse_l2_picks_by_that_key():
    rows, _ = bounded_sweep()
    loose = 0.1
    assert select_lambda(rows, loose) == 0.5
    assert select_lambda(rows, loose, metric="e_rmse_l2") == 0.5
    rows[2]["e_rmse_l2"] = 1.0  # now the raw and the scale-free E-RMSE disagree
    assert select_lambda(rows, loose, metric="e_rmse") == 0.5
    assert select_lambda(rows, loose, metric="e_rmse_l2") == 0.0
    rows[1]["e_rmse_l2"] = 0.9  # a tie with λ2 = 0 goes to the smaller λ2
    assert select_lambda(rows, loose, metric="e_rmse_l2") == 0.0
    rows[1]["e_rmse_l2"] = 0.5
    assert select_lambda(rows, loose, metric="e_rmse_l2") == 0.25


def test_ties_go_to_the_smaller_lambda_with_a_confidence():
    rows = [{"lam": lam, "accuracy": 0.9, "e_rmse": 1.0, "accuracy_drop_bound": 0.01} for lam in (0.5, 0.25)]
    rows.append({"lam": 0.0, "accuracy": 0.9, "e_rmse": 1.5})  # λ2 = 0 needs no bound
    assert select_lambda(rows, confidence=0.9) == 0.25


def test_old_behaviour_is_unchanged_without_a_confidence():
    entries = sweep((0.0, 0.90, 3.0), (0.25, 0.89, 2.7), (0.5, 0.87, 2.2), (1.0, 0.60, 1.0))
    for tolerance, expected in ((0.04, 0.5), (0.02, 0.25), (0.5, 1.0)):
        assert select_lambda(entries, tolerance) == expected
        assert select_lambda(entries, tolerance, metric="e_rmse", confidence=None) == expected
    assert eligible_lambdas(entries, 0.04) == [0.0, 0.25, 0.5]
    assert select_lambda(sweep((0.0, 0.7, 1.0), (0.5, 0.7, 1.2), (1.0, 0.5, 0.4))) == 0.0
    assert select_lambda(sweep((0.0, 0.7, 1.0), (0.5, 0.7, 0.8), (0.25, 0.7, 0.8))) == 0.25
    assert select_lambda(sweep((0.0, 0.50, 1.0), (0.5, 0.46, 0.9))) == 0.5  # exactly the tolerance is within it


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"confidence": 1.5}, ValueError, r"confidence.*between 0 and 1, got 1.5"),
        ({"confidence": "high"}, TypeError, r"confidence.*got str"),
        ({"metric": "auc"}, ValueError, r"unknown metric 'auc'.*e_rmse_l2"),
        ({"metric": 3}, TypeError, r"metric must be a string"),
        ({"metric": "e_rmse_l2"}, ValueError, r"lacks \['e_rmse_l2'\]"),
        ({"confidence": 0.9}, ValueError, r"lam = 0.5 lacks it"),
    ],
    ids=["confidence above 1", "confidence text", "unknown metric", "metric not a string", "no l2 key", "no bound"],
)
def test_select_lambda_refuses_bad_arguments_and_leaves_the_sweep_unchanged(kwargs, error, message):
    entries = sweep((0.0, 0.9, 1.0), (0.5, 0.9, 0.8))
    before = copy.deepcopy(entries)
    with pytest.raises(error, match=message):
        select_lambda(entries, **kwargs)
    assert entries == before


def test_select_lambda_refuses_bounds_that_are_not_finite_or_of_another_confidence():
    rows, correct = bounded_sweep()
    bounded = add_accuracy_drop_bounds(rows, correct, confidence=0.8)
    with pytest.raises(ValueError, match=r"computed at confidence 0.8, but select_lambda was given confidence 0.9"):
        select_lambda(bounded, confidence=0.9)
    bounded = [{**entry, "accuracy_drop_confidence": 0.9} for entry in bounded]
    bounded[2]["accuracy_drop_bound"] = float("nan")
    with pytest.raises(ValueError, match=r"accuracy_drop_bound of lam = 0.5 must be a finite number, got nan"):
        select_lambda(bounded, confidence=0.9)


def test_add_accuracy_drop_bounds_copies_and_names_what_is_missing():
    rows, correct = bounded_sweep()
    before = copy.deepcopy(rows)
    bounded = add_accuracy_drop_bounds(rows, correct)
    assert rows == before and all(entry["accuracy_drop_confidence"] == 0.9 for entry in bounded)
    assert bounded[2]["accuracy_drop_bound"] == accuracy_drop_bound(correct[0.5], correct[0.0], 0.9)
    with pytest.raises(ValueError, match=r"no correctness for lam = 0.5"):
        add_accuracy_drop_bounds(rows, {0.0: correct[0.0], 0.25: correct[0.25]})
    with pytest.raises(ValueError, match=r"λ2 = 0 correctness"):
        add_accuracy_drop_bounds(rows, {0.25: correct[0.25], 0.5: correct[0.5]})
    with pytest.raises(ValueError, match=r"same images"):
        add_accuracy_drop_bounds(rows, {**correct, 0.5: correct[0.5][:-1]})
    with pytest.raises(TypeError, match=r"correct must be a dict"):
        add_accuracy_drop_bounds(rows, list(correct.values()))
