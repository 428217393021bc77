import copy
import json

import pytest
import torch
from transformers import (
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from hf_explvec import IncompatibleKeysError, SelfExplainingCLIPVision, TaskVector, TaskVectorConfig
from hf_explvec.testing import tiny_clip_model

NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def base():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def finetuned(base):
    """A stand-in for a fine-tune of `base`: its weights plus seeded noise (so vectors of `base` apply to it)."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=0.05)
    return tuned


@pytest.fixture(scope="module")
def vector(base, finetuned):
    return TaskVector.from_models(base, finetuned, source_dataset="digits", recommended_lam=0.8)


def vision_params(model):
    """Canonical name -> tensor copy of a CLIP model's vision tower and projection."""
    from hf_explvec.arithmetic import vision_state

    return {k: v.detach().clone() for k, v in vision_state(model.state_dict()).items()}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def self_explaining(clip):
    return SelfExplainingCLIPVision.from_clip(copy.deepcopy(clip), NAMES, class_embeddings=torch.randn(3, 16))


# ------------------------------------------------------------------------------------------------ from_models
def test_from_models_keeps_vision_deltas_only(base, finetuned, vector):
    keys = vector.keys()
    assert all(k.startswith("vision_model.") or k == "visual_projection.weight" for k in keys)
    assert "visual_projection.weight" in keys
    assert not any("text_model" in k or "position_ids" in k or "logit_scale" in k for k in keys)
    torch.testing.assert_close(
        vector.state_dict()["vision_model.encoder.layers.0.mlp.fc1.weight"],
        finetuned.vision_model.encoder.layers[0].mlp.fc1.weight - base.vision_model.encoder.layers[0].mlp.fc1.weight,
    )
    assert len(vector) == len(keys) and vector.num_parameters == sum(v.numel() for v in vector.state_dict().values())
    assert vector.config.source_dataset == "digits"


def test_from_models_never_includes_the_head(base, finetuned):
    a, b = self_explaining(base), self_explaining(finetuned)
    b.class_embeddings.mul_(-1)
    b.logit_scale.add_(1)
    vector = TaskVector.from_models(a, b)
    assert not any(k in vector for k in ("class_embeddings", "logit_scale"))
    assert vector.fingerprint == TaskVector.from_models(base, finetuned).fingerprint


def test_from_models_accepts_state_dicts_of_other_classes(base, finetuned, vector):
    """A CLIPModel state dict and a bare CLIPVisionModel's give the same deltas under the same names."""
    vision_base = CLIPVisionModel(base.config.vision_config)
    vision_base.load_state_dict(base.vision_model.state_dict())
    from_dicts = TaskVector.from_models(vision_base.state_dict(), finetuned.state_dict())
    assert "visual_projection.weight" not in from_dicts
    for key in from_dicts.keys():
        torch.testing.assert_close(from_dicts.state_dict()[key], vector.state_dict()[key])


def test_from_models_lists_mismatched_keys_and_shapes(base):
    other = tiny_clip_model(seed=2, hidden_size=64, intermediate_size=37, num_hidden_layers=3)
    with pytest.raises(IncompatibleKeysError) as info:
        TaskVector.from_models(base, other)
    message = str(info.value)
    assert "vision_model.encoder.layers.2.mlp.fc1.weight" in message  # a layer only the other model has
    assert "vision_model.embeddings.patch_embedding.weight: (32, 3, 8, 8) vs (64, 3, 8, 8)" in message
    assert info.value.unexpected and info.value.mismatched


def test_from_models_rejects_a_model_without_clip_vision_tower(base):
    with pytest.raises(ValueError, match="no CLIP vision tower"):
        TaskVector.from_models(base, torch.nn.Linear(3, 3))


# ---------------------------------------------------------------------------------------------------- algebra
def test_algebra(vector):
    a, b = vector, vector * 0.25
    key = "vision_model.encoder.layers.1.self_attn.q_proj.weight"
    t = vector.state_dict()[key]
    torch.testing.assert_close((a + b).state_dict()[key], 1.25 * t)
    torch.testing.assert_close((a - b).state_dict()[key], 0.75 * t)
    torch.testing.assert_close((-a).state_dict()[key], -t)
    torch.testing.assert_close((2 * a).state_dict()[key], 2 * t)
    torch.testing.assert_close((a * 2).state_dict()[key], 2 * t)
    torch.testing.assert_close((a / 4).state_dict()[key], b.state_dict()[key])
    torch.testing.assert_close(sum([a, b, b]).state_dict()[key], 1.5 * t)
    assert (a * 3).norm() == pytest.approx(3 * a.norm())
    assert a.cosine_similarity(b) == pytest.approx(1.0)
    assert a.cosine_similarity(-b) == pytest.approx(-1.0)
    assert (a - a).norm() == 0.0


def test_norm_and_cosine_against_flat_vectors(base, vector):
    other = TaskVector.from_models(base, tiny_clip_model(seed=3))
    flat_a = torch.cat([v.flatten() for _, v in sorted(vector.state_dict().items())]).double()
    flat_b = torch.cat([v.flatten() for _, v in sorted(other.state_dict().items())]).double()
    assert vector.norm() == pytest.approx(float(flat_a.norm()), rel=1e-9)
    expected = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    assert vector.cosine_similarity(other) == pytest.approx(expected, rel=1e-9)


def test_provenance_through_algebra(vector):
    other = TaskVector(vector.state_dict(), TaskVectorConfig(source_dataset="faces"))
    assert (vector + other).config.source_dataset is None
    assert (vector + vector).config.source_dataset == "digits"
    assert (vector * 2).config.recommended_lam is None and (vector * 2).config.source_dataset == "digits"
    # a λ chosen for τ is not the λ of τ + τ = 2τ (nor of any sum or difference)
    assert (vector + vector).config.recommended_lam is None and (vector - vector).config.recommended_lam is None
    assert sum([vector, vector]).config.recommended_lam is None
    assert vector.to(torch.float16).config == vector.config  # same vector in another dtype


def test_config_json_contract_round_trip(vector, tmp_path):
    path = tmp_path / "config.json"
    vector.config.to_json_file(path, vector.layout())
    raw = json.loads(path.read_text())
    assert raw == {**vector.config.to_dict(), **vector.layout()}
    assert raw["format_version"] == 1 and raw["vector_type"] == "clip_vision"
    config, layout = TaskVectorConfig.from_json_file(path)
    assert config == vector.config and layout == vector.layout()
    assert TaskVectorConfig.from_dict(vector.config.to_dict()) == vector.config
    legacy = {k: v for k, v in raw.items() if k != "format_version"}  # files without the key read as version 1
    assert TaskVectorConfig.from_dict(legacy) == vector.config


def test_to_dtype(vector):
    half = vector.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and vector.dtype == torch.float32
    assert half.keys() == vector.keys() and half.fingerprint == vector.fingerprint
    with pytest.raises(TypeError, match="floating-point"):
        vector.to(torch.int64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_rejects_nan_and_inf(vector, bad):
    state = vector.state_dict()
    state["vision_model.pre_layrnorm.bias"] = state["vision_model.pre_layrnorm.bias"].clone()
    state["vision_model.pre_layrnorm.bias"][3] = bad
    with pytest.raises(ValueError, match="NaN or Inf in 1 tensors: vision_model.pre_layrnorm.bias"):
        TaskVector(state)
    with pytest.raises(ValueError, match="must be finite"):
        vector * bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        vector * 1e38 * 1e38  # overflow is caught too


def test_algebra_rejects_bad_operands(vector, base):
    smaller = TaskVector({k: v for k, v in vector.state_dict().items() if "layers.1" not in k})
    with pytest.raises(IncompatibleKeysError, match="missing"):
        vector + smaller
    with pytest.raises(TypeError):
        vector + 1
    with pytest.raises(TypeError):
        vector * vector
    with pytest.raises(TypeError):
        vector * "2"
    with pytest.raises(ZeroDivisionError):
        vector / 0
    with pytest.raises(ValueError, match="zero task vector"):
        vector.cosine_similarity(vector - vector)
    with pytest.raises(ValueError, match="non-empty"):
        TaskVector({})
    with pytest.raises(TypeError, match="floating-point"):
        TaskVector({"vision_model.x": torch.ones(2, dtype=torch.long)})


# ----------------------------------------------------------------------------------------------------- apply_to
def test_apply_to_self_explaining_model(base, finetuned, vector):
    model = self_explaining(base)
    head = model.class_embeddings.clone()
    result = vector.apply_to(model, lam=1.0)
    assert result is model
    target = vision_params(finetuned)
    for name, value in vision_params(model).items():
        torch.testing.assert_close(value, target[name])
    assert torch.equal(model.class_embeddings, head)


def test_apply_to_with_lam(base, vector):
    model = self_explaining(base)
    vector.apply_to(model, lam=0.3)
    expected = {k: v + 0.3 * vector.state_dict()[k] for k, v in vision_params(base).items()}
    for name, value in vision_params(model).items():
        torch.testing.assert_close(value, expected[name])


@pytest.mark.parametrize(
    "build, has_projection",
    [
        (lambda c: CLIPVisionModel(c.vision_config), False),
        (lambda c: CLIPVisionModelWithProjection(c.vision_config), True),
        (lambda c: CLIPModel(c), True),
        (lambda c: CLIPForImageClassification(c), False),
    ],
)
def test_apply_to_every_clip_class(base, vector, build, has_projection):
    model = build(copy.deepcopy(base.config))  # freshly initialised: not a descendant of the vector's base
    before = vision_params(model)
    assert ("visual_projection.weight" in before) == has_projection
    vector.apply_to(model, lam=0.5, check_base=False)
    after = vision_params(model)
    assert after.keys() == before.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name] + 0.5 * vector.state_dict()[name])


def test_apply_to_leaves_text_tower_and_classifier_alone(base, vector):
    model = CLIPModel(copy.deepcopy(base.config))
    text_before = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    scale = model.logit_scale.detach().clone()
    vector.apply_to(model, check_base=False)  # a fresh CLIPModel, not a descendant of the vector's base
    assert all(torch.equal(model.text_model.state_dict()[k], v) for k, v in text_before.items())
    assert torch.equal(model.logit_scale.detach(), scale)


def test_apply_to_not_inplace_returns_a_copy(base, vector):
    model = self_explaining(base)
    before = snapshot(model)
    edited = vector.apply_to(model, lam=1.0, inplace=False)
    assert edited is not model
    assert_unchanged(model, before)
    assert not torch.equal(edited.visual_projection.weight, model.visual_projection.weight)


def test_apply_to_bfloat16_model_computes_in_float32(base, vector):
    model = self_explaining(base).to(torch.bfloat16)
    before = vision_params(model)
    vector.apply_to(model, lam=0.7)
    for name, value in vision_params(model).items():
        assert value.dtype == torch.bfloat16
        expected = before[name].float().add(vector.state_dict()[name], alpha=0.7).to(torch.bfloat16)
        assert torch.equal(value, expected), name


def test_apply_to_with_bfloat16_vector(base, vector):
    model = self_explaining(base)
    half = vector.to(torch.bfloat16)
    before = vision_params(model)
    half.apply_to(model)
    for name, value in vision_params(model).items():
        assert torch.equal(value, before[name] + half.state_dict()[name].float())


# ------------------------------------------------------------------------------------ bad input: nothing changes
@pytest.mark.parametrize("lam", [float("nan"), float("inf"), "0.5", None])
def test_apply_to_rejects_bad_lam(base, vector, lam):
    model = self_explaining(base)
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match="lam"):
        vector.apply_to(model, lam=lam)
    assert_unchanged(model, before)


def test_apply_to_rejects_another_architecture(vector):
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
    before = snapshot(model)
    with pytest.raises(ValueError, match="no CLIP vision tower"):
        vector.apply_to(model)
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="nn.Module"):
        vector.apply_to(model.state_dict())


def test_apply_to_rejects_missing_keys_and_lists_them(base):
    deeper = tiny_clip_model(seed=5, num_hidden_layers=3)
    vector = TaskVector.from_models(deeper, tiny_clip_model(seed=6, num_hidden_layers=3))
    model = self_explaining(base)
    before = snapshot(model)
    with pytest.raises(IncompatibleKeysError, match="nothing was changed") as info:
        vector.apply_to(model)
    assert "vision_model.encoder.layers.2.self_attn.k_proj.weight" in info.value.missing
    assert_unchanged(model, before)


def test_apply_to_non_strict_skips_missing_keys(base, vector, caplog):
    partial = TaskVector({k: v for k, v in vector.state_dict().items() if "layers.1" not in k})
    model = self_explaining(base)
    with pytest.raises(IncompatibleKeysError, match="unexpected"):
        partial.apply_to(model)
    before = vision_params(model)
    partial.apply_to(model, strict=False)
    assert "were skipped" in caplog.text
    after = vision_params(model)
    layer1 = "vision_model.encoder.layers.1.mlp.fc2.weight"
    assert torch.equal(after[layer1], before[layer1])
    layer0 = "vision_model.encoder.layers.0.mlp.fc2.weight"
    torch.testing.assert_close(after[layer0], before[layer0] + vector.state_dict()[layer0])


def test_apply_to_rejects_shape_mismatch_even_when_not_strict(vector):
    wider = SelfExplainingCLIPVision.from_clip(
        tiny_clip_model(seed=7, hidden_size=64, intermediate_size=37), NAMES, class_embeddings=torch.randn(3, 16)
    )
    before = snapshot(wider)
    for strict in (True, False):
        with pytest.raises(IncompatibleKeysError, match=r"shape mismatch .*\(32,\) vs \(64,\)"):
            vector.apply_to(wider, strict=strict)
    assert_unchanged(wider, before)


def test_apply_to_rejects_projection_of_other_width(base, vector):
    config = CLIPVisionConfig(**{**base.config.vision_config.to_dict(), "projection_dim": 8})
    model = CLIPVisionModelWithProjection(config)
    before = snapshot(model)
    with pytest.raises(IncompatibleKeysError, match=r"visual_projection.weight: \(16, 32\) vs \(8, 32\)"):
        vector.apply_to(model)
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(vector, tmp_path):
    vector.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "task_vector.safetensors", "README.md"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vector_type"] == "clip_vision" and config["library_name"] == "hf_explvec"
    assert config["num_parameters"] == vector.num_parameters and config["fingerprint"] == vector.fingerprint
    assert config["dtype"] == "float32" and config["source_dataset"] == "digits" and config["recommended_lam"] == 0.8
    loaded = TaskVector.from_pretrained(tmp_path)
    assert loaded.config == vector.config and loaded.keys() == vector.keys()
    for key, value in vector.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_save_is_sharded_when_large(vector, tmp_path):
    vector.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="10KB")
    shards = sorted(p.name for p in tmp_path.glob("task_vector-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "task_vector.safetensors.index.json").is_file()
    loaded = TaskVector.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert (loaded - vector.to(torch.bfloat16)).norm() == 0.0


def test_load_rejects_foreign_truncated_and_pickled_files(vector, tmp_path):
    vector.save_pretrained(tmp_path)
    config_path, weights = tmp_path / "config.json", tmp_path / "task_vector.safetensors"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**config, "vector_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'"):
        TaskVector.from_pretrained(tmp_path)

    config_path.write_text(json.dumps({**config, "num_parameters": 5}))
    with pytest.raises(ValueError, match="do not match"):
        TaskVector.from_pretrained(tmp_path)

    config_path.write_text(json.dumps(config))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        TaskVector.from_pretrained(tmp_path)

    weights.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickled weights are never loaded"):
        TaskVector.from_pretrained(tmp_path)


def test_loaded_vector_with_nan_is_rejected(vector, tmp_path):
    from safetensors.torch import save_file

    vector.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in vector.state_dict().items()}
    state["vision_model.post_layernorm.weight"][0] = float("nan")
    save_file(state, tmp_path / "task_vector.safetensors")
    with pytest.raises(ValueError, match="NaN or Inf in 1 tensors: vision_model.post_layernorm.weight"):
        TaskVector.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ real ViT-B/32 size
@pytest.mark.slow
def test_vit_b32_architecture_vector():
    """The real ViT-B/32 architecture (random weights): a vector of ~88M parameters applies and round-trips."""
    torch.manual_seed(0)
    config = CLIPVisionConfig()  # openai/clip-vit-base-patch32's vision tower
    base = CLIPVisionModelWithProjection(config)
    finetuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(torch.randn_like(p), alpha=1e-3)
    vector = TaskVector.from_models(base, finetuned)
    assert 87_000_000 < vector.num_parameters < 89_000_000
    model = copy.deepcopy(base)
    vector.apply_to(model, lam=1.0)
    for (name, p), q in zip(model.named_parameters(), finetuned.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


# ------------------------------------------------------------------------------------------------ transfer formula
@pytest.mark.parametrize("lam_target, lam", [(1.0, 0.8), (0.5, 0.3), (0.0, 1.0)])
def test_transfer_formula(base, finetuned, lam_target, lam):
    """θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ_S, with the target's class and head."""
    from hf_explvec.task_vector import transfer

    source_vector = TaskVector.from_models(base, tiny_clip_model(seed=4))
    target = self_explaining(finetuned)
    head = target.class_embeddings.clone()
    before = snapshot(target)
    result = transfer(self_explaining(base), target, source_vector, lam=lam, lam_target=lam_target)
    assert_unchanged(target, before)  # inplace=False
    assert isinstance(result, SelfExplainingCLIPVision) and torch.equal(result.class_embeddings, head)
    theta_base, theta_t = vision_params(base), vision_params(finetuned)
    for name, value in vision_params(result).items():
        expected = (
            theta_base[name] + lam_target * (theta_t[name] - theta_base[name]) + lam * source_vector.state_dict()[name]
        )
        torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5)
