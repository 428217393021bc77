import copy

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    CLIPForImageClassification,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from hf_explvec import (
    MissingHeadError,
    SelfExplainingCLIPVision,
    SelfExplainingCLIPVisionConfig,
    attribution_map,
    build_class_embeddings,
)
from hf_explvec.testing import TINY_VISION, tiny_clip_config, tiny_clip_model, tiny_clip_tokenizer

NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def clip():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_clip_tokenizer()


@pytest.fixture
def model(clip, tokenizer):
    return SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer)


def pixels(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_config_derives_labels_and_round_trips(tmp_path):
    config = SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16, class_names=NAMES, alpha=0.8)
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert config.num_labels == 3 and config.num_patches == 16 and config.grid_size == 4
    assert isinstance(config.vision_config, CLIPVisionConfig)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SelfExplainingCLIPVisionConfig)
    assert loaded.class_names == NAMES and loaded.alpha == 0.8 and loaded.id2label == config.id2label


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_names=[]), "empty"),
        (dict(class_names=["cat", "dog", "cat"]), "duplicated: \\['cat'\\]"),
        (dict(class_names=["cat", ""]), "non-empty strings"),
        (dict(class_names=["a", "b"], alpha=1.5), "alpha"),
        (dict(class_names=["a", "b"], alpha=float("nan")), "alpha"),
        (dict(class_names=["a", "b"], id2label={0: "b", 1: "a"}), "inconsistent"),
        (dict(class_names=["a", "b"], vision_config={**TINY_VISION, "patch_size": 5}), "divisible"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelfExplainingCLIPVisionConfig(**{"vision_config": TINY_VISION, **kwargs})


def test_shapes_and_row_major_patch_order(model):
    outputs = model(pixels())
    assert outputs.logits.shape == (2, 3)
    assert outputs.patch_attributions.shape == (2, 3, 16)
    assert outputs.image_embeds.shape == (2, 16)
    assert outputs.loss is None
    # Row-major: changing only the top-right patch (row 0, col 3 -> index 3) moves patch 3's attribution most.
    x = pixels(1)
    y = x.clone()
    y[..., 0:8, 24:32] += 3.0
    change = (model(y).patch_attributions - model(x).patch_attributions).abs().sum(dim=1)[0]
    assert int(change.argmax()) == 3


def test_head_definitions(model):
    """logits = s * cos(z_cls, t_c); patch attributions = s * <z_i, t_c> / (|z_cls| * M)."""
    x = pixels()
    outputs = model(x)
    hidden = model.vision_model(pixel_values=x).last_hidden_state
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))
    scale = model.logit_scale.exp()
    cls_norm = tokens[:, 0].norm(dim=-1)
    expected_logits = scale * tokens[:, 0] @ model.class_embeddings.T / cls_norm[:, None]
    expected_attr = (
        scale * torch.einsum("bmp,cp->bcm", tokens[:, 1:], model.class_embeddings) / (16 * cls_norm[:, None, None])
    )
    torch.testing.assert_close(outputs.logits, expected_logits)
    torch.testing.assert_close(outputs.patch_attributions, expected_attr)


def test_from_clip_reproduces_zero_shot_logits(clip, tokenizer, model):
    x = pixels(4)
    inputs = tokenizer([f"a photo of a {name}." for name in NAMES], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = clip(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=x)
        ours = model(x)
    torch.testing.assert_close(ours.logits, reference.logits_per_image)
    torch.testing.assert_close(ours.image_embeds, reference.image_embeds)
    assert model.config.logit_scale_init_value == pytest.approx(float(clip.logit_scale.detach()))


def test_prompt_ensembling_averages_normalised_embeddings(clip, tokenizer):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    head = build_class_embeddings(clip, tokenizer, NAMES, templates)
    singles = [build_class_embeddings(clip, tokenizer, NAMES, [t]) for t in templates]
    expected = torch.nn.functional.normalize(singles[0] + singles[1], dim=-1)
    torch.testing.assert_close(head, expected)
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(3))


def test_from_clip_with_precomputed_embeddings(clip):
    embeddings = torch.randn(3, 16)
    model = SelfExplainingCLIPVision.from_clip(clip, NAMES, class_embeddings=embeddings * 5)
    torch.testing.assert_close(model.class_embeddings, torch.nn.functional.normalize(embeddings, dim=-1))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(class_names=[]), ValueError, "empty"),
        (dict(class_names=["cat", "cat"]), ValueError, "duplicated"),
        (dict(class_names=NAMES, class_embeddings=torch.randn(2, 16)), ValueError, r"\(3, 16\), got \(2, 16\)"),
        (dict(class_names=NAMES, class_embeddings=torch.randn(3, 8)), ValueError, r"\(3, 16\), got \(3, 8\)"),
        (dict(class_names=NAMES, class_embeddings=torch.full((3, 16), float("nan"))), ValueError, "finite"),
        (dict(class_names=NAMES), ValueError, "tokenizer"),
        (dict(class_names=NAMES, templates=["no placeholder"]), ValueError, "placeholder"),
    ],
)
def test_from_clip_rejects_bad_input(clip, tokenizer, kwargs, error, message):
    if "templates" in kwargs:
        kwargs["tokenizer"] = tokenizer
    with pytest.raises(error, match=message):
        SelfExplainingCLIPVision.from_clip(clip, **kwargs)


def test_from_clip_rejects_non_clip():
    with pytest.raises(TypeError, match="CLIPModel"):
        SelfExplainingCLIPVision.from_clip(torch.nn.Linear(2, 2), NAMES, class_embeddings=torch.randn(3, 16))


def test_loss_is_alpha_weighted(clip, tokenizer):
    labels = torch.tensor([0, 2])
    shap = torch.randn(2, 16)
    model = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer, alpha=0.8)
    outputs = model(pixels(), labels=labels, shap_values=shap)
    ce = torch.nn.functional.cross_entropy(outputs.logits, labels)
    mse = ((outputs.patch_attributions[torch.arange(2), labels] - shap) ** 2).mean()
    torch.testing.assert_close(outputs.ce_loss, ce)
    torch.testing.assert_close(outputs.attribution_loss, mse)
    torch.testing.assert_close(outputs.loss, 0.8 * ce + 0.2 * mse)
    prediction_only = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer)
    assert torch.equal(prediction_only(pixels(), labels=labels).loss, ce)


def test_head_is_frozen_and_gradients_reach_the_tower(clip, tokenizer):
    model = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer, alpha=0.5).train()
    names = {name for name, _ in model.named_parameters()}
    assert "class_embeddings" not in names and "logit_scale" not in names
    head_before = model.class_embeddings.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(pixels(), labels=torch.tensor([0, 1]), shap_values=torch.randn(2, 16)).loss.backward()
    assert model.visual_projection.weight.grad.abs().sum() > 0
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    optimizer.step()
    assert torch.equal(model.class_embeddings, head_before)


def test_gradient_checkpointing_gives_the_same_gradients(clip, tokenizer):
    def grads(checkpointing):
        model = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer, alpha=0.5).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(pixels(), labels=torch.tensor([0, 1]), shap_values=torch.ones(2, 16)).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name])


def test_keeps_sdpa_attention(model):
    assert model.config._attn_implementation == "sdpa"
    assert model.vision_model.config._attn_implementation == "sdpa"


def test_save_load_round_trip_through_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    processor = CLIPImageProcessor.from_pretrained(tmp_path)  # saved with the model, sized to it
    assert processor.crop_size == {"height": 32, "width": 32} and processor.size == {"shortest_edge": 32}
    x = pixels()
    expected = model(x)
    for auto in (AutoModel, AutoModelForImageClassification, SelfExplainingCLIPVision):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, SelfExplainingCLIPVision)
        outputs = loaded(x)
        assert torch.equal(outputs.logits, expected.logits)
        assert torch.equal(outputs.patch_attributions, expected.patch_attributions)
        assert torch.equal(loaded.class_embeddings, model.class_embeddings)


def test_clip_vision_checkpoint_names_load_straight_in(clip, model):
    """The feature extractor has CLIPVisionModelWithProjection's parameter names."""
    vision = CLIPVisionModelWithProjection(copy.deepcopy(clip.config.vision_config))
    ours = {k for k in model.state_dict() if k not in {"class_embeddings", "logit_scale"}}
    assert ours == set(vision.state_dict())
    missing, unexpected = model.load_state_dict(vision.state_dict(), strict=False)
    assert set(missing) == {"class_embeddings", "logit_scale"} and not unexpected


def test_accepts_clip_image_processor_outputs(model):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [torch.randint(0, 255, (48, 40, 3), dtype=torch.uint8).numpy() for _ in range(2)]
    inputs = processor(images=images, return_tensors="pt")
    assert model(**inputs).logits.shape == (2, 3)


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 24, 24), "got \\(2, 3, 24, 24\\)"), ((2, 1, 32, 32), "got \\(2, 1, 32, 32\\)"), ((3, 32, 32), "got")],
)
def test_rejects_pixel_values_of_wrong_size_or_channels(model, shape, message):
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=torch.tensor([0, 1]), shap_values=torch.randn(2, 15)), r"\(2, 16\), got \(2, 15\)"),
        (dict(labels=torch.tensor([0, 1]), shap_values=torch.randn(2, 4, 4)), r"\(2, 16\), got \(2, 4, 4\)"),
        (dict(labels=torch.tensor([0, 1, 2])), r"labels must have shape \(2,\)"),
        (dict(shap_values=torch.randn(2, 16)), "without labels"),
    ],
)
def test_rejects_bad_labels_and_shap_values(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(pixels(), **kwargs)


def test_self_explaining_model_requires_shap_values(clip, tokenizer):
    model = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer, alpha=0.8)
    with pytest.raises(ValueError, match="needs shap_values"):
        model(pixels(), labels=torch.tensor([0, 1]))


def test_attribution_map_for_given_and_predicted_class(model):
    outputs = model(pixels())
    predicted = outputs.logits.argmax(-1)
    maps = attribution_map(outputs)
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps.flatten(1), outputs.patch_attributions[torch.arange(2), predicted])
    torch.testing.assert_close(attribution_map(outputs, target=2).flatten(1), outputs.patch_attributions[:, 2])
    torch.testing.assert_close(maps[0, 1, 2], outputs.patch_attributions[0, predicted[0], 6])  # row 1, col 2
    with pytest.raises(ValueError, match="target must be in"):
        attribution_map(outputs, target=3)
    with pytest.raises(ValueError, match="shape"):
        attribution_map(outputs, target=torch.tensor([0, 1, 2]))


def test_model_from_config_has_unit_head():
    config = SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16, class_names=NAMES)
    model = SelfExplainingCLIPVision(config)
    torch.testing.assert_close(model.class_embeddings.norm(dim=-1), torch.ones(3))
    assert float(model.logit_scale) == pytest.approx(2.6592)


def test_from_clip_loads_model_and_tokenizer_by_path(clip, tokenizer, tmp_path):
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    by_path = SelfExplainingCLIPVision.from_clip(str(tmp_path), NAMES)
    by_object = SelfExplainingCLIPVision.from_clip(clip, NAMES, tokenizer=tokenizer)
    x = pixels()
    torch.testing.assert_close(by_path(x).logits, by_object(x).logits)
    assert by_path.config.clip_name_or_path == str(tmp_path)


def test_pooled_features_accepts_tensors_and_outputs():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from hf_explvec.heads import pooled_features

    features = torch.randn(2, 16)
    assert pooled_features(features) is features
    assert pooled_features(BaseModelOutputWithPooling(pooler_output=features)) is features
    with pytest.raises(TypeError, match="pooler_output"):
        pooled_features((features,))


def test_explainability_provenance_is_checked_and_round_trips(tmp_path):
    record = {"model": "org/m", "model_revision": "abc", "vector": "org/v", "vector_revision": None, "lam": 1}
    config = SelfExplainingCLIPVisionConfig(
        vision_config=TINY_VISION, projection_dim=16, class_names=NAMES, explainability=record
    )
    assert config.explainability == {**record, "lam": 1.0}
    config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).explainability == {**record, "lam": 1.0}
    for bad, error in [
        ({"lam": float("nan")}, ValueError),
        ({"model": "org/m"}, ValueError),
        ({"lam": 1.0, "model": 1}, TypeError),
        ({"lam": True}, TypeError),
        ({"lam": 1.0, "extra": 1}, ValueError),
    ]:
        with pytest.raises(error, match="explainability"):
            config.explainability = bad
        assert config.explainability["lam"] == 1.0  # the old value is kept
    assert SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, class_names=NAMES).explainability is None


@pytest.mark.parametrize("kind", ["CLIPForImageClassification", "CLIPVisionModel"])
def test_from_pretrained_refuses_a_checkpoint_without_the_head(kind, tmp_path):
    """Loading a checkpoint of another class must not build a random head (issue 10)."""
    config = tiny_clip_config()
    if kind == "CLIPForImageClassification":
        config.id2label = dict(enumerate(NAMES))
        CLIPForImageClassification(config).save_pretrained(tmp_path)
    else:
        CLIPVisionModel(config.vision_config).save_pretrained(tmp_path)

    def by_auto_class(path):  # the user's config given: the checkpoint's head is still required
        config = SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, class_names=NAMES)
        return AutoModelForImageClassification.from_pretrained(path, config=config)

    for load, names_kind in ((SelfExplainingCLIPVision.from_pretrained, True), (by_auto_class, False)):
        with pytest.raises(
            MissingHeadError, match="lacks class_embeddings, logit_scale, visual_projection.weight"
        ) as info:
            load(tmp_path)
        assert isinstance(info.value, ValueError)
        assert info.value.missing_keys == ["class_embeddings", "logit_scale", "visual_projection.weight"]
        message = str(info.value)
        assert "from_classifier" in message and "from_clip" in message
        assert (f"it holds a {kind} checkpoint" in message) == names_kind


def test_from_pretrained_can_return_the_loading_info(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded, info = SelfExplainingCLIPVision.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, SelfExplainingCLIPVision) and not info["missing_keys"]
