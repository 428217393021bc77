"""The practitioner path end to end through LocalHub, by names only (issue 10's "done when"):

publish a vector; fine-tune and push a CLIPForImageClassification with its processor; from the names apply, explain,
write overlays, choose λ, push the explained model; load it back with AutoModel and through pipeline by name. Plus
undoing a vector, a foreign base refused, and bad inputs.
"""

import math

import datasets
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from practitioner_world import (
    BASE,
    CLASSES,
    CLASSIFIER,
    FOREIGN_BASE,
    FOREIGN_VECTOR,
    LAM,
    VECTOR,
    color_image,
    publish_vector,
    publish_world,
    twin_vector,
    write_images,
)
from transformers import AutoModel, AutoModelForImageClassification, CLIPForImageClassification, CLIPModel, pipeline

import hf_explvec
from hf_explvec import TaskVector
from hf_explvec.base_check import BaseModelMismatchError
from hf_explvec.explain import explain, save_overlays
from hf_explvec.lam import choose_lam

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPLAINED = "me/color-classifier-explained"


@pytest.fixture
def world(local_hub):
    return publish_world(foreign=False)


@pytest.fixture
def foreign_world(local_hub):
    return publish_world(foreign=True)


def _pixels(count=6, seed=77):
    from hf_explvec.data.images import clip_image_processor

    images = [color_image(i % 2, seed + i) for i in range(count)]
    return clip_image_processor(32)(images=images, return_tensors="pt")["pixel_values"]


def _vision(model) -> dict[str, torch.Tensor]:
    from hf_explvec.arithmetic import vision_state

    return {k: v.detach().clone() for k, v in vision_state(model.state_dict()).items()}


# ------------------------------------------------------------------------------------------------- the whole story
def test_the_whole_story_by_names(world, tmp_path):
    # 1. apply, from the names: provenance pins both commits
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR)
    assert explained.config.explainability == {
        "model": CLASSIFIER,
        "model_revision": world["classifier"],
        "vector": VECTOR,
        "vector_revision": world["vector"],
        "lam": LAM,
    }
    # the same logits as the user's classifier with λ·τ added by hand
    by_hand = TaskVector.from_pretrained(VECTOR).apply_to(CLIPForImageClassification.from_pretrained(CLASSIFIER), LAM)
    pixels = _pixels()
    with torch.no_grad():
        outputs = explained(pixel_values=pixels)
        torch.testing.assert_close(outputs.logits, by_hand(pixel_values=pixels).logits, rtol=0, atol=1e-5)
    assert outputs.patch_attributions.shape == (6, 2, 16)

    # 2. explain image files and write overlays
    files = [path for path, _ in write_images(tmp_path / "images", 4)]
    explanations = explain(explained, files)
    assert [e.label for e in explanations] == [CLASSES[i % 2] for i in range(4)]  # the fine-tune learnt the colours
    assert all(e.attributions.shape == (4, 4) and 0.5 < e.score <= 1.0 for e in explanations)
    overlays = save_overlays(explanations, None, tmp_path / "overlays")
    assert len(overlays) == 4 and all(Image.open(path).format == "PNG" for path in overlays)

    # 3. choose λ on labelled validation data (imagefolder: labels from the folder names)
    write_images(tmp_path / "validation", 6, seed=3, by_class=True)
    split = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "validation"), split="train")
    plain = hf_explvec.load_explaining_model(CLASSIFIER)
    result = choose_lam(plain, TaskVector.from_pretrained(VECTOR), split, lams=[0.0, 0.25, 0.5], kernel_shap_samples=64)
    assert result.lam in (0.0, 0.25, 0.5) and len(result.table) == 3

    # 4. push the explained model with that λ, by names
    chosen = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, lam=result.lam)
    commit = chosen.push_to_hub(EXPLAINED)
    files_pushed = set(HfApi().list_repo_files(EXPLAINED))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files_pushed
    card = ModelCard.load(EXPLAINED)
    assert card.data.base_model == [CLASSIFIER, VECTOR] and card.data.base_model_relation == "merge"
    assert world["vector"] in card.text and f"| λ | {result.lam} |" in card.text
    assert f"| Classifier it was made from | {CLASSIFIER} (revision `{world['classifier']}`) |" in card.text

    # 5. load it back by name: AutoModel, AutoModelForImageClassification, pipelines
    for auto in (AutoModel, AutoModelForImageClassification):
        loaded = auto.from_pretrained(EXPLAINED)
        assert type(loaded) is type(chosen)
        assert loaded.config.explainability == chosen.config.explainability
        with torch.no_grad():
            again, reference = loaded(pixel_values=pixels), chosen(pixel_values=pixels)
        torch.testing.assert_close(again.logits, reference.logits, rtol=0, atol=0)
        torch.testing.assert_close(again.patch_attributions, reference.patch_attributions, rtol=0, atol=0)
    classify = pipeline("image-classification", model=EXPLAINED, revision=commit.oid)
    mine = explain(chosen, files)
    for path, explanation in zip(files, mine, strict=True):
        [top] = classify(path, top_k=1)
        assert top["label"] == explanation.label and top["score"] == pytest.approx(explanation.score, abs=1e-5)
    explainer = pipeline("image-explanation", model=EXPLAINED)
    [top] = explainer(files[0], top_k=1)
    assert top["label"] == mine[0].label
    torch.testing.assert_close(torch.tensor(top["attributions"]), mine[0].attributions, rtol=0, atol=1e-6)


def test_image_explanation_pipeline_returns_every_label_and_refuses_a_plain_classifier(world):
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR)
    explained.push_to_hub(EXPLAINED)
    image = color_image(0, 5)
    results = pipeline("image-explanation", model=EXPLAINED)(image)
    assert sorted(r["label"] for r in results) == sorted(CLASSES)
    with torch.no_grad():  # each label's grid is that class's row of the model's patch_attributions
        from hf_explvec.data.images import clip_image_processor

        outputs = explained(pixel_values=clip_image_processor(32)(images=[image], return_tensors="pt")["pixel_values"])
    for result in results:
        class_id = explained.config.label2id[result["label"]]
        expected = outputs.patch_attributions[0, class_id].view(4, 4)
        torch.testing.assert_close(torch.tensor(result["attributions"]), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no patch_attributions"):
        pipeline("image-explanation", model=CLASSIFIER)(image)


def test_the_explained_model_keeps_the_classifiers_own_image_processor(world, tmp_path):
    from transformers import AutoImageProcessor

    from hf_explvec.data.images import clip_image_processor

    own = clip_image_processor(32)
    own.image_mean = [0.5, 0.5, 0.5]  # not CLIP's: pipeline(EXPLAINED) must preprocess as the classifier does
    own.push_to_hub(CLASSIFIER)
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR)
    explained.save_pretrained(tmp_path / "saved")
    explained.push_to_hub(EXPLAINED)
    for where in (tmp_path / "saved", EXPLAINED):
        assert list(AutoImageProcessor.from_pretrained(where).image_mean) == [0.5, 0.5, 0.5]


# ------------------------------------------------------------------------------------------------------------ undo
def test_remove_vector_restores_the_weights_and_clears_provenance(world):
    original = _vision(CLIPForImageClassification.from_pretrained(CLASSIFIER))
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, lam=0.7)
    assert any(not torch.equal(_vision(explained)[k], original[k]) for k in original)
    assert hf_explvec.remove_vector(explained) is explained  # the vector is loaded by its recorded id and revision
    assert explained.config.explainability is None
    restored = _vision(explained)
    assert restored.keys() == original.keys()
    for key, value in original.items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no explainability vector applied"):
        hf_explvec.remove_vector(explained)


def test_remove_vector_after_a_round_trip_and_pinned_revision(world):
    first = world["vector"]
    publish_vector(CLIPModel.from_pretrained(BASE), seed=5)  # a second version of the vector on main
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, revision=first)
    assert explained.config.explainability["vector_revision"] == first
    explained.push_to_hub(EXPLAINED)
    loaded = AutoModel.from_pretrained(EXPLAINED)
    latest = TaskVector.from_pretrained(VECTOR)
    with pytest.raises(ValueError, match="would not restore"):  # the wrong version is refused, nothing changes
        hf_explvec.remove_vector(loaded, latest)
    assert loaded.config.explainability["vector_revision"] == first
    hf_explvec.remove_vector(loaded)  # loads revision `first`, as recorded
    original = _vision(CLIPForImageClassification.from_pretrained(CLASSIFIER))
    for key, value in _vision(loaded).items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6)


def test_a_vector_from_memory_is_removed_when_given(world):
    vector = twin_vector(CLIPModel.from_pretrained(BASE), recommended_lam=0.3)
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, vector)
    record = explained.config.explainability
    assert record["vector"] is None and record["vector_revision"] is None and record["lam"] == 0.3
    with pytest.raises(ValueError, match="applied from memory"):
        hf_explvec.remove_vector(explained)
    hf_explvec.remove_vector(explained, vector)
    assert explained.config.explainability is None


def test_remove_vector_refuses_a_vector_that_is_not_the_recorded_one(world):
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, lam=0.7)
    before = _vision(explained)
    other = twin_vector(CLIPModel.from_pretrained(BASE), recommended_lam=0.3)  # in memory: not VECTOR
    with pytest.raises(ValueError, match="would not restore"):
        hf_explvec.remove_vector(explained, other)
    assert explained.config.explainability["vector"] == VECTOR
    assert all(torch.equal(value, before[key]) for key, value in _vision(explained).items())
    hf_explvec.remove_vector(explained, TaskVector.from_pretrained(VECTOR))  # the recorded one, given: accepted
    assert explained.config.explainability is None


def test_apply_vector_to_a_copy_made_by_hand_names_the_classifier(world):
    model = hf_explvec.ExplainingCLIPForImageClassification.from_pretrained(CLASSIFIER)
    explained = hf_explvec.apply_vector(model, VECTOR, lam=0.5)
    record = explained.config.explainability
    assert record["model"] == CLASSIFIER and record["model_revision"] == model.config.classifier_revision is not None


def test_choose_lam_refuses_a_model_that_already_has_the_vector_and_a_budget_below_2m(world):
    validation = [color_image(i % 2, 300 + i) for i in range(2)]
    vector = TaskVector.from_pretrained(VECTOR)
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR, lam=0.5)
    with pytest.raises(ValueError, match="already has the vector"):
        choose_lam(explained, vector, validation, lams=[0.0, 0.5])
    fresh = hf_explvec.load_explaining_model(CLASSIFIER)
    with pytest.raises(ValueError, match="below Kernel SHAP's minimum of 32 for 16 patches"):
        choose_lam(fresh, vector, validation, lams=[0.0, 0.5], kernel_shap_samples=8)


# ----------------------------------------------------------------------------------------------------- base check
def test_a_foreign_base_is_refused_naming_it_and_can_be_overridden(foreign_world):
    with pytest.raises(BaseModelMismatchError, match=FOREIGN_BASE):
        hf_explvec.from_pretrained_with_vector(CLASSIFIER, FOREIGN_VECTOR)
    forced = hf_explvec.from_pretrained_with_vector(CLASSIFIER, FOREIGN_VECTOR, check_base=False)
    assert forced.config.explainability["vector"] == FOREIGN_VECTOR


def test_apply_vector_refuses_a_foreign_base_and_leaves_the_model_unchanged(foreign_world):
    model = hf_explvec.load_explaining_model(CLASSIFIER)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BaseModelMismatchError, match=FOREIGN_BASE):
        hf_explvec.apply_vector(model, FOREIGN_VECTOR)
    assert model.config.explainability is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------------------------ zero-shot CLIP
def test_a_clip_checkpoint_without_head_is_refused_unless_class_names_are_given(world):
    with pytest.raises(ValueError, match=r"classifier\.weight.*class_names"):
        hf_explvec.from_pretrained_with_vector(BASE, VECTOR)
    zero_shot = hf_explvec.from_pretrained_with_vector(BASE, VECTOR, class_names=CLASSES)
    assert zero_shot.config.class_names == CLASSES
    assert zero_shot.config.explainability["model"] == BASE
    with torch.no_grad():
        assert zero_shot(pixel_values=_pixels(2)).patch_attributions.shape == (2, 2, 16)


# ------------------------------------------------------------------------------------------------------ bad input
def test_lam_defaults_to_the_vectors_recommendation_or_must_be_given(world):
    publish_vector(CLIPModel.from_pretrained(BASE), "org/no-lam-vector", lam=None)
    with pytest.raises(ValueError, match="recommended_lam"):
        hf_explvec.from_pretrained_with_vector(CLASSIFIER, "org/no-lam-vector")
    assert hf_explvec.from_pretrained_with_vector(CLASSIFIER, "org/no-lam-vector", lam=0.2).config.explainability[
        "lam"
    ] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lam": math.nan}, ValueError, "finite"),
        ({"lam": "0.5"}, TypeError, "real number"),
        ({"lam": True}, TypeError, "real number"),
        ({"vector": 3}, TypeError, "vector must be"),
        ({"model": 3}, TypeError, "model must be"),
        ({"model": "me/no-such-model"}, FileNotFoundError, "me/no-such-model"),
        ({"vector": "org/no-such-vector"}, FileNotFoundError, "org/no-such-vector"),
    ],
)
def test_bad_input_is_a_typed_error_naming_the_problem(world, kwargs, error, match):
    arguments = {"model": CLASSIFIER, "vector": VECTOR, **kwargs}
    with pytest.raises(error, match=match):
        hf_explvec.from_pretrained_with_vector(arguments.pop("model"), arguments.pop("vector"), **arguments)


def test_a_model_with_a_vector_applied_is_refused_a_second_one(world):
    explained = hf_explvec.from_pretrained_with_vector(CLASSIFIER, VECTOR)
    before = _vision(explained)
    with pytest.raises(ValueError, match="already has the vector org/explain-vector"):
        hf_explvec.apply_vector(explained, VECTOR)
    assert all(torch.equal(_vision(explained)[k], v) for k, v in before.items())


def test_a_user_module_is_not_modified(world):
    classifier = CLIPForImageClassification.from_pretrained(CLASSIFIER)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    explained = hf_explvec.from_pretrained_with_vector(classifier, VECTOR)
    assert explained.config.explainability["model"] == CLASSIFIER
    assert explained.config.explainability["model_revision"] is None  # an object's commit is not known
    assert all(torch.equal(classifier.state_dict()[k], v) for k, v in before.items())
