"""Bad input to the evaluation functions (issue 9): each case raises a typed error whose message names the problem,
and leaves every input (tensors, the model's weights) unchanged."""

import copy

import numpy as np
import pytest
import torch

from hf_explvec.evaluation import (
    accuracy,
    deletion_auc,
    e_rmse,
    fidelity_sparsity_auc,
    forward_attributions,
    insertion_auc,
    iou_at_k,
    kernel_shap_values,
    load_metric,
    metric_path,
    perturbation_curve,
    select_lambda,
    select_target,
    spearman,
)

GEN = torch.Generator().manual_seed(0)
A = torch.randn(3, 16, generator=GEN)
S = torch.randn(3, 16, generator=GEN)
PIXELS = torch.rand(3, 3, 32, 32, generator=GEN)  # 32x32 images, patch 8: M = 16
CLASSWISE = torch.randn(3, 4, 16, generator=GEN)
LABELS = torch.tensor([0, 1, 2])


def with_nan(tensor, index=(1, 2)):
    out = tensor.clone()
    out[index] = float("nan")
    return out


def with_inf(tensor, index=(0, 0)):
    out = tensor.clone()
    out[index] = float("inf")
    return out


def same(old, new) -> bool:
    """Bit-for-bit equality that treats NaN as equal to NaN (the inputs of the NaN cases)."""
    if isinstance(old, torch.Tensor):
        return (
            old.dtype == new.dtype
            and torch.equal(old.isnan(), new.isnan())
            and torch.equal(old.nan_to_num(), new.nan_to_num())
        )
    if isinstance(old, np.ndarray):
        return np.array_equal(old, new, equal_nan=old.dtype.kind == "f")
    return old == new


def tiny_forward():
    """A small fixed linear classifier over 32x32 RGB images, 4 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)).eval()


AGREEMENT_CASES = [
    # (id, function, args, kwargs, error type, message pattern)
    ("e_rmse shape mismatch", e_rmse, (A, S[:, :8]), {}, ValueError, r"same shape, got \(3, 16\) and \(3, 8\)"),
    ("e_rmse NaN attributions", e_rmse, (with_nan(A), S), {}, ValueError, r"`attributions` contains NaN.*rows \[1\]"),
    ("e_rmse inf shap_values", e_rmse, (A, with_inf(S)), {}, ValueError, r"`shap_values` contains NaN or infinite"),
    ("e_rmse 1-D input", e_rmse, (A[0], S[0]), {}, ValueError, r"shape \(batch_size, num_patches\), got \(16,\)"),
    ("e_rmse 3-D input", e_rmse, (CLASSWISE, CLASSWISE), {}, ValueError, r"got \(3, 4, 16\)"),
    ("e_rmse empty", e_rmse, (A[:0], S[:0]), {}, ValueError, r"non-empty, got shape \(0, 16\)"),
    ("e_rmse bad reduction", e_rmse, (A, S), {"reduction": "sum"}, ValueError, r"'mean' or 'none', got 'sum'"),
    ("e_rmse bad normalize", e_rmse, (A, S), {"normalize": "l1"}, ValueError, r"None or 'l2', got 'l1'"),
    ("e_rmse string input", e_rmse, ("abc", S), {}, TypeError, r"`attributions` must be a torch.Tensor.*got str"),
    ("e_rmse bool tensor", e_rmse, (A > 0, S), {}, TypeError, r"real numbers, got dtype torch.bool"),
    ("e_rmse ragged list", e_rmse, ([[1.0, 2.0], [3.0]], [[1.0, 2.0], [3.0, 4.0]]), {}, ValueError, r"rectangular"),
    ("iou_at_k k = 0", iou_at_k, (A, S, 0), {}, ValueError, r"`k` must be >= 1, got 0"),
    ("iou_at_k k > M", iou_at_k, (A, S, 17), {}, ValueError, r"`k` must be in \[1, num_patches=16\], got 17"),
    ("iou_at_k float k", iou_at_k, (A, S, 1.5), {}, TypeError, r"`k` must be an int, got float"),
    ("iou_at_k bool k", iou_at_k, (A, S, True), {}, TypeError, r"`k` must be an int, got bool"),
    ("spearman bad reduction", spearman, (A, S), {"reduction": None}, ValueError, r"'mean' or 'none', got None"),
    ("spearman NaN", spearman, (A, with_nan(S)), {}, ValueError, r"`shap_values` contains NaN"),
    ("accuracy negative label", accuracy, (CLASSWISE[:, :, 0], torch.tensor([0, -1, 2])), {}, ValueError,
     r"`labels` must hold class ids.*got values in \[-1, 2\]"),
    ("accuracy float labels", accuracy, (CLASSWISE[:, :, 0], LABELS.float()), {}, TypeError,
     r"`labels` must hold integer class ids, got dtype torch.float32"),
    ("accuracy NaN logits", accuracy, (with_nan(CLASSWISE[:, :, 0]), LABELS), {}, ValueError,
     r"`logits_or_preds` contains NaN or infinite values \(rows \[1\]\)"),
    ("accuracy batch mismatch", accuracy, (CLASSWISE[:, :, 0], LABELS[:2]), {}, ValueError,
     r"`labels` must .*shape \(3,\), got \(2,\)"),
    ("accuracy float predictions", accuracy, (LABELS.float(), LABELS), {}, TypeError, r"integer class ids"),
    ("select_target out of range", select_target, (CLASSWISE, torch.tensor([0, 4, 1])), {}, ValueError,
     r"`target` must hold class ids in \[0, 3\], got values in \[0, 4\]"),
    ("select_target 2-D", select_target, (A, LABELS), {}, ValueError, r"\(batch_size, num_classes, num_patches\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "error", "message"),
    [case[1:] for case in AGREEMENT_CASES],
    ids=[case[0] for case in AGREEMENT_CASES],
)
def test_agreement_functions_refuse_bad_input_and_change_nothing(function, args, kwargs, error, message):
    before = copy.deepcopy((args, kwargs))
    with pytest.raises(error, match=message):
        function(*args, **kwargs)
    for old, new in zip(before[0], args, strict=True):
        assert same(old, new)


PERTURBATION_CASES = [
    ("deletion bad reduction", deletion_auc, {"reduction": "max"}, ValueError, r"'mean' or 'none', got 'max'"),
    ("insertion patch size 5", insertion_auc, {"patch_size": 5}, ValueError,
     r"`patch_size` \(5\) must divide the image height and width, got 32x32"),
    ("deletion NaN attributions", deletion_auc, {"attributions": with_nan(A)}, ValueError,
     r"`attributions` contains NaN"),
    ("deletion wrong patch count", deletion_auc, {"attributions": A[:, :9]}, ValueError,
     r"`attributions` must have shape \(3, 16\) or \(3, num_classes, 16\).*got \(3, 9\)"),
    ("insertion target out of range", insertion_auc, {"attributions": CLASSWISE, "target": torch.tensor([0, 1, 7])},
     ValueError, r"`target` must hold class ids in \[0, 3\].*got max 7"),
    ("deletion target beyond the model", deletion_auc, {"target": 9}, ValueError,
     r"`target` must .*for a model with 4 classes, got 9"),
    ("deletion steps > M", deletion_auc, {"steps": 17}, ValueError,
     r"`steps` must be in \[1, num_patches=16\], got 17"),
    ("deletion batch size 0", deletion_auc, {"batch_size": 0}, ValueError, r"`batch_size` must be >= 1, got 0"),
    ("deletion numpy pixels", deletion_auc, {"pixel_values": PIXELS.numpy()}, TypeError,
     r"`pixel_values` must be a torch.Tensor, got ndarray"),
    ("deletion uint8 pixels", deletion_auc, {"pixel_values": (PIXELS * 255).to(torch.uint8)}, TypeError,
     r"`pixel_values` must be floating point, got dtype torch.uint8"),
    ("curve bad mode", perturbation_curve, {"mode": "both"}, ValueError, r"'deletion' or 'insertion', got 'both'"),
    ("fidelity levels out of range", fidelity_sparsity_auc, {"sparsity_levels": [0.0, 1.5]}, ValueError,
     r"`sparsity_levels` must lie in \[0, 1\], got \[0.0, 1.5\]"),
    ("fidelity int levels > M", fidelity_sparsity_auc, {"sparsity_levels": 20}, ValueError,
     r"`sparsity_levels` as an int must be in \[1, num_patches=16\], got 20"),
    ("forward_fn not callable", deletion_auc, {"forward_fn": "model"}, TypeError, r"`forward_fn` must be callable"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("function", "overrides", "error", "message"),
    [case[1:] for case in PERTURBATION_CASES],
    ids=[case[0] for case in PERTURBATION_CASES],
)
def test_perturbation_metrics_refuse_bad_input_and_change_nothing(function, overrides, error, message):
    model = tiny_forward()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    arguments = {"forward_fn": model, "pixel_values": PIXELS.clone(), "attributions": A.clone(), "target": LABELS,
                 "patch_size": 8, **overrides}  # fmt: skip
    snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in arguments.items()
                if k != "forward_fn"}  # fmt: skip
    positional = [arguments.pop(name) for name in ("forward_fn", "pixel_values", "attributions", "target")]
    with pytest.raises(error, match=message):
        function(*positional, **arguments)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    for name, value in zip(("pixel_values", "attributions", "target"), positional[1:], strict=True):
        assert same(snapshot[name], value)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("typo", ValueError, r"Unknown metric 'typo'; expected one of \['accuracy', 'e_rmse', 'iou_at_k'"),
        ("E_RMSE", ValueError, r"Unknown metric 'E_RMSE'.*'spearman_attribution'"),
        (3, TypeError, r"metric name must be a str.*got int"),
    ],
)
def test_unknown_metric_names_are_refused_before_evaluate_is_touched(name, error, message, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(error, match=message):
        load_metric(name, cache_dir=str(cache))
    with pytest.raises(error, match=message):
        metric_path(name)
    assert not cache.exists()


def sweep(*entries):
    return [{"lam": lam, "accuracy": acc, "e_rmse": err} for lam, acc, err in entries]


@pytest.mark.parametrize(
    ("entries", "tolerance", "message"),
    [
        (sweep((0.5, 0.9, 1.0)), 0.04, r"needs a lam = 0 entry .*got \[0.5\]"),
        ([{"lam": 0.0, "accuracy": 0.9}], 0.04, r"lacks \['e_rmse'\]"),
        (sweep((0.0, 0.9, 1.0)), -0.1, r"max_accuracy_drop must be >= 0, got -0.1"),
        (sweep((0.0, 0.9, 1.0)), float("nan"), r"max_accuracy_drop must be >= 0, got nan"),
        (sweep((0.0, 0.9, 1.0)), "4%", r"max_accuracy_drop must be a number >= 0, got '4%'"),
    ],
    ids=["no lambda 0", "missing key", "negative tolerance", "NaN tolerance", "string tolerance"],
)
def test_select_lambda_refuses_bad_sweeps_and_leaves_them_unchanged(entries, tolerance, message):
    before = copy.deepcopy(entries)
    with pytest.raises(ValueError, match=message):
        select_lambda(entries, tolerance)
    assert entries == before


class Split:
    """A split as the protocol reads it: `pixel_values`, `labels`, `len`."""

    def __init__(self, count):
        self.pixel_values, self.labels = PIXELS[:count].clone(), LABELS[:count].clone()

    def __len__(self):
        return len(self.labels)


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "error", "message"),
    [
        (forward_attributions, (Split(3),), {"batch_size": 0}, ValueError, r"`batch_size` must be >= 1, got 0"),
        (forward_attributions, (Split(0),), {}, ValueError, r"the split holds no images"),
        (kernel_shap_values, (Split(3), 64, 0), {"chunk": 0}, ValueError, r"`chunk` must be >= 1, got 0"),
        (kernel_shap_values, (Split(0), 64, 0), {}, ValueError, r"the split holds no images; Kernel SHAP needs"),
    ],
    ids=["batch size 0", "empty split", "chunk 0", "empty split for Kernel SHAP"],
)
def test_protocol_refuses_bad_splits_before_touching_the_model(function, args, kwargs, error, message):
    model = tiny_forward()
    model.train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    split = args[0]
    pixels = split.pixel_values.clone()
    with pytest.raises(error, match=message):
        function(model, *args, **kwargs)
    assert model.training  # not even switched to eval mode
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    assert torch.equal(pixels, split.pixel_values)
