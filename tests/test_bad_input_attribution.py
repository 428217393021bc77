"""Issue 9, groups 1 and 2: non-finite values and bad inputs in the explainers.

`patch_kernel_shap`, `kernel_shap` and `model_kernel_shap` refuse NaN / Inf values of any coalition and non-finite
pixels with a `ValueError` naming the tensor and the image index, and refuse raw pixels (numpy, PIL, integer
tensors) with a `TypeError` pointing at the image processor. Each case also asserts that nothing changed: the
model's state dict bit for bit and the input tensors.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.attribution import kernel_shap, model_kernel_shap, patch_kernel_shap
from hf_explvec.testing import tiny_clip_model


@pytest.fixture(scope="module")
def model():
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    clip = tiny_clip_model(seed=0)
    return SelfExplainingCLIPVision.from_clip(clip, ["a", "b", "c"], class_embeddings=embeddings).eval()


def images(batch=3, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def with_value(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def bits(tensor):
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same_state(model, before):
    """Bit for bit (NaN entries included)."""
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(bits(before[k]), bits(after[k])) for k in before)


def linear_net(x):
    """A 3-class classifier: per-channel means."""
    return x.mean(dim=(2, 3))


def nan_for_image(image_index, value=float("nan")):
    """A forward function that gives `value` for every coalition of one image (recognised by its first pixel)."""
    marker = images()[image_index, 0, 0, 0]

    def forward(x):
        scores = linear_net(x)
        hit = (x[:, 0, 0, 0] == marker) & (x[:, 0, 0, 0] != 0)
        return torch.where(hit[:, None], torch.full_like(scores, value), scores)

    return forward


def nan_for_empty_coalition(x):
    """NaN only when every patch is absent (the all-baseline image): one coalition of each image."""
    scores = linear_net(x)
    empty = (x == 0).flatten(1).all(dim=1)
    return torch.where(empty[:, None], torch.full_like(scores, float("nan")), scores)


PATCH_CASES = [
    # group 1: non-finite scores from forward_fn, for one image or for one coalition of every image
    (dict(forward_fn=nan_for_image(1)), ValueError,
     r"forward_fn returned non-finite values \(NaN\) for image index \[1\]"),
    (dict(forward_fn=nan_for_image(2, float("inf"))), ValueError, r"\(Inf\) for image index \[2\]"),
    (dict(forward_fn=nan_for_image(0, float("-inf")), value="prob"), ValueError, r"non-finite.*image index \[0\]"),
    # every image has a NaN coalition: the first failing forward chunk (image 0's rows) stops the run
    (dict(forward_fn=nan_for_empty_coalition), ValueError, r"\(NaN\) for image index \[0\]"),
    # group 1: non-finite pixels, refused up front
    (dict(pixel_values=with_value(images(), (1, 2, 5, 5), float("nan"))), ValueError,
     r"pixel_values contains NaN or infinite values at image index 1"),
    (dict(pixel_values=with_value(images(), (2, 0, 0, 0), float("-inf"))), ValueError, r"at image index 2"),
    # group 2: raw pixels and bad targets
    (dict(pixel_values=torch.zeros(3, 3, 32, 32, dtype=torch.uint8)), TypeError,
     r"floating point tensor, got dtype torch\.uint8: run the image processor"),
    (dict(pixel_values=images().numpy()), TypeError, r"got numpy\.ndarray: run the image processor"),
    (dict(target=torch.tensor([0.0, 1.0, 2.0])), TypeError, r"target must hold integer class ids, got dtype .*float32"),
    (dict(target=3), ValueError, r"target must be in \[0, 3\).*got 3"),
    (dict(target=torch.tensor([0, -1, 2])), ValueError, r"target must hold class ids >= 0, got values in \[-1, 2\]"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, error, message", PATCH_CASES)
def test_patch_kernel_shap_refuses(kwargs, error, message):
    arguments = {"forward_fn": linear_net, "pixel_values": images(), "target": torch.tensor([0, 1, 2]), **kwargs}
    copies = {k: v.clone() for k, v in arguments.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=message):
        patch_kernel_shap(
            arguments.pop("forward_fn"), arguments.pop("pixel_values"), arguments.pop("target"),
            patch_size=8, num_samples=40, seed=0, batch_size=16, **arguments,
        )  # fmt: skip
    for key, copy in copies.items():
        value = kwargs.get(key, copy)
        torch.testing.assert_close(value, copy, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "value_fn, message",
    [
        (lambda z, i: torch.where(i == 1, float("nan"), z.float().sum(1)), r"value_fn .*\(NaN\) for input index \[1\]"),
        (lambda z, i: torch.where(z.all(1), float("inf"), z.float().sum(1)), r"\(Inf\) for input index \[0, 1\]"),
        (lambda z, i: torch.stack([z.float().sum(1), torch.where(i == 0, float("nan"), 0.0)], 1), r"input index \[0\]"),
    ],
)
def test_kernel_shap_refuses_non_finite_values(value_fn, message):
    with pytest.raises(ValueError, match=message):
        kernel_shap(value_fn, 4, 2, num_samples=16, seed=0)


@pytest.mark.parametrize("masking", ["embedding", "token", "pixel"])
@pytest.mark.parametrize(
    "pixel_values, error, message",
    [
        (with_value(images(), (1, 0, 4, 4), float("nan")), ValueError, r"pixel_values contains NaN.*image index 1"),
        (with_value(images(), (0, 1, 31, 31), float("inf")), ValueError, r"pixel_values contains NaN.*image index 0"),
        (torch.zeros(3, 3, 32, 32, dtype=torch.uint8), TypeError, r"got dtype torch\.uint8: run the image processor"),
        (images().numpy(), TypeError, r"numpy\.ndarray: run the image processor"),
        (Image.new("RGB", (32, 32)), TypeError, r"Image: run the image processor"),
    ],
    ids=["nan", "inf", "uint8", "numpy", "pil"],
)
def test_model_kernel_shap_refuses_bad_pixels_in_every_masking_mode(model, masking, pixel_values, error, message):
    before = snapshot(model)
    copy = pixel_values.clone() if isinstance(pixel_values, torch.Tensor) else np.asarray(pixel_values).copy()
    with pytest.raises(error, match=message):
        model_kernel_shap(model, pixel_values, torch.tensor([0, 1, 2]), num_samples=40, seed=0, masking=masking)
    assert_same_state(model, before)
    if isinstance(pixel_values, torch.Tensor):
        torch.testing.assert_close(pixel_values, copy, rtol=0, atol=0, equal_nan=True)
    else:
        assert np.array_equal(np.asarray(pixel_values), copy)


@pytest.mark.parametrize("masking", ["embedding", "token", "pixel"])
def test_model_kernel_shap_refuses_a_model_with_non_finite_scores(model, masking):
    broken = SelfExplainingCLIPVision(model.config).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.class_embeddings[1, 0] = float("nan")  # class 1's score is NaN for every input
    before = snapshot(broken)
    x = images()
    with pytest.raises(ValueError, match=r"non-finite values \(NaN\) for image index \[1\]"):
        model_kernel_shap(broken, x, torch.tensor([0, 1, 2]), num_samples=40, seed=0, masking=masking)
    assert_same_state(broken, before)
    assert torch.equal(x, images())


@pytest.mark.parametrize(
    "target, error, message",
    [
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, r"integer class ids, got dtype torch\.float32"),
        (torch.tensor([0, 1, 3]), ValueError, r"target must be in \[0, 3\).*got 3"),
        (True, TypeError, r"got bool"),
    ],
)
def test_model_kernel_shap_refuses_bad_targets(model, target, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model_kernel_shap(model, images(), target, num_samples=40, seed=0)
    assert_same_state(model, before)


def test_finite_inputs_still_give_finite_values(model):
    """The checks cost nothing in the normal case and change no value (same seed, same result)."""
    x = images()
    values = model_kernel_shap(model, x, torch.tensor([0, 1, 2]), num_samples=40, seed=0)
    assert torch.isfinite(values).all()
    pixel = patch_kernel_shap(linear_net, x, 0, patch_size=8, num_samples=40, seed=0)
    assert torch.isfinite(pixel).all()
