"""The transferable-explainer baseline (hf_explvec.evaluation.tve): its default head is the base model's own, the
ridge fit recovers a planted head on held-out images, shrinks toward the base's projection, applies to other classes
with no training, leaves the base unchanged, and names bad input."""

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision
from hf_explvec.evaluation.tve import TransferableExplainer
from hf_explvec.testing import tiny_clip_model

CLASSES = ["a", "b", "c"]


def make_base():
    clip = tiny_clip_model(seed=0)
    embeddings = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    return SelfExplainingCLIPVision.from_clip(clip, CLASSES, class_embeddings=embeddings).eval()


@pytest.fixture(scope="module")
def base():
    return make_base()


def images(count, seed):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class Split:
    def __init__(self, count, seed):
        self.pixel_values, self.labels = images(count, seed), torch.arange(count) % 3

    def __len__(self):
        return len(self.labels)


def test_the_default_head_is_the_base_models_own_attributions(base):
    x = images(4, 1)
    with torch.no_grad():
        own = base(x).patch_attributions
    torch.testing.assert_close(TransferableExplainer(base).attributions(x, base.class_embeddings), own,
                               rtol=1e-4, atol=1e-6)  # fmt: skip


def test_fit_recovers_a_planted_head_on_held_out_images(base):
    planted = TransferableExplainer(base, torch.randn(32, 16, generator=torch.Generator().manual_seed(2)))
    train, test = Split(24, 3), Split(6, 4)
    labels = planted.explain(train, base.class_embeddings)[0]
    fitted = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e-9)
    expected, _ = planted.explain(test, base.class_embeddings)
    got, seconds = fitted.explain(test, base.class_embeddings)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))
    assert seconds > 0 and got.shape == (6, 16)
    default = TransferableExplainer(base).explain(test, base.class_embeddings)[0]
    assert (default - expected).abs().max() > 10 * (got - expected).abs().max()  # the fit moved the head


def test_a_strong_ridge_keeps_the_base_projection(base):
    train = Split(12, 5)
    labels = torch.randn(12, 16, generator=torch.Generator().manual_seed(6))
    strong = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e9)
    torch.testing.assert_close(strong.weight, TransferableExplainer(base).weight, rtol=1e-4, atol=1e-6)
    weak = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e-6)
    assert (weak.weight - strong.weight).abs().max() > 1e-3


def test_applies_to_other_classes_without_training_and_leaves_the_base_unchanged(base):
    before = {key: value.clone() for key, value in base.state_dict().items()}
    train = Split(12, 7)
    labels = torch.randn(12, 16, generator=torch.Generator().manual_seed(8))
    explainer = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels)
    target_classes = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(9)))
    values = explainer.attributions(images(2, 10), target_classes)
    assert values.shape == (2, 5, 16) and torch.isfinite(values).all()
    assert all(torch.equal(value, before[key]) for key, value in base.state_dict().items())


def test_conjugate_gradients_reach_the_exact_solution(base):
    train = Split(12, 12)
    labels = torch.randn(12, 16, generator=torch.Generator().manual_seed(13))
    exact = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e-2, solver="exact")
    iterative = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e-2, solver="cg")
    torch.testing.assert_close(iterative.weight, exact.weight, rtol=1e-6, atol=1e-8)
    assert (exact.weight - TransferableExplainer(base).weight).abs().max() > 1e-3
    one_step = TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=1e-2, solver="cg",
                                         max_iterations=1)  # fmt: skip
    assert (one_step.weight - exact.weight).abs().max() > 1e-6  # the iterations are real


def test_bad_input_is_named(base):
    train = Split(6, 11)
    labels = torch.zeros(6, 16)
    with pytest.raises(ValueError, match="one row per image"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels[:5], labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels + 3, labels)
    with pytest.raises(ValueError, match="NaN"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels, labels + float("nan"))
    with pytest.raises(ValueError, match="ridge"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, ridge=-1.0)
    with pytest.raises(ValueError, match="solver must be"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels, labels, solver="svd")
    with pytest.raises(ValueError, match=r"shap_values must have shape \(6, 16\)"):
        TransferableExplainer.fit(base, train.pixel_values, train.labels, torch.zeros(6, 9))
    with pytest.raises(ValueError, match="no training images"):
        TransferableExplainer.fit(base, train.pixel_values[:0], train.labels[:0], labels[:0])
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape \(32, 16\)"):
        TransferableExplainer(base, torch.zeros(16, 32))
    with pytest.raises(ValueError, match=r"class_embeddings must have shape \(C, 16\)"):
        TransferableExplainer(base).attributions(images(1, 0), torch.zeros(3, 8))
    with pytest.raises(TypeError, match="SelfExplainingCLIPVision"):
        TransferableExplainer(torch.nn.Linear(2, 2))
