"""The transfer diagnostic (hf_explvec.evaluation.diagnostic): probe_transfer on tiny models (λ2 = 0 is the plain
target, each λ2 is the transferred model's own figures, deterministic for a seed, the target untouched, bad input
named) and correlation_with_uncertainty (a perfect line, independent noise, skipped resamples, bad input)."""

import numpy as np
import pytest
import torch
from conftest import fine_tune

from hf_explvec import SelfExplainingCLIPVision, TaskVector
from hf_explvec.evaluation import (
    correlation_with_uncertainty,
    explanation_metrics,
    forward_attributions,
    kernel_shap_values,
    probe_transfer,
)
from hf_explvec.task_vector import transfer
from hf_explvec.testing import tiny_clip_model

CLASSES = ["a", "b", "c"]
NUM_SAMPLES = 32  # 2 M for the tiny model's 16 patches, the smallest budget Kernel SHAP accepts


@pytest.fixture(scope="module")
def models():
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    base = SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=0), CLASSES, class_embeddings=embeddings).eval()
    target = fine_tune(base, 1, scale=0.05).eval()
    vector = TaskVector.from_models(base, fine_tune(base, 2, scale=0.2))
    return base, target, vector


class Split:
    def __init__(self, count=6, seed=3, evidence=True):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.arange(count) % 3
        self.evidence = torch.rand(count, 16, generator=generator) > 0.5 if evidence else None

    def __len__(self):
        return len(self.labels)


class First:
    def __init__(self, split, count):
        self.pixel_values, self.labels = split.pixel_values[:count], split.labels[:count]
        self.evidence = split.evidence[:count]

    def __len__(self):
        return len(self.labels)


def figures(model, split, seed):
    """What the probe should report for `model`: accuracy and agreement with its own Kernel SHAP, no perturbation."""
    logits, explained, _ = forward_attributions(model, split)
    reference, _ = kernel_shap_values(model, split, NUM_SAMPLES, seed)
    out = {"accuracy": float((logits.argmax(1) == split.labels).double().mean())}
    out.update(explanation_metrics(model, split, explained, reference, perturbation=False))
    return out


def without_seconds(result):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in result["entries"]]


# ---------------------------------------------------------------------------------------------------- the probe
def test_probe_lambda_zero_is_the_plain_target_and_each_lambda_its_transferred_model(models):
    base, target, vector = models
    split = Split()
    before = {key: value.clone() for key, value in target.state_dict().items()}
    result = probe_transfer(base, target, vector, split, lams=(0.0, 0.5), num_images=4, num_samples=NUM_SAMPLES, seed=5)
    assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items())  # target untouched
    first = First(split, 4)
    zero, half = result["entries"]
    expected_zero = figures(target, first, seed=5)
    assert zero["lam"] == 0.0 and set(expected_zero) <= set(zero)
    for key, value in expected_zero.items():
        assert zero[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert "pointing" in zero and "deletion_auc" not in zero  # evidence is sliced, no perturbation metrics
    expected_half = figures(transfer(base, target, vector, lam=0.5), first, seed=5)
    for key, value in expected_half.items():
        assert half[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert half["e_rmse_l2"] != pytest.approx(zero["e_rmse_l2"])  # the vector changed the explanations
    assert result["lam"] == 0.5 and result["num_images"] == 4 and result["seconds"] > 0
    relative = (half["e_rmse_l2"] - zero["e_rmse_l2"]) / zero["e_rmse_l2"]
    assert result["relative_change_e_rmse_l2"] == pytest.approx(relative)
    assert result["relative_change_e_rmse"] == pytest.approx((half["e_rmse"] - zero["e_rmse"]) / zero["e_rmse"])
    assert result["accuracy_change"] == pytest.approx(half["accuracy"] - zero["accuracy"])


def test_probe_is_deterministic_for_a_seed_and_reads_only_the_first_images(models):
    base, target, vector = models
    options = {"lams": (0.3, 0.0), "num_images": 3, "num_samples": NUM_SAMPLES}
    a = probe_transfer(base, target, vector, Split(), seed=1, **options)
    b = probe_transfer(base, target, vector, Split(), seed=1, **options)
    assert without_seconds(a) == without_seconds(b)
    assert [entry["lam"] for entry in a["entries"]] == [0.3, 0.0] and a["lam"] == 0.3
    other_tail = Split()
    other_tail.pixel_values[3:] = 0.0  # images after the first three do not matter
    assert without_seconds(probe_transfer(base, target, vector, other_tail, seed=1, **options)) == without_seconds(a)
    reseeded = probe_transfer(base, target, vector, Split(), seed=2, **options)
    assert reseeded["entries"][1]["e_rmse"] != a["entries"][1]["e_rmse"]  # the seed reaches Kernel SHAP


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_images": 7}, ValueError, r"num_images=7 is more than the split's 6 images"),
        ({"lams": (0.3, 0.6)}, ValueError, r"must contain 0"),
        ({"lams": (0.0,)}, ValueError, r"only 0"),
        ({"lams": (0.0, -0.3)}, ValueError, r"λ2 > 0"),
        ({"lams": (0.0, 0.3, 0.3)}, ValueError, r"repeat"),
        ({"lams": (0.0, float("nan"))}, ValueError, r"finite"),
        ({"lams": (0.0, "0.3")}, TypeError, r"real number"),
        ({"num_images": 0}, ValueError, r"num_images"),
        ({"num_images": 2.0}, TypeError, r"num_images"),
        ({"value": "score"}, ValueError, r"value"),
    ],
    ids=[
        "too many images",
        "no zero",
        "only zero",
        "none above zero",
        "repeated",
        "nan",
        "text",
        "zero images",
        "float",
        "value",
    ],
)
def test_probe_refuses_bad_input(models, kwargs, error, message):
    base, target, vector = models
    options = {"num_images": 2, "num_samples": NUM_SAMPLES, **kwargs}
    with pytest.raises(error, match=message):
        probe_transfer(base, target, vector, Split(), **options)


# ------------------------------------------------------------------------------------------------- correlation
def test_a_perfect_line_has_r_and_rho_one_with_a_degenerate_interval():
    x = np.arange(8.0)
    result = correlation_with_uncertainty(x, 3 * x - 2, num_resamples=500)
    for name in ("pearson", "spearman"):
        assert result[name]["estimate"] == pytest.approx(1.0, abs=1e-12)
        assert result[name]["low"] == pytest.approx(1.0, abs=1e-12) and result[name]["high"] == pytest.approx(1.0)
    assert result["n"] == 8 and result["num_resamples"] == 500 and 0 <= result["skipped"] < 500
    falling = correlation_with_uncertainty(list(x), list(-np.exp(x)), num_resamples=200)
    assert falling["spearman"]["high"] == pytest.approx(-1.0) and falling["pearson"]["estimate"] > -1.0 + 1e-3


def test_independent_noise_gives_an_interval_containing_zero_and_the_seed_fixes_it():
    generator = np.random.default_rng(11)
    x, y = generator.normal(size=30), generator.normal(size=30)
    result = correlation_with_uncertainty(x, y, confidence=0.9, seed=4)
    for name in ("pearson", "spearman"):
        assert result[name]["low"] < 0 < result[name]["high"]
        assert result[name]["low"] <= result[name]["estimate"] <= result[name]["high"]
    assert correlation_with_uncertainty(x, y, confidence=0.9, seed=4) == result
    assert correlation_with_uncertainty(x, y, confidence=0.9, seed=5) != result
    wider = correlation_with_uncertainty(x, y, confidence=0.99, seed=4)["pearson"]
    assert wider["low"] < result["pearson"]["low"] and wider["high"] > result["pearson"]["high"]
    assert correlation_with_uncertainty(torch.tensor(x), torch.tensor(y), seed=4) == result


def test_resamples_with_a_constant_side_are_skipped_and_counted():
    result = correlation_with_uncertainty([0.0, 1.0, 2.0], [1.0, 0.0, 3.0], num_resamples=300, seed=0)
    # three pairs: a resample is constant when it draws one pair three times (3 of 27 draws), about 1 in 9
    assert 10 < result["skipped"] < 70
    assert result["pearson"]["low"] is not None and result["pearson"]["low"] < result["pearson"]["high"]


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "message"),
    [
        ([1.0, 2.0], [1.0, 2.0], {}, ValueError, r"at least 3 pairs, got 2"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], {}, ValueError, r"paired, got 3 and 2"),
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], {}, ValueError, r"`x` holds NaN.*index 1"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, float("inf")], {}, ValueError, r"`y` holds NaN or infinite"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], {}, ValueError, r"`x` is constant"),
        (["a", "b", "c"], [1.0, 2.0, 3.0], {}, TypeError, r"`x` must hold real numbers"),
        ([True, False, True], [1.0, 2.0, 3.0], {}, TypeError, r"`x` must hold real numbers"),
        ([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]], {}, ValueError, r"one-dimensional"),
        ([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], {"confidence": 1.0}, ValueError, r"confidence"),
        ([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], {"num_resamples": 0}, ValueError, r"num_resamples"),
        ([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], {"seed": 1.5}, TypeError, r"seed"),
    ],
    ids=["two pairs", "lengths", "nan", "inf", "constant", "text", "bools", "2-D", "confidence", "resamples", "seed"],
)
def test_correlation_refuses_bad_input(x, y, kwargs, error, message):
    with pytest.raises(error, match=message):
        correlation_with_uncertainty(x, y, **kwargs)
