"""`SelfExplainingCLIPVisionConfig.patch_normalisation`: "cls" (the default, unchanged) or "patches" (the attributions
divided by the mean norm of the image's patch embeddings instead of the [CLS] norm)."""

import copy
import json

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision, SelfExplainingCLIPVisionConfig
from hf_explvec.testing import TINY_VISION, tiny_clip_model, tiny_clip_tokenizer

NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def model():
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=0), NAMES, tokenizer=tiny_clip_tokenizer()).eval()


def _pixels(model, n=3, seed=1):
    size = model.config.vision_config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tokens(model, pixel_values):
    """The projected [CLS] and patch tokens, as `forward` computes them."""
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))
    return tokens[:, 0], tokens[:, 1:]


@torch.no_grad()
def test_default_is_cls_and_bit_identical_to_the_formula(model):
    assert model.config.patch_normalisation == "cls"
    pixel_values = _pixels(model)
    outputs = model(pixel_values)
    cls, patches = _tokens(model, pixel_values)
    cls_norm = cls.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()
    attributions = torch.matmul(patches, model.class_embeddings.t()).transpose(1, 2)
    expected = attributions * (scale / model.num_patches) / cls_norm.unsqueeze(-1)
    assert torch.equal(outputs.patch_attributions, expected)


@torch.no_grad()
def test_patches_keeps_logits_and_rescales_attributions_by_cls_over_mean_patch_norm(model):
    pixel_values = _pixels(model)
    reference = model(pixel_values)
    patched_model = copy.deepcopy(model)
    patched_model.config.patch_normalisation = "patches"
    patched = patched_model(pixel_values)
    assert torch.equal(patched.logits, reference.logits)
    assert torch.equal(patched.image_embeds, reference.image_embeds)
    cls, patches = _tokens(model, pixel_values)
    factor = cls.norm(dim=-1) / patches.norm(dim=-1).mean(dim=-1)  # ||z_0|| / mean_j ||z_j||, per image
    assert not torch.allclose(factor, torch.ones_like(factor))  # the test can tell the two apart
    expected = reference.patch_attributions * factor.view(-1, 1, 1)
    torch.testing.assert_close(patched.patch_attributions, expected, rtol=1e-5, atol=1e-6)
    state = model.state_dict()  # parameter-free: the same keys and weights
    assert patched_model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in patched_model.state_dict().items())


@torch.no_grad()
def test_patches_attributions_do_not_depend_on_the_cls_norm(model):
    """Scale the [CLS] output token only: the cls attributions move, the patches ones do not."""
    pixel_values = _pixels(model)
    results = {}
    for normalisation in ("cls", "patches"):
        m = copy.deepcopy(model)
        m.config.patch_normalisation = normalisation
        plain = m(pixel_values).patch_attributions

        def scale_cls(module, args, output):
            output = output.clone()
            output[:, 0] *= 3.0
            return output

        handle = m.vision_model.post_layernorm.register_forward_hook(scale_cls)
        try:
            scaled = m(pixel_values).patch_attributions
        finally:
            handle.remove()
        results[normalisation] = (plain, scaled)
    plain, scaled = results["patches"]
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-6)
    plain, scaled = results["cls"]
    assert not torch.allclose(scaled, plain, rtol=1e-3, atol=1e-6)


def test_patches_trains_against_shap_values(model):
    """The attribution loss uses the patches attributions (gradients flow; the loss differs from the cls one)."""
    pixel_values, labels = _pixels(model, 2), torch.tensor([0, 2])
    shap_values = torch.randn(2, model.num_patches, generator=torch.Generator().manual_seed(2))
    losses = {}
    for normalisation in ("cls", "patches"):
        m = copy.deepcopy(model).train()
        m.config.alpha = 0.5
        m.config.patch_normalisation = normalisation
        outputs = m(pixel_values, labels=labels, shap_values=shap_values)
        outputs.loss.backward()
        assert m.visual_projection.weight.grad is not None and torch.isfinite(m.visual_projection.weight.grad).all()
        losses[normalisation] = (outputs.ce_loss.item(), outputs.attribution_loss.item())
    assert losses["cls"][0] == pytest.approx(losses["patches"][0], rel=1e-6)
    assert losses["cls"][1] != pytest.approx(losses["patches"][1], rel=1e-4)


@pytest.mark.parametrize("bad", ["CLS", "patch", "", "none"])
def test_bad_values_are_refused_naming_the_field_and_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"patch_normalisation must be one of \['cls', 'patches'\]"):
        SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16, patch_normalisation=bad)
    config = SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16)
    with pytest.raises(ValueError, match="patch_normalisation must be one of"):
        config.patch_normalisation = bad
    assert config.patch_normalisation == "cls"  # the old value is kept


def test_non_string_is_refused():
    with pytest.raises((ValueError, TypeError), match="patch_normalisation"):
        SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16, patch_normalisation=1)


def test_saved_and_loaded_with_the_config_and_old_configs_load_as_cls(model, tmp_path):
    patched = copy.deepcopy(model)
    patched.config.patch_normalisation = "patches"
    patched.save_pretrained(tmp_path / "patches")
    saved = json.loads((tmp_path / "patches" / "config.json").read_text())
    assert saved["patch_normalisation"] == "patches"
    loaded = SelfExplainingCLIPVision.from_pretrained(tmp_path / "patches")
    assert loaded.config.patch_normalisation == "patches"
    pixel_values = _pixels(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).patch_attributions, patched(pixel_values).patch_attributions)
    # a config written before the option existed
    model.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    old = json.loads(path.read_text())
    old.pop("patch_normalisation", None)
    path.write_text(json.dumps(old))
    assert SelfExplainingCLIPVisionConfig.from_pretrained(tmp_path / "old").patch_normalisation == "cls"
    assert SelfExplainingCLIPVision.from_pretrained(tmp_path / "old").config.patch_normalisation == "cls"
