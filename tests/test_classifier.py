"""ExplainingCLIPForImageClassification (the user's own linear head per patch) and explaining_model (dispatch)."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    CLIPImageProcessor,
    CLIPVisionModel,
    pipeline,
)

from hf_explvec import (
    ExplainingCLIPForImageClassification,
    ExplainingCLIPForImageClassificationConfig,
    MissingHeadError,
    SelfExplainingCLIPVision,
    TaskVector,
    attribution_map,
    explaining_model,
)
from hf_explvec.data.images import clip_image_processor
from hf_explvec.testing import TINY_VISION, tiny_clip_config, tiny_clip_model, tiny_clip_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["cat", "dog", "bird"]


def make_classifier(seed=0, clip=None, names=NAMES) -> CLIPForImageClassification:
    """A CLIPForImageClassification with random weights drawn under `seed` (vision tower copied from `clip`)."""
    config = tiny_clip_config()
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = CLIPForImageClassification(config).eval()
        torch.nn.init.normal_(classifier.classifier.bias)  # a non-zero bias, so the sums test it
    if clip is not None:
        classifier.vision_model.load_state_dict(clip.vision_model.state_dict())
    return classifier


@pytest.fixture(scope="module")
def classifier():
    return make_classifier()


@pytest.fixture
def model(classifier):
    return ExplainingCLIPForImageClassification.from_classifier(classifier)


def pixels(batch=2, seed=0, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_images(count, seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)) for i in range(count)]


# --------------------------------------------------------------------------------------- logits and attributions
def test_logits_are_exactly_the_classifiers_and_attributions_sum_to_logit_minus_bias(classifier, model):
    x = pixels(4)
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        reference = classifier(x, labels=labels)
        outputs = model(x, labels=labels)
    assert torch.equal(outputs.logits, reference.logits)
    assert outputs.patch_attributions.shape == (4, 3, 16)
    torch.testing.assert_close(
        outputs.patch_attributions.sum(dim=-1), outputs.logits - model.classifier.bias, rtol=0, atol=1e-5
    )
    assert model.classifier.bias.abs().min() > 1e-3  # the bias is really subtracted
    torch.testing.assert_close(outputs.loss, reference.loss)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(reference.logits, labels))
    assert outputs.image_embeds is None and outputs.attribution_loss is None


def test_attributions_are_the_head_applied_to_each_patch_token(model):
    x = pixels()
    outputs = model(x)
    tokens = model.vision_model(pixel_values=x).last_hidden_state[:, 1:]  # before post_layernorm
    expected = torch.einsum("bmh,ch->bcm", tokens, model.classifier.weight) / 16
    torch.testing.assert_close(outputs.patch_attributions, expected)
    # Row-major order: changing only the top-right patch (row 0, col 3 -> index 3) changes patch 3's attributions most.
    y = x[:1].clone()
    y[..., 0:8, 24:32] += 3.0
    change = (model(y).patch_attributions - model(x[:1]).patch_attributions).abs().sum(dim=1)[0]
    assert int(change.argmax()) == 3
    assert attribution_map(outputs).shape == (2, 4, 4)


def test_weights_copy_one_to_one_with_the_same_keys(classifier, model):
    ours, theirs = model.state_dict(), classifier.state_dict()
    assert set(ours) == set(theirs)
    assert {"classifier.weight", "classifier.bias", "vision_model.embeddings.patch_embedding.weight"} <= set(ours)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():  # a copy: editing the explaining model leaves the user's classifier alone
        model.classifier.weight.add_(1.0)
    assert not torch.equal(model.classifier.weight, classifier.classifier.weight)
    assert not model.training
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"} and model.config.label2id["bird"] == 2
    assert model.config.class_names == NAMES and model.config.num_patches == 16
    assert model.config._attn_implementation == classifier.config._attn_implementation


def test_gradients_reach_the_tower_and_head(model):
    model.train()
    model(pixels(), labels=torch.tensor([0, 1])).loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_hidden_states_are_the_classifiers(classifier, model):
    with torch.no_grad():
        outputs = model(pixels(), output_hidden_states=True)
        reference = classifier(pixels(), output_hidden_states=True)
    assert len(outputs.hidden_states) == 3 and outputs.hidden_states[-1].shape == (2, 17, 32)
    for ours, theirs in zip(outputs.hidden_states, reference.hidden_states, strict=True):
        assert torch.equal(ours, theirs)


def test_multi_label_loss_is_the_classifiers(classifier):
    multi = copy.deepcopy(classifier)
    multi.config.problem_type = "multi_label_classification"
    model = ExplainingCLIPForImageClassification.from_classifier(multi)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        torch.testing.assert_close(model(pixels(), labels=labels).loss, multi(pixels(), labels=labels).loss)


# --------------------------------------------------------------------------------------- save, load, pipeline
def test_save_and_load_by_auto_classes(model, tmp_path):
    model.config.explainability = {"model": "org/classifier", "vector": "org/vector", "lam": 0.5}
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ExplainingCLIPForImageClassificationConfig)
    assert config.explainability == {
        "model": "org/classifier",
        "model_revision": None,
        "vector": "org/vector",
        "vector_revision": None,
        "lam": 0.5,
    }
    x = pixels()
    expected = model(x)
    for auto in (AutoModel, AutoModelForImageClassification, ExplainingCLIPForImageClassification):
        loaded = auto.from_pretrained(tmp_path)  # no trust_remote_code
        assert type(loaded) is ExplainingCLIPForImageClassification
        outputs = loaded(x)
        assert torch.equal(outputs.logits, expected.logits)
        assert torch.equal(outputs.patch_attributions, expected.patch_attributions)
    processor = CLIPImageProcessor.from_pretrained(tmp_path)
    assert processor.crop_size == {"height": 32, "width": 32}


def top_label_by_hand(model, processor, image):
    with torch.no_grad():
        logits = model(**processor(images=[image], return_tensors="pt")).logits[0]
    return model.config.id2label[int(logits.argmax())], float(logits.softmax(-1).max())


@pytest.mark.parametrize("kind", ["classifier", "zero-shot"])
def test_pipeline_by_path_gives_the_models_top_label(kind, classifier, tmp_path):
    if kind == "classifier":
        model = ExplainingCLIPForImageClassification.from_classifier(classifier)
    else:
        model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), NAMES, tokenizer=tiny_clip_tokenizer())
    model.save_pretrained(tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path))
    assert type(classify.model) is type(model)
    processor = clip_image_processor(32)
    for image in random_images(4):
        predictions = classify(image, top_k=3)
        label, score = top_label_by_hand(model, processor, image)
        assert predictions[0]["label"] == label
        assert predictions[0]["score"] == pytest.approx(score, abs=1e-5)
        assert {p["label"] for p in predictions} == set(NAMES)


def test_save_writes_the_given_image_processor(model, tmp_path):
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model.save_pretrained(tmp_path, image_processor=processor)
    assert list(CLIPImageProcessor.from_pretrained(tmp_path).image_mean) == [0.5] * 3


def test_the_classifiers_own_processor_travels_with_the_model(classifier, tmp_path):
    """A processor saved with the classifier (here with other mean/std than CLIP's) is kept on each save."""
    own = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    classifier.save_pretrained(tmp_path / "classifier")
    own.save_pretrained(tmp_path / "classifier")
    ExplainingCLIPForImageClassification.from_classifier(tmp_path / "classifier").save_pretrained(tmp_path / "a")
    AutoModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    for folder in ("a", "b"):
        saved = CLIPImageProcessor.from_pretrained(tmp_path / folder)
        assert list(saved.image_mean) == [0.5] * 3 and list(saved.image_std) == [0.25] * 3
    image = random_images(1)[0]
    classify = pipeline("image-classification", model=str(tmp_path / "b"))
    model = AutoModel.from_pretrained(tmp_path / "b")
    assert classify(image)[0]["label"] == top_label_by_hand(model, own, image)[0]


def test_explain_uses_the_processor_saved_with_the_classifier_it_was_made_from(classifier, tmp_path):
    """from_classifier(folder) is named after the folder, so explain() reads the classifier's own processor there."""
    from hf_explvec import explain

    own = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    classifier.save_pretrained(tmp_path / "classifier")
    own.save_pretrained(tmp_path / "classifier")
    for model in (
        ExplainingCLIPForImageClassification.from_classifier(tmp_path / "classifier"),
        ExplainingCLIPForImageClassification.from_pretrained(tmp_path / "classifier"),
        ExplainingCLIPForImageClassification.from_classifier(
            CLIPForImageClassification.from_pretrained(tmp_path / "classifier")
        ),
    ):
        assert model.name_or_path == str(tmp_path / "classifier")
        image = random_images(1)[0]
        expected = model(own(images=[image], return_tensors="pt")["pixel_values"]).logits.softmax(-1).max().item()
        assert explain(model, [image])[0].score == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(image_processor=object()), TypeError, "image processor"),
        (dict(push_to_hub=True), ValueError, "push_to_hub"),
    ],
)
def test_save_refuses_bad_arguments_and_writes_nothing(model, tmp_path, kwargs, error, message):
    folder = tmp_path / "out"
    with pytest.raises(error, match=message):
        model.save_pretrained(folder, **kwargs)
    assert not folder.exists()


@pytest.mark.parametrize("kind", ["classifier", "zero-shot"])
def test_push_to_hub_with_the_processor_and_load_by_name(kind, classifier, local_hub):
    from huggingface_hub import HfApi

    if kind == "classifier":
        model = ExplainingCLIPForImageClassification.from_classifier(classifier)
    else:
        model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), NAMES, tokenizer=tiny_clip_tokenizer())
    model.push_to_hub("org/explaining")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(
        HfApi().list_repo_files("org/explaining")
    )
    x = pixels()
    loaded = AutoModelForImageClassification.from_pretrained("org/explaining")
    assert type(loaded) is type(model)
    assert torch.equal(loaded(x).logits, model(x).logits)
    classify = pipeline("image-classification", model="org/explaining")
    for image in random_images(3):
        assert classify(image)[0]["label"] == top_label_by_hand(model, clip_image_processor(32), image)[0]


# ---------------------------------------------------------------------------------------- from_classifier
def test_from_classifier_by_hub_name_records_name_and_commit(classifier, model, local_hub):
    from huggingface_hub import HfApi

    classifier.push_to_hub("org/my-classifier")  # transformers' own push
    commit = HfApi().model_info("org/my-classifier").sha
    x = pixels()
    for revision in (None, "main", commit):  # the branch is resolved to its commit, which is recorded
        loaded = ExplainingCLIPForImageClassification.from_classifier("org/my-classifier", revision=revision)
        assert loaded.config.classifier_name_or_path == "org/my-classifier"
        assert loaded.config.classifier_revision == commit
        assert torch.equal(loaded(x).logits, model(x).logits)
    with pytest.raises(OSError, match="org/missing"):
        ExplainingCLIPForImageClassification.from_classifier("org/missing")


def test_from_classifier_by_path_and_from_pretrained_of_a_classifier(classifier, model, tmp_path):
    classifier.save_pretrained(tmp_path)
    x = pixels()
    for loaded in (
        ExplainingCLIPForImageClassification.from_classifier(str(tmp_path)),
        ExplainingCLIPForImageClassification.from_classifier(tmp_path),
        ExplainingCLIPForImageClassification.from_pretrained(tmp_path),  # a CLIPForImageClassification checkpoint
    ):
        assert type(loaded) is ExplainingCLIPForImageClassification
        assert torch.equal(loaded(x).logits, model(x).logits)
        assert loaded.config.classifier_name_or_path == str(tmp_path)
        assert loaded.config.model_type == "explaining_clip_image_classifier"


def test_missing_classifier_head_is_refused(tmp_path):
    vision_dir, clip_dir = tmp_path / "vision", tmp_path / "clip"
    CLIPVisionModel(tiny_clip_config().vision_config).save_pretrained(vision_dir)
    tiny_clip_model().save_pretrained(clip_dir)
    loaders = [
        (ExplainingCLIPForImageClassification.from_pretrained, vision_dir, "CLIPVisionModel"),
        (ExplainingCLIPForImageClassification.from_pretrained, clip_dir, "CLIPModel"),
        (ExplainingCLIPForImageClassification.from_classifier, clip_dir, "CLIPModel"),
        (ExplainingCLIPForImageClassification.from_classifier, vision_dir, "classifier.weight"),
    ]
    for load, folder, kind in loaders:
        with pytest.raises(MissingHeadError, match=kind) as info:
            load(folder)
        assert isinstance(info.value, ValueError)
        assert info.value.missing_keys == ["classifier.bias", "classifier.weight"]
        message = str(info.value)
        assert "classifier.bias, classifier.weight" in message and "from_classifier" in message


def test_from_classifier_refuses_a_classifier_without_a_linear_head():
    config = tiny_clip_config()
    config.num_labels = 0
    headless = CLIPForImageClassification(config)
    assert isinstance(headless.classifier, torch.nn.Identity)
    with pytest.raises(MissingHeadError, match="no linear classifier .*num_labels=0"):
        ExplainingCLIPForImageClassification.from_classifier(headless)


def test_from_classifier_refuses_bad_input(classifier):
    with pytest.raises(TypeError, match="CLIPForImageClassification"):
        ExplainingCLIPForImageClassification.from_classifier(tiny_clip_model())
    with pytest.raises(TypeError, match="revision"):
        ExplainingCLIPForImageClassification.from_classifier(classifier, revision="main")
    mislabelled = copy.deepcopy(classifier)
    mislabelled.config.id2label = {0: "cat", 1: "dog"}
    with pytest.raises(ValueError, match="3 outputs but its config.id2label has 2"):
        ExplainingCLIPForImageClassification.from_classifier(mislabelled)
    with torch.device("meta"):
        on_meta = CLIPForImageClassification(classifier.config)
    with pytest.raises(ValueError, match="meta device"):
        ExplainingCLIPForImageClassification.from_classifier(on_meta)


# ------------------------------------------------------------------------------------------- bad forward input
@pytest.mark.parametrize(
    "pixel_values, labels, error, message",
    [
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), None, TypeError, "image processor"),
        (torch.randn(2, 3, 24, 24), None, ValueError, r"got \(2, 3, 24, 24\)"),
        (torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), ValueError, "got 3 at row 1"),
        (torch.randn(2, 3, 32, 32), torch.tensor([0.0, 1.0]), TypeError, "integer class ids"),
        (torch.randn(2, 3, 32, 32), torch.tensor([0, 1, 2]), ValueError, "one row per image"),
        (torch.randn(2, 3, 32, 32), [0, 1], TypeError, "torch.Tensor"),
        (torch.full((2, 3, 32, 32), float("nan")), torch.tensor([0, 1]), ValueError, "pixel_values"),
    ],
)
def test_forward_refuses_bad_input(model, pixel_values, labels, error, message):
    with pytest.raises(error, match=message):
        model(pixel_values, labels=labels)


def test_ignored_labels_are_left_out_of_the_loss(model):
    x = pixels()
    full = model(x, labels=torch.tensor([0, 1]))
    torch.testing.assert_close(
        model(x, labels=torch.tensor([0, -100])).loss,
        torch.nn.functional.cross_entropy(full.logits[:1], torch.tensor([0])),
    )


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_labels=0), ValueError, "at least one class"),
        (dict(vision_config={**TINY_VISION, "patch_size": 5}), ValueError, "divisible"),
        (dict(explainability={"vector": "org/v"}), ValueError, "lam"),
        (dict(explainability={"lam": float("inf")}), ValueError, "finite"),
        (dict(explainability={"lam": "1"}), TypeError, "real number"),
        (dict(explainability={"lam": 1.0, "vector": 3}), TypeError, "'vector'"),
        (dict(explainability={"lam": 1.0, "alpha": 0.8}), ValueError, "unknown keys \\['alpha'\\]"),
        (dict(explainability=[("lam", 1.0)]), TypeError, "dict"),
    ],
)
def test_config_refuses_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        ExplainingCLIPForImageClassificationConfig(**{"vision_config": TINY_VISION, **kwargs})


def test_config_refuses_bad_explainability_on_assignment_and_keeps_the_old_value():
    config = ExplainingCLIPForImageClassificationConfig(vision_config=TINY_VISION, explainability={"lam": 2})
    assert config.explainability["lam"] == 2.0 and isinstance(config.explainability["lam"], float)
    with pytest.raises(ValueError, match="finite"):
        config.explainability = {"lam": float("nan")}
    assert config.explainability["lam"] == 2.0
    config.explainability = None
    assert config.explainability is None


# -------------------------------------------------------------------------------------------- task vectors
def test_task_vector_applies_with_canonical_keys(model):
    base = tiny_clip_model(seed=0)
    finetuned = copy.deepcopy(base)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for parameter in finetuned.vision_model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
        finetuned.visual_projection.weight.add_(0.01)
    vector = TaskVector.from_models(base, finetuned)
    classifier = make_classifier(seed=2, clip=base)  # a classifier fine-tuned from the vector's base
    explaining = ExplainingCLIPForImageClassification.from_classifier(classifier)
    before = {k: v.clone() for k, v in explaining.state_dict().items()}
    vector.apply_to(explaining, lam=0.5)
    after = explaining.state_dict()
    deltas = vector.state_dict()
    assert "visual_projection.weight" in deltas  # skipped: the classifier has no projection
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {k for k in deltas if k != "visual_projection.weight" and deltas[k].abs().sum() > 0}
    for key in changed:  # canonical names are the classifier's own state-dict keys
        torch.testing.assert_close(after[key], before[key] + 0.5 * deltas[key])
    assert torch.equal(after["classifier.weight"], before["classifier.weight"])
    # The vector applied to the user's classifier and to its explaining copy gives the same logits.
    vector.apply_to(classifier, lam=0.5)
    x = pixels()
    with torch.no_grad():
        assert torch.equal(explaining(x).logits, classifier(x).logits)


# ----------------------------------------------------------------------------------------- explaining_model
def test_explaining_model_dispatches_on_the_model_class(classifier):
    x = pixels()
    explaining = explaining_model(classifier)
    assert type(explaining) is ExplainingCLIPForImageClassification
    assert torch.equal(explaining(x).logits, classifier(x).logits)
    assert explaining_model(explaining) is explaining

    clip, tokenizer = tiny_clip_model(), tiny_clip_tokenizer()
    zero_shot = explaining_model(clip, class_names=NAMES, tokenizer=tokenizer)
    assert type(zero_shot) is SelfExplainingCLIPVision
    reference = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer)
    assert torch.equal(zero_shot(x).logits, reference(x).logits)
    assert zero_shot.config.class_names == NAMES
    assert explaining_model(zero_shot) is zero_shot


@pytest.mark.parametrize(
    "make, kwargs, error, message",
    [
        (lambda: torch.nn.Linear(2, 2), {}, TypeError, "supports CLIPForImageClassification, CLIPModel"),
        (lambda: CLIPVisionModel(tiny_clip_config().vision_config), {}, TypeError, "got CLIPVisionModel"),
        (lambda: "org/classifier", {}, TypeError, "load the model first"),
        (tiny_clip_model, {}, ValueError, "needs class_names"),
        (tiny_clip_model, dict(class_names=NAMES), ValueError, "tokenizer"),
        (make_classifier, dict(class_names=NAMES), ValueError, "only for a zero-shot CLIPModel"),
        (tiny_clip_model, dict(class_names=["a", "a"], tokenizer=tiny_clip_tokenizer()), ValueError, "duplicated"),
    ],
)
def test_explaining_model_refuses_bad_input(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        explaining_model(make(), **kwargs)


# ------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_vit_b32_architecture_gives_exactly_the_classifiers_logits():
    config = CLIPConfig()  # ViT-B/32 at 224, random weights
    config.id2label = {i: f"class {i}" for i in range(10)}
    config.label2id = {name: i for i, name in config.id2label.items()}
    classifier = CLIPForImageClassification(config).eval()
    model = ExplainingCLIPForImageClassification.from_classifier(classifier)
    x = pixels(2, size=224)
    with torch.no_grad():
        reference, outputs = classifier(x), model(x)
    assert torch.equal(outputs.logits, reference.logits)
    assert outputs.patch_attributions.shape == (2, 10, 49)
    torch.testing.assert_close(
        outputs.patch_attributions.sum(-1), outputs.logits - model.classifier.bias, rtol=0, atol=1e-4
    )
