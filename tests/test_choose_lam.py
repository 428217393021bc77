"""Tests for hf_explvec.lam.choose_lam: the rule on known cases, the table against a hand computation, the unlabeled
path, the cost, bad input, and the user's model left unchanged."""

import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import hf_explvec.lam as lam_module
from hf_explvec import IncompatibleKeysError, SelfExplainingCLIPVision, TaskVector, e_rmse, model_kernel_shap
from hf_explvec.data import image_processor_for
from hf_explvec.evaluation import select_target
from hf_explvec.lam import LamChoice, choose_lam
from hf_explvec.testing import tiny_clip_model, tiny_clip_tokenizer

CLASSES = ["a", "b", "c"]
SAMPLES = 40  # Kernel SHAP coalitions per image: >= 2 * 16 patches, small enough for a fast test


@pytest.fixture(scope="module")
def model():
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(), CLASSES, tokenizer=tiny_clip_tokenizer())


@pytest.fixture(scope="module")
def other(model):
    """Another tower under the same head: `model + 1·vector` is this model."""
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=1), CLASSES, class_embeddings=model.class_embeddings)


@pytest.fixture(scope="module")
def vector(model, other):
    return TaskVector.from_models(model, other)


def _images(count=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def _pixels(model, images):
    return image_processor_for(model)(images=images, return_tensors="pt")["pixel_values"]


def _predictions(model, pixels):
    with torch.no_grad():
        return model(pixels).logits.argmax(-1)


@pytest.fixture
def reference_is_other(monkeypatch, other):
    """Kernel SHAP replaced by `other`'s one-pass attributions of the explained class: the E-RMSE of λ = 1 is then
    ~0 and the lowest of any λ. Records the explained classes of each call."""
    calls = []

    def fake(model, pixel_values, targets, num_samples, seed, batch_size, num_patches):
        calls.append(targets.clone())
        with torch.no_grad():
            return select_target(other(pixel_values).patch_attributions, targets)

    monkeypatch.setattr(lam_module, "_kernel_shap", fake)
    return calls


# ------------------------------------------------------------------------------------------------------
# The rule
# ------------------------------------------------------------------------------------------------------


def test_with_labels_the_lowest_e_rmse_wins_only_within_the_tolerance(model, other, vector, reference_is_other):
    images = _images()
    pixels = _pixels(model, images)
    mine, theirs = _predictions(model, pixels), _predictions(other, pixels)
    assert (mine != theirs).all()  # the two towers disagree on every image: the vector changes every prediction
    lams = [0.0, 0.5, 1.0, 2.0]

    # Labels = the other tower's predictions: λ = 1 is exact (E-RMSE ~0) and the most accurate: chosen.
    choice = choose_lam(model, vector, images, lams=lams, labels=theirs.tolist())
    assert choice.lam == 1.0 and choice.labeled
    row = {r["lam"]: r for r in choice.table}
    assert row[1.0]["e_rmse"] < 1e-4 < min(r["e_rmse"] for r in choice.table if r["lam"] != 1.0)
    assert row[0.0]["accuracy"] == 0.0 and row[1.0]["accuracy"] == 1.0

    # Labels = this model's predictions: λ = 1 gets every image wrong, so it is outside the tolerance and the rule
    # takes the lowest E-RMSE among the others; a tolerance of 1 lets it back in.
    choice = choose_lam(model, vector, images, lams=lams, labels=mine.tolist())
    assert row[1.0]["eligible"] and not {r["lam"]: r for r in choice.table}[1.0]["eligible"]
    eligible = [r for r in choice.table if r["eligible"]]
    assert choice.lam != 1.0 and choice.lam == min(eligible, key=lambda r: r["e_rmse"])["lam"]
    assert [r["lam"] for r in choice.table if r["chosen"]] == [choice.lam]
    assert choose_lam(model, vector, images, lams=lams, labels=mine.tolist(), max_accuracy_drop=1.0).lam == 1.0
    for calls in reference_is_other[-len(lams) :]:  # with labels, Kernel SHAP explains the label class
        assert calls.equal(mine)


def test_without_labels_agreement_with_lam_zero_replaces_accuracy(model, other, vector, reference_is_other):
    images = _images()
    pixels = _pixels(model, images)
    mine, theirs = _predictions(model, pixels), _predictions(other, pixels)
    split = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())  # no label column
    choice = choose_lam(model, vector, split, lams=[0.0, 1.0], kernel_shap_samples=SAMPLES)
    assert not choice.labeled and "no labels" in choice.rule
    assert [r["accuracy"] for r in choice.table] == [None, None]
    assert [r["agreement"] for r in choice.table] == [1.0, 0.0]
    assert choice.lam == 0.0  # λ = 1 changes every prediction
    assert reference_is_other[0].equal(mine) and reference_is_other[1].equal(theirs)  # each model's own prediction
    assert choose_lam(model, vector, split, lams=[0.0, 1.0], max_accuracy_drop=1.0).lam == 1.0
    labeled = split.add_column("label", theirs.tolist())
    assert not choose_lam(model, vector, labeled, lams=[0.0, 1.0], label_column=None).labeled
    assert choose_lam(model, vector, labeled, lams=[0.0, 1.0]).labeled


# ------------------------------------------------------------------------------------------------------
# The measurements, against a hand computation with the library's parts
# ------------------------------------------------------------------------------------------------------


def test_table_matches_a_hand_computation_and_states_the_cost(model, vector):
    images = _images()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    split = datasets.Dataset.from_dict({"img": images, "label": labels.tolist()})
    split = split.cast_column("img", datasets.Image()).cast_column("label", datasets.ClassLabel(names=CLASSES))
    lams = [0.0, 0.25, 1.0]
    choice = choose_lam(model, vector, split, lams=[1.0, 0.0, 0.25], kernel_shap_samples=SAMPLES, batch_size=4)
    assert isinstance(choice, LamChoice) and [r["lam"] for r in choice.table] == lams

    pixels = _pixels(model, images)
    expected = []
    for lam in lams:
        current = model if lam == 0 else vector.apply_to(model, lam, inplace=False)
        with torch.no_grad():
            outputs = current(pixels)
        shap = model_kernel_shap(current, pixels, labels, num_samples=SAMPLES, seed=0)
        accuracy = float((outputs.logits.argmax(-1) == labels).float().mean())
        expected.append((lam, accuracy, e_rmse(select_target(outputs.patch_attributions, labels), shap)))
    for row, (lam, accuracy, error) in zip(choice.table, expected, strict=True):
        assert row["lam"] == lam
        assert row["accuracy"] == pytest.approx(accuracy) and row["e_rmse"] == pytest.approx(error, rel=1e-4)
    eligible = [(error, lam) for lam, accuracy, error in expected if accuracy >= expected[0][1] - 0.04 or lam == 0]
    assert choice.lam == min(eligible)[1]

    assert choice.cost == {"forward_passes": 18, "kernel_shap_evaluations": 18 * SAMPLES, "seconds": choice.seconds}
    assert choice.num_images == 6 and choice.kernel_shap_samples == SAMPLES and choice.seconds > 0
    text = str(choice)
    assert text.startswith(f"chosen λ = {choice.lam:g} (labels: lowest E-RMSE")
    assert "accuracy" in text and f"{18 * SAMPLES:,} Kernel SHAP model evaluations" in text
    assert len(text.splitlines()) == 2 + len(lams) + 1


def test_default_budgets_and_class_names_mapped_from_the_data_set(model, vector, reference_is_other):
    images = _images(2)
    unlabeled = choose_lam(model, vector, images, lams=[0.0, 1.0])
    assert unlabeled.kernel_shap_samples == 250 and unlabeled.kernel_shap_evaluations == 2 * 2 * 250
    reversed_names = datasets.ClassLabel(names=CLASSES[::-1])  # the data set numbers the classes c, b, a
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 2]}).cast_column("image", datasets.Image())
    split = split.cast_column("label", reversed_names)
    labeled = choose_lam(model, vector, split, lams=[0.0, 1.0])
    assert labeled.kernel_shap_samples == 500
    assert reference_is_other[-1].tolist() == [2, 0]  # "c" and "a" in the model's numbering


# ------------------------------------------------------------------------------------------------------
# The user's model, and bad input
# ------------------------------------------------------------------------------------------------------


def test_the_users_model_is_left_unchanged(model, vector, reference_is_other):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        choose_lam(model, vector, _images(2), lams=[0.0, 0.5, 1.0])
        assert model.training
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_input_is_refused_before_anything_runs(model, vector, reference_is_other):
    images = _images(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="empty"):
        choose_lam(model, vector, [])
    with pytest.raises(ValueError, match="no rows"):
        choose_lam(model, vector, datasets.Dataset.from_dict({"image": [], "label": []}))
    for lams, message in [
        ([0.0, math.nan], r"lams\[1\] must be finite"),
        ([0.0, math.inf], r"lams\[1\] must be finite"),
        ([0.5, 1.0], "must contain 0"),
        ([0.0], "only 0"),
        ([0.0, 1.0, 1.0], "must not repeat"),
    ]:
        with pytest.raises(ValueError, match=message):
            choose_lam(model, vector, images, lams=lams)
    with pytest.raises(TypeError, match="lams must be a sequence"):
        choose_lam(model, vector, images, lams=1.0)
    with pytest.raises(TypeError, match=r"lams\[1\] must be a real number"):
        choose_lam(model, vector, images, lams=[0.0, "1"])
    foreign = TaskVector.from_models(tiny_clip_model(num_hidden_layers=3), tiny_clip_model(1, num_hidden_layers=3))
    with pytest.raises(IncompatibleKeysError, match="does not fit"):
        choose_lam(model, foreign, images, lams=[0.0, 1.0])
    with pytest.raises(TypeError, match="TaskVector"):
        choose_lam(model, vector.state_dict(), images)
    with pytest.raises(TypeError, match="nn.Module"):
        choose_lam("model", vector, images)
    with pytest.raises(ValueError, match=r"label 3 is out of range.*config.id2label of SelfExplainingCLIPVision"):
        choose_lam(model, vector, images, labels=[0, 3])
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        choose_lam(model, vector, images, labels=[0])
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1]}).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match="label_column 'y' is not a column"):
        choose_lam(model, vector, split, label_column="y")
    with pytest.raises(ValueError, match="labels= is for a list of images"):
        choose_lam(model, vector, split, labels=[0, 1])
    wrong = split.cast_column("label", datasets.ClassLabel(names=["x", "y"]))
    with pytest.raises(ValueError, match=r"classes \['x', 'y'\].*not the model's"):
        choose_lam(model, vector, wrong)
    with pytest.raises(ValueError, match="max_accuracy_drop must be >= 0"):
        choose_lam(model, vector, images, max_accuracy_drop=-0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_vector_of_another_base_is_refused_unless_check_base_is_false(model, reference_is_other):
    from hf_explvec.base_check import BaseModelMismatchError

    foreign = TaskVector.from_models(tiny_clip_model(seed=5), tiny_clip_model(seed=6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BaseModelMismatchError, match="does not descend from the vector's base"):
        choose_lam(model, foreign, _images(2), lams=[0.0, 1.0])
    assert not reference_is_other  # refused before anything was measured
    choice = choose_lam(model, foreign, _images(2), lams=[0.0, 1.0], check_base=False)
    assert [r["lam"] for r in choice.table] == [0.0, 1.0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="check_base must be a bool"):
        choose_lam(model, foreign, _images(2), lams=[0.0, 1.0], check_base="no")


def test_a_kernel_shap_budget_below_the_minimum_is_refused(model, vector):
    with pytest.raises(ValueError, match="kernel_shap_samples=8 is below Kernel SHAP's minimum of 32 for 16 patches"):
        choose_lam(model, vector, _images(1), lams=[0.0, 1.0], kernel_shap_samples=8)


def test_a_users_classifier_is_measured_with_pixel_masking_kernel_shap():
    from transformers import CLIPForImageClassification

    from hf_explvec import ExplainingCLIPForImageClassification, patch_kernel_shap
    from hf_explvec.testing import tiny_clip_config

    config = tiny_clip_config()
    config.id2label = {0: "cat", 1: "dog"}
    classifier = CLIPForImageClassification(config).eval()
    classifier.vision_model.load_state_dict(tiny_clip_model().vision_model.state_dict())  # fine-tuned from the base
    classifier = ExplainingCLIPForImageClassification.from_classifier(classifier)
    vector = TaskVector.from_models(tiny_clip_model(), tiny_clip_model(seed=2))  # its projection is skipped
    images, labels = _images(4), torch.tensor([0, 1, 1, 0])
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    choice = choose_lam(classifier, vector, images, labels=labels, lams=[0.0, 0.5], kernel_shap_samples=SAMPLES)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())

    pixels = _pixels(classifier, images)
    for row in choice.table:
        current = classifier if row["lam"] == 0 else vector.apply_to(classifier, row["lam"], inplace=False)
        with torch.no_grad():
            outputs = current(pixels)
        shap = patch_kernel_shap(lambda x, m=current: m(x).logits, pixels, labels, patch_size=8,
                                 num_samples=SAMPLES, seed=0)  # fmt: skip
        assert row["e_rmse"] == pytest.approx(e_rmse(select_target(outputs.patch_attributions, labels), shap), rel=1e-4)
        assert row["accuracy"] == pytest.approx(float((outputs.logits.argmax(-1) == labels).float().mean()))
