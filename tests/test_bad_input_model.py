"""Issue 9, groups 1 and 2: bad inputs to the model's forward and config.

Each case asserts the error type, a message naming the problem, and that nothing changed: the model's state dict
bit for bit, no gradient written, `config.alpha` as before, and the input tensors unchanged.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.testing import tiny_clip_model

NAMES = ["cat", "dog", "bird"]
NUM_PATCHES = 16


def make_model(alpha: float = 1.0) -> SelfExplainingCLIPVision:
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=0), NAMES, class_embeddings=embeddings, alpha=alpha)


@pytest.fixture(scope="module")
def base_models():
    return {alpha: make_model(alpha) for alpha in (1.0, 0.8)}


def pixels(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model, before, alpha):
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.config.alpha == alpha


def nan_at(tensor, index):
    tensor = tensor.clone()
    tensor[index] = float("nan")
    return tensor


def inf_at(tensor, index):
    tensor = tensor.clone()
    tensor[index] = float("inf")
    return tensor


SHAP = torch.randn(2, NUM_PATCHES, generator=torch.Generator().manual_seed(1))

# (alpha, forward kwargs, error type, message)
FORWARD_CASES = [
    # group 2: labels
    (1.0, dict(labels=torch.tensor([0, 3])), ValueError, r"class ids in \[0, 2\].*got 3 at row 1"),
    (1.0, dict(labels=torch.tensor([-5, 0])), ValueError, r"class ids in \[0, 2\].*got -5 at row 0"),
    (0.8, dict(labels=torch.tensor([7, 0]), shap_values=SHAP), ValueError, r"got 7 at row 0"),
    (1.0, dict(labels=torch.tensor([0.0, 1.0])), TypeError, r"integer class ids.*torch\.float32 with values \[0\.0"),
    (1.0, dict(labels=torch.tensor([0.5, 1.0])), TypeError, r"labels must hold integer class ids in \[0, 2\]"),
    (1.0, dict(labels=[0, 1]), TypeError, r"labels must be a torch\.LongTensor.*got list"),
    (1.0, dict(labels=torch.tensor([True, False])), TypeError, r"integer class ids.*torch\.bool"),
    (0.8, dict(labels=torch.tensor([0, -100]), shap_values=SHAP), ValueError, r"-100 \(ignore_index\) at rows \[1\]"),
    (1.0, dict(labels=torch.tensor([-100, 1]), shap_values=SHAP), ValueError, r"no SHAP target.*alpha=1"),
    # group 1: non-finite values on the loss path
    (1.0, dict(labels=torch.tensor([0, 1]), pixel_values=nan_at(pixels(), (1, 0, 3, 3))), ValueError,
     r"pixel_values contains NaN or infinite values at row 1"),
    (0.8, dict(labels=torch.tensor([0, 1]), shap_values=SHAP, pixel_values=inf_at(pixels(), (0, 2, 0, 0))), ValueError,
     r"pixel_values contains NaN or infinite values at row 0"),
    (0.8, dict(labels=torch.tensor([0, 1]), shap_values=nan_at(SHAP, (1, 5))), ValueError,
     r"shap_values contains NaN or infinite values at row 1"),
    (1.0, dict(labels=torch.tensor([0, 1]), shap_values=inf_at(SHAP, (0, 0))), ValueError,
     r"shap_values contains NaN or infinite values at row 0"),
    # group 2: pixel_values that are not what the image processor gives
    (1.0, dict(pixel_values=pixels().numpy()), TypeError, r"numpy\.ndarray: run the image processor"),
    (1.0, dict(pixel_values=Image.new("RGB", (32, 32))), TypeError, r"PIL\..*Image: run the image processor"),
    (1.0, dict(pixel_values=torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), TypeError,
     r"floating point tensor, got dtype torch\.uint8: run the image processor"),
    (1.0, dict(pixel_values=torch.zeros(2, 3, 32, 32, dtype=torch.int64), labels=torch.tensor([0, 1])), TypeError,
     r"got dtype torch\.int64"),
    (1.0, dict(shap_values=np.zeros((2, NUM_PATCHES)), labels=torch.tensor([0, 1])), TypeError,
     r"shap_values must be a torch\.FloatTensor, got ndarray"),
]  # fmt: skip


@pytest.mark.parametrize("alpha, kwargs, error, message", FORWARD_CASES)
def test_forward_refuses_bad_input_and_changes_nothing(base_models, alpha, kwargs, error, message):
    model = base_models[alpha]
    model.train()
    before = snapshot(model)
    kwargs = {"pixel_values": pixels(), **kwargs}
    copies = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    try:
        with pytest.raises(error, match=message):
            model(**kwargs)
    finally:
        model.eval()
    assert_unchanged(model, before, alpha)
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, copies[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (1.5, ValueError, r"alpha must be a finite number in \[0, 1\], got 1\.5"),
        (-0.1, ValueError, r"got -0\.1"),
        (float("nan"), ValueError, r"got nan"),
        (float("inf"), ValueError, r"got inf"),
        ("banana", TypeError, r"alpha must be a finite number in \[0, 1\], got str: 'banana'"),
        (True, TypeError, r"got bool"),
        (None, TypeError, r"got NoneType"),
    ],
)
def test_alpha_assignment_is_validated(base_models, value, error, message):
    model = base_models[0.8]
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.config.alpha = value
    assert_unchanged(model, before, 0.8)
    assert isinstance(model.config.alpha, float)


def test_alpha_is_checked_again_where_the_loss_uses_it():
    model = make_model(0.8)
    model.config.__dict__["alpha"] = 1.5  # bypasses the assignment check
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"config\.alpha must be a finite number in \[0, 1\], got 1\.5"):
        model(pixels(), labels=torch.tensor([0, 1]), shap_values=SHAP)
    assert_unchanged(model, before, 1.5)


def test_ignore_index_without_attribution_loss_is_the_cross_entropy_of_the_other_rows(base_models):
    model = base_models[1.0]
    x = pixels(3)
    outputs = model(x, labels=torch.tensor([0, -100, 2]))
    expected = F.cross_entropy(model(x[[0, 2]]).logits.float(), torch.tensor([0, 2]))
    torch.testing.assert_close(outputs.loss, expected)


def test_int32_labels_give_the_same_loss_as_int64(base_models):
    model = base_models[0.8]
    x = pixels()
    long = model(x, labels=torch.tensor([0, 2]), shap_values=SHAP).loss
    int32 = model(x, labels=torch.tensor([0, 2], dtype=torch.int32), shap_values=SHAP).loss
    assert torch.equal(long, int32)


def test_non_finite_pixels_without_labels_are_not_scanned(base_models):
    """Inference does not pay for a scan: a NaN pixel only gives its own row NaN outputs."""
    outputs = base_models[1.0](nan_at(pixels(), (1, 0, 0, 0)))
    assert torch.isfinite(outputs.logits[0]).all() and not torch.isfinite(outputs.logits[1]).all()
