"""Tests for hf_explvec.evaluation and hf_explvec.evaluation.perturbation: known answers, batching, evaluate modules."""

import math
import socket

import numpy as np
import pytest
import torch

from hf_explvec.evaluation import (
    METRIC_NAMES,
    accuracy,
    apply_patch_mask,
    deletion_auc,
    e_rmse,
    fidelity_sparsity_auc,
    insertion_auc,
    iou_at_k,
    load_metric,
    metric_path,
    perturbation_curve,
    select_target,
    spearman,
)

# ------------------------------------------------------------------------------------------------------
# Accuracy and class selection
# ------------------------------------------------------------------------------------------------------


def test_accuracy_from_logits_and_from_predictions():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(torch.tensor([0, 1, 2, 0]), labels) == 0.5
    assert accuracy([1, 1], [1, 1]) == 1.0
    assert accuracy(np.array([0, 2]), np.array([1, 1])) == 0.0


def test_select_target_picks_each_images_class_row():
    attributions = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    out = select_target(attributions, torch.tensor([2, 0]))
    torch.testing.assert_close(out, torch.stack([attributions[0, 2], attributions[1, 0]]))
    torch.testing.assert_close(select_target(attributions, 1), attributions[:, 1])


# ------------------------------------------------------------------------------------------------------
# Agreement with Kernel SHAP: E-RMSE, IoU@K, Spearman
# ------------------------------------------------------------------------------------------------------


def test_identical_explanations_are_perfect():
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(0))
    assert e_rmse(x, x) == 0.0
    assert iou_at_k(x, x, 3) == 1.0
    assert spearman(x, x) == pytest.approx(1.0, abs=1e-12)


def test_e_rmse_hand_computed():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 2.0, 3.0, 6.0], [1.0, 1.0, 1.0, 1.0]])
    # image 0: errors (1, 0, 0, -2) -> sqrt(5 / 4); image 1: errors all -1 -> 1; then the mean over images
    per_image = e_rmse(a, s, reduction="none")
    torch.testing.assert_close(per_image, torch.tensor([math.sqrt(1.25), 1.0], dtype=torch.float64))
    assert e_rmse(a, s) == pytest.approx((math.sqrt(1.25) + 1.0) / 2, abs=1e-15)
    # per-image RMSE then mean, not the pooled RMSE over all B * M entries
    assert e_rmse(a, s) < math.sqrt((5.0 + 4.0) / 8)


def test_e_rmse_l2_normalisation():
    assert e_rmse([[3.0, 4.0]], [[6.0, 8.0]], normalize="l2") == pytest.approx(0.0, abs=1e-15)
    assert e_rmse([[2.0, 0.0]], [[0.0, 5.0]], normalize="l2") == pytest.approx(1.0)
    assert e_rmse([[0.0, 0.0]], [[0.0, 0.0]], normalize="l2") == 0.0  # zero vectors stay zero


def test_iou_at_k_hand_computed():
    a = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    s = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    # k=2: {0,1} vs {0,2} -> 1/3; {0,1} vs {2,1} -> 1/3
    torch.testing.assert_close(iou_at_k(a, s, 2, reduction="none"), torch.full((2,), 1 / 3, dtype=torch.float64))
    # k=1: {0} vs {0} -> 1; {0} vs {2} -> 0
    assert iou_at_k(a, s, 1) == 0.5
    assert iou_at_k(a, s, 3) == 1.0


def test_iou_at_k_ties_and_absolute():
    assert iou_at_k([[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]], 1) == 1.0  # ties -> lower index, same set
    a, s = [[-5.0, 1.0, 2.0]], [[5.0, 1.0, 2.0]]
    assert iou_at_k(a, s, 1) == 0.0
    assert iou_at_k(a, s, 1, absolute=True) == 1.0


def test_spearman_reversed_monotone_and_scipy_ties():
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert spearman(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert spearman(x, torch.exp(3 * x)) == pytest.approx(1.0, abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(6, 15)).astype(float)  # many ties
    s = rng.integers(0, 5, size=(6, 15)).astype(float)
    expected = [scipy_stats.spearmanr(a[i], s[i]).statistic for i in range(6)]
    np.testing.assert_allclose(spearman(a, s, reduction="none").numpy(), expected, atol=1e-12)


def test_spearman_hand_computed_with_ties():
    # ranks of a: (1, 2.5, 2.5, 4); ranks of s: (1, 2, 3, 4); centred: (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5)
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([[0.0, 1.0, 1.0, 2.0]], [[0.0, 1.0, 2.0, 3.0]]) == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_spearman_constant_vector_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="undefined for 1 of 2"):
        out = spearman([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], reduction="none")
    assert math.isnan(out[0]) and out[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------
# Deletion / insertion / fidelity: a model whose target probability depends on one patch only
# ------------------------------------------------------------------------------------------------------

SIGMA = 0.75  # sigmoid(log 3): target probability when the key patch is intact


def one_patch_model(pixel_values):
    """2 classes; logit of class 0 is log(3) * mean of the top-right 2x2 patch (patch 1 of a 2x2 grid)."""
    key = pixel_values[:, :, 0:2, 2:4].mean(dim=(1, 2, 3))
    return torch.stack([math.log(3.0) * key, torch.zeros_like(key)], dim=-1)


def ranked(position):
    """Attributions over the 4 patches that put patch 1 at `position` (0 = most important) of the order."""
    others = [m for m in range(4) if m != 1]
    order = others[:position] + [1] + others[position:]
    attributions = torch.zeros(4)
    attributions[order] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    return attributions


@pytest.fixture
def ones_images():
    return torch.ones(3, 1, 4, 4)


def test_deletion_and_insertion_known_answers(ones_images):
    attributions = torch.stack([ranked(0), ranked(3), ranked(2)])
    target = torch.tensor([0, 0, 0])
    # deletion, key patch first: probs (.75, .5, .5, .5, .5) at fractions (0, .25, .5, .75, 1)
    first = 0.25 * (SIGMA + 0.5) / 2 + 0.75 * 0.5  # 0.53125
    last = 0.75 * SIGMA + 0.25 * (SIGMA + 0.5) / 2  # 0.71875
    third = 0.5 * SIGMA + 0.25 * (SIGMA + 0.5) / 2 + 0.25 * 0.5  # removed at the 3rd step: 0.65625
    out = deletion_auc(one_patch_model, ones_images, attributions, target, patch_size=2, reduction="none")
    torch.testing.assert_close(out, torch.tensor([first, last, third], dtype=torch.float64), atol=1e-6, rtol=0)
    # insertion is the mirror image: key patch first -> high area; third -> probs (.5, .5, .5, .75, .75)
    ins_third = 0.5 * 0.5 + 0.25 * (0.5 + SIGMA) / 2 + 0.25 * SIGMA  # 0.59375
    ins = insertion_auc(one_patch_model, ones_images, attributions, target, patch_size=2, reduction="none")
    torch.testing.assert_close(ins, torch.tensor([last, first, ins_third], dtype=torch.float64), atol=1e-6, rtol=0)
    assert deletion_auc(one_patch_model, ones_images, attributions, 0, patch_size=2) == pytest.approx(
        (first + last + third) / 3
    )


def test_curve_shape_steps_and_logits_object(ones_images):
    class Output:
        def __init__(self, logits):
            self.logits = logits

    curve = perturbation_curve(
        lambda x: Output(one_patch_model(x)), ones_images[:1], ranked(0)[None], torch.tensor([0]), patch_size=2
    )
    torch.testing.assert_close(curve.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(curve.probabilities, torch.tensor([[SIGMA, 0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    # two patches per step: fractions (0, .5, 1), probs (.75, .5, .5)
    two = perturbation_curve(one_patch_model, ones_images[:1], ranked(0)[None], 0, patch_size=2, steps=2)
    torch.testing.assert_close(two.fractions, torch.tensor([0, 0.5, 1], dtype=torch.float64))
    assert float(two.auc[0]) == pytest.approx(0.5 * (SIGMA + 0.5) / 2 + 0.5 * 0.5)


def test_class_wise_attributions_select_the_target(ones_images):
    # (B, C, M): class 0 ranks the key patch first, class 1 last; explaining class 0 must use row 0
    attributions = torch.stack([ranked(0), ranked(3)])[None].expand(3, 2, 4)
    auc = deletion_auc(one_patch_model, ones_images, attributions, torch.tensor([0, 0, 0]), patch_size=2)
    assert auc == pytest.approx(0.53125)


def test_baseline_tensor_per_image(ones_images):
    # image 0 masks to 0 (as before); image 1 "masks" to its own value 1, so nothing changes: flat curve at .75
    baseline = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1)
    attributions = torch.stack([ranked(0)] * 3)
    out = deletion_auc(one_patch_model, ones_images, attributions, 0, patch_size=2, baseline=baseline, reduction="none")
    torch.testing.assert_close(out, torch.tensor([0.53125, SIGMA, 0.53125], dtype=torch.float64))


def test_fidelity_known_answers_and_relation_to_deletion(ones_images):
    attributions = torch.stack([ranked(0), ranked(3), ranked(2)])
    result = fidelity_sparsity_auc(one_patch_model, ones_images, attributions, 0, patch_size=2, sparsity_levels=4)
    torch.testing.assert_close(result.sparsity, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    # key patch first: Fid+ = (.25, .25, .25, .25, 0), Fid- = (0, 0, 0, 0, .25)
    torch.testing.assert_close(
        result.fidelity_plus[0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(result.fidelity_minus[0], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25], dtype=torch.float64))
    # Fid+ AUC = p(x) - deletion AUC and Fid- AUC = p(x) - insertion AUC on the same grid
    dele = deletion_auc(one_patch_model, ones_images, attributions, 0, patch_size=2)
    ins = insertion_auc(one_patch_model, ones_images, attributions, 0, patch_size=2)
    assert result.fidelity_plus_auc == pytest.approx(SIGMA - dele)
    assert result.fidelity_minus_auc == pytest.approx(SIGMA - ins)
    explicit = fidelity_sparsity_auc(
        one_patch_model, ones_images, attributions, 0, patch_size=2, sparsity_levels=[1.0, 0.5, 0.0]
    )
    torch.testing.assert_close(explicit.sparsity, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_apply_patch_mask_row_major():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    keep = torch.tensor([[True, False, True, True]])  # drop patch 1 = rows 0:2, cols 2:4
    out = apply_patch_mask(x, keep, 2, baseline=-1.0)
    expected = x.clone()
    expected[:, :, 0:2, 2:4] = -1.0
    torch.testing.assert_close(out, expected)
    assert x[0, 0, 0, 2] == 2.0  # input untouched


# ------------------------------------------------------------------------------------------------------
# Batching invariance on a random model
# ------------------------------------------------------------------------------------------------------


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without touching the global RNG of other tests
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)
            )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_batching_invariance_and_chunking(mode):
    model = CountingModel().eval()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 8, 8, generator=gen)
    attributions = torch.randn(3, 16, generator=gen)
    target = torch.tensor([0, 3, 4])
    curves = {}
    for batch_size in (1, 7, 10_000):
        model.calls = 0
        curves[batch_size] = perturbation_curve(
            model, pixels, attributions, target, patch_size=2, mode=mode, batch_size=batch_size
        )
        assert model.calls == math.ceil(3 * 17 / batch_size)  # one call per chunk, none per step or image
    for batch_size in (7, 10_000):
        torch.testing.assert_close(curves[batch_size].probabilities, curves[1].probabilities, atol=1e-6, rtol=0)
    # image by image gives the same curves as the batch
    single = perturbation_curve(model, pixels[1:2], attributions[1:2], target[1:2], patch_size=2, mode=mode)
    torch.testing.assert_close(single.probabilities[0], curves[7].probabilities[1], atol=1e-6, rtol=0)


def test_fidelity_batching_invariance():
    model = CountingModel().eval()
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 8, 8, generator=gen)
    attributions = torch.randn(2, 4, generator=gen)
    a = fidelity_sparsity_auc(model, pixels, attributions, 1, patch_size=4, sparsity_levels=4, batch_size=1)
    b = fidelity_sparsity_auc(model, pixels, attributions, 1, patch_size=4, sparsity_levels=4, batch_size=64)
    assert a.fidelity_plus_auc == pytest.approx(b.fidelity_plus_auc, abs=1e-6)
    assert a.fidelity_minus_auc == pytest.approx(b.fidelity_minus_auc, abs=1e-6)


# ------------------------------------------------------------------------------------------------------
# evaluate modules: loadable by path, offline, same numbers as the plain functions
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_evaluate_modules_match_plain_functions(no_network):
    rng = np.random.default_rng(3)
    preds = rng.normal(size=(6, 10)).tolist()  # lists of lists, as evaluate users pass them
    refs = rng.normal(size=(6, 10)).tolist()
    a, s = torch.tensor(preds, dtype=torch.float64), torch.tensor(refs, dtype=torch.float64)

    assert load_metric("e_rmse", keep_in_memory=True).compute(predictions=preds, references=refs) == {
        "e_rmse": pytest.approx(e_rmse(a, s), abs=1e-12)
    }
    out = load_metric("e_rmse", keep_in_memory=True).compute(predictions=preds, references=refs, normalize="l2")
    assert out["e_rmse"] == pytest.approx(e_rmse(a, s, normalize="l2"), abs=1e-12)
    out = load_metric("iou_at_k", keep_in_memory=True).compute(predictions=preds, references=refs, k=3)
    assert out == {"iou_at_k": pytest.approx(iou_at_k(a, s, 3), abs=1e-12)}
    out = load_metric("spearman_attribution", keep_in_memory=True).compute(predictions=preds, references=refs)
    assert out == {"spearman": pytest.approx(spearman(a, s), abs=1e-12)}
    labels = [0, 1, 2, 1, 0]
    out = load_metric("accuracy", keep_in_memory=True).compute(predictions=[0, 1, 1, 1, 2], references=labels)
    assert out == {"accuracy": pytest.approx(accuracy(torch.tensor([0, 1, 1, 1, 2]), torch.tensor(labels)))}


def test_evaluate_module_incremental_batches(no_network):
    metric = load_metric("e_rmse", keep_in_memory=True)
    metric.add_batch(predictions=[[1.0, 2.0, 3.0, 4.0]], references=[[0.0, 2.0, 3.0, 6.0]])
    metric.add_batch(predictions=[[0.0, 0.0, 0.0, 0.0]], references=[[1.0, 1.0, 1.0, 1.0]])
    assert metric.compute()["e_rmse"] == pytest.approx((math.sqrt(1.25) + 1.0) / 2)


def test_evaluate_module_errors():
    with pytest.raises(ValueError, match="needs `k`"):
        load_metric("iou_at_k", keep_in_memory=True).compute(predictions=[[1.0]], references=[[1.0]])
    with pytest.raises(ValueError, match="Unknown metric .rouge."):
        load_metric("rouge")
    for name in METRIC_NAMES:
        assert metric_path(name).endswith(f"metrics/{name}/{name}.py")


# ------------------------------------------------------------------------------------------------------
# Bad input raises typed errors naming expected and actual
# ------------------------------------------------------------------------------------------------------

M4 = torch.zeros(2, 4)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: e_rmse(torch.zeros(2, 4), torch.zeros(2, 5)), ValueError, r"same shape, got \(2, 4\) and \(2, 5\)"),
        (lambda: e_rmse(torch.zeros(4), torch.zeros(4)), ValueError, r"\(batch_size, num_patches\), got \(4,\)"),
        (lambda: e_rmse(torch.zeros(0, 4), torch.zeros(0, 4)), ValueError, "non-empty"),
        (lambda: e_rmse(M4, torch.full((2, 4), float("nan"))), ValueError, "NaN"),
        (lambda: e_rmse(M4, M4, normalize="l1"), ValueError, "None or 'l2', got 'l1'"),
        (lambda: e_rmse(M4, M4, reduction="sum"), ValueError, "'mean' or 'none', got 'sum'"),
        (lambda: e_rmse("abc", M4), TypeError, "got str"),
        (lambda: e_rmse([[1.0, 2.0], [1.0]], [[1.0, 2.0], [1.0, 2.0]]), ValueError, "rectangular"),
        (lambda: e_rmse(M4.bool(), M4), TypeError, "real numbers"),
        (lambda: iou_at_k(M4, M4, 0), ValueError, ">= 1, got 0"),
        (lambda: iou_at_k(M4, M4, 5), ValueError, r"\[1, num_patches=4\], got 5"),
        (lambda: iou_at_k(M4, M4, 2.0), TypeError, "`k` must be an int, got float"),
        (lambda: spearman(M4, torch.zeros(3, 4)), ValueError, "same shape"),
        (lambda: accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)), ValueError, r"\(3,\), got \(4,\)"),
        (lambda: accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long)), TypeError, "integer class ids"),
        (lambda: accuracy(torch.zeros(3, 2), torch.zeros(3)), TypeError, "integer class ids, got dtype"),
        (lambda: accuracy(torch.zeros(1, 2, 3), torch.zeros(1, dtype=torch.long)), ValueError, r"got \(1, 2, 3\)"),
        (
            lambda: select_target(torch.zeros(2, 3, 4), torch.tensor([0, 3])),
            ValueError,
            r"\[0, 2\], got values in \[0, 3\]",
        ),
        (lambda: select_target(M4, 0), ValueError, "num_classes, num_patches"),
    ],
)
def test_bad_inputs_raise_typed_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


IMGS = torch.ones(2, 1, 4, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patch_size": 3}, ValueError, r"\(3\) must divide the image height and width, got 4x4"),
        ({"patch_size": 0}, ValueError, ">= 1, got 0"),
        ({"patch_size": 2.0}, TypeError, "`patch_size` must be an int"),
        ({"attributions": torch.zeros(2, 5)}, ValueError, r"\(2, 4\) or \(2, num_classes, 4\).*got \(2, 5\)"),
        ({"attributions": torch.zeros(3, 2, 4)}, ValueError, r"batch size 2, got shape \(3, 2, 4\)"),
        (
            {"pixel_values": torch.ones(2, 4, 4)},
            ValueError,
            r"\(batch_size, channels, height, width\), got \(2, 4, 4\)",
        ),
        ({"pixel_values": torch.ones(2, 1, 4, 4, dtype=torch.long)}, TypeError, "floating point"),
        ({"pixel_values": IMGS.numpy()}, TypeError, "must be a torch.Tensor, got ndarray"),
        ({"target": torch.tensor([0, 2])}, ValueError, r"\[0, 1\] for a model with 2 classes, got 2"),
        ({"target": torch.tensor([0])}, ValueError, r"\(2,\), got \(1,\)"),
        ({"target": -1}, ValueError, r"got values in \[-1, -1\]"),
        ({"target": torch.tensor([0.0, 1.0])}, TypeError, "integer class ids"),
        ({"baseline": torch.zeros(3, 1, 1, 1)}, ValueError, r"\(3, 1, 1, 1\) does not broadcast to .*\(2, 1, 4, 4\)"),
        (
            {"baseline": "noise"},
            ValueError,
            "baseline must be a float, one of \\('mean', 'blur'\\) or a tensor, got 'noise'",
        ),
        ({"baseline": [0.0]}, TypeError, "baseline must be a float, 'mean', 'blur' or a torch.Tensor, got list"),
        ({"steps": 5}, ValueError, r"\[1, num_patches=4\], got 5"),
        ({"steps": 0}, ValueError, ">= 1, got 0"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be >= 1"),
        ({"mode": "both"}, ValueError, "'deletion' or 'insertion', got 'both'"),
        ({"forward_fn": lambda x: x.sum()}, ValueError, r"logits of shape \(\d+, num_classes\).*got \(\)"),
        ({"forward_fn": lambda x: [x]}, TypeError, "`.logits`"),
        ({"forward_fn": "model"}, TypeError, "`forward_fn` must be callable"),
    ],
)
def test_perturbation_bad_inputs(kwargs, error, match):
    args = {
        "forward_fn": one_patch_model,
        "pixel_values": IMGS,
        "attributions": torch.zeros(2, 4),
        "target": torch.tensor([0, 1]),
        "patch_size": 2,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        perturbation_curve(
            args.pop("forward_fn"), args.pop("pixel_values"), args.pop("attributions"), args.pop("target"), **args
        )


@pytest.mark.parametrize(
    ("levels", "error", "match"),
    [
        (0, ValueError, r"\[1, num_patches=4\], got 0"),
        (9, ValueError, r"\[1, num_patches=4\], got 9"),
        ([0.5], ValueError, "at least 2"),
        ([0.0, 1.5], ValueError, r"in \[0, 1\]"),
        ("dense", TypeError, "got str"),
    ],
)
def test_fidelity_bad_sparsity_levels(levels, error, match):
    with pytest.raises(error, match=match):
        fidelity_sparsity_auc(one_patch_model, IMGS, torch.zeros(2, 4), 0, patch_size=2, sparsity_levels=levels)


def test_reduction_errors_for_auc():
    with pytest.raises(ValueError, match="'mean' or 'none', got 'max'"):
        deletion_auc(one_patch_model, IMGS, torch.zeros(2, 4), 0, patch_size=2, reduction="max")
    with pytest.raises(ValueError, match=r"`keep` must have shape \(2, 4\), got \(2, 3\)"):
        apply_patch_mask(IMGS, torch.ones(2, 3, dtype=torch.bool), 2)
    with pytest.raises(TypeError, match="bool torch.Tensor"):
        apply_patch_mask(IMGS, torch.ones(2, 4), 2)


def test_string_baselines_match_their_tensors():
    """'mean' and 'blur' (shared with the attribution core) equal passing the same images explicitly."""
    from hf_explvec.attribution import gaussian_blur

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([[True, False, False, True], [False, True, True, False]])
    torch.testing.assert_close(
        apply_patch_mask(x, keep, 4, baseline="mean"),
        apply_patch_mask(x, keep, 4, baseline=x.mean(dim=(2, 3), keepdim=True)),
    )
    torch.testing.assert_close(
        apply_patch_mask(x, keep, 4, baseline="blur"),
        apply_patch_mask(x, keep, 4, baseline=gaussian_blur(x, sigma=1.0)),
    )
