import itertools
import math

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.attribution import model_kernel_shap
from hf_explvec.testing import tiny_clip_model


def make_model(**vision):
    clip = tiny_clip_model(seed=0, **vision)
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return SelfExplainingCLIPVision.from_clip(clip, ["a", "b", "c"], class_embeddings=embeddings).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def images(batch=3, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("baseline", [0.0, -0.5, "mean", "blur", "tensor"])
def test_embedding_masking_equals_pixel_painting(model, baseline):
    x = images()
    if baseline == "tensor":
        baseline = torch.linspace(-1, 1, 3).view(3, 1, 1)
    kwargs = dict(num_samples=100, seed=3, baseline=baseline)
    embedding = model_kernel_shap(model, x, torch.tensor([0, 1, 2]), **kwargs)
    pixel = model_kernel_shap(model, x, torch.tensor([0, 1, 2]), masking="pixel", **kwargs)
    torch.testing.assert_close(embedding, pixel, atol=1e-5, rtol=1e-5)


def brute_force_shapley(score, num_players):
    """Exact Shapley values of a set function given as score(frozenset) by enumeration."""
    values = torch.zeros(num_players, dtype=torch.float64)
    for i in range(num_players):
        others = [j for j in range(num_players) if j != i]
        for size in range(num_players):
            weight = math.factorial(size) * math.factorial(num_players - size - 1) / math.factorial(num_players)
            for subset in itertools.combinations(others, size):
                values[i] += weight * (score(frozenset(subset) | {i}) - score(frozenset(subset)))
    return values


def test_exact_shapley_values_by_enumeration():
    model = make_model(patch_size=16)  # a 2x2 grid: M = 4, 16 coalitions
    x = images(batch=1)

    def score(coalition):
        painted = x.clone()
        for patch in set(range(4)) - coalition:
            r, c = divmod(patch, 2)
            painted[..., 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = 0.0
        with torch.no_grad():
            return float(model(painted).logits[0, 1])

    expected = brute_force_shapley(score, 4)
    for masking in ("embedding", "pixel"):
        values = model_kernel_shap(model, x, 1, num_samples=16, seed=0, masking=masking)
        torch.testing.assert_close(values[0].double(), expected, atol=1e-5, rtol=1e-4)


def test_token_dropping_is_efficient_against_the_cls_token_alone(model):
    x, target = images(), torch.tensor([2, 0, 1])
    values = model_kernel_shap(model, x, target, num_samples=64, seed=0, masking="token")
    embeddings = model.vision_model.embeddings
    cls = (embeddings.class_embedding + embeddings.position_embedding.weight[0]).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        full = model(x).logits.gather(1, target[:, None]).squeeze(1)
        alone = model.logits_from_embeddings(cls).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(values.sum(dim=1), full - alone, atol=1e-4, rtol=1e-4)


def test_logits_from_embeddings_matches_forward(model):
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.logits_from_embeddings(model.vision_model.embeddings(x)), model(x).logits)


@pytest.mark.parametrize("value", ["log_prob", "prob"])
def test_value_options_follow_the_pixel_path(model, value):
    x = images()
    kwargs = dict(num_samples=64, seed=1, value=value)
    torch.testing.assert_close(
        model_kernel_shap(model, x, 0, **kwargs),
        model_kernel_shap(model, x, 0, masking="pixel", **kwargs),
        atol=1e-5,
        rtol=1e-5,
    )


def test_seed_and_batch_size(model):
    x = images()
    a = model_kernel_shap(model, x, 1, num_samples=64, seed=5, batch_size=7)
    b = model_kernel_shap(model, x, 1, num_samples=64, seed=5, batch_size=64)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, model_kernel_shap(model, x, 1, num_samples=64, seed=6))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(masking="attention"), ValueError, "masking must be one of"),
        (dict(value="odds"), ValueError, "value must be one of"),
        (dict(target=3), ValueError, r"target must be in \[0, 3\)"),
        (dict(target=torch.tensor([0, 1])), ValueError, r"shape \(3,\)"),
        (dict(target=1.0), TypeError, "target"),
        (dict(num_samples=8), ValueError, "num_samples"),
        (dict(pixel_values=torch.randn(3, 3, 24, 24)), ValueError, "pixel_values must have shape"),
    ],
)
def test_bad_input(model, kwargs, error, message):
    arguments = dict(pixel_values=images(), target=0, num_samples=64, seed=0) | kwargs
    with pytest.raises(error, match=message):
        model_kernel_shap(model, **arguments)


def test_rejects_other_models():
    with pytest.raises(TypeError, match="patch_kernel_shap"):
        model_kernel_shap(tiny_clip_model(), images(), 0)
