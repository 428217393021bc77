"""hf_explvec.peft_export: a low-rank vector exported as a PEFT LoRA adapter loads with plain peft and reproduces the
vector's update on the covered linear layers."""

import copy
import hashlib
import json
import warnings

import pytest
import torch
from transformers import CLIPVisionModelWithProjection

from hf_explvec import arithmetic as A
from hf_explvec import compression as C
from hf_explvec.peft_export import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, export_peft_lora, lora_module
from hf_explvec.testing import tiny_clip_config, tiny_clip_model

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def tiny_vision(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(tiny_clip_config().vision_config).eval()


def perturbed_delta(model, seed=1):
    """A vector over the model's vision tower: 0.01 * standard normal noise on every float tensor."""
    g = torch.Generator().manual_seed(seed)
    return {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in A.vision_state(model.state_dict()).items()}


def covered_update(model, factors, lam):
    """What `TaskVector.apply_to` does with the part of the vector LoRA carries: a copy of `model` with
    `lam * b @ a` added to each covered linear weight."""
    edited = copy.deepcopy(model)
    state = edited.state_dict(keep_vars=True)
    names = A.canonical_vision_names(state)
    with torch.no_grad():
        for key, entry in factors.items():
            if lora_module(key) is not None and isinstance(entry, C.LowRankTensor):
                C.add_scaled_(state[names[key]], entry, lam)
    return edited


@pytest.mark.parametrize("rank", [3, 20])  # 20 > projection_dim 16: the projection gets rank 16 via rank_pattern
def test_peft_loads_the_export_and_reproduces_the_update_on_covered_layers(rank, tmp_path):
    base = tiny_vision()
    delta = perturbed_delta(base)
    factors = C.low_rank(delta, rank)
    lost = export_peft_lora(factors, "tiny-clip-vision", tmp_path / "adapter", lam=0.7)

    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == rank
    assert config["rank_pattern"] == config["alpha_pattern"] == ({"visual_projection": 16} if rank == 20 else {})
    assert len(config["target_modules"]) == 2 * 6 + 1  # 2 layers x (q, k, v, out, fc1, fc2) + projection

    # what is lost: every bias, layer norm and embedding, nothing else
    expected_lost = sorted(k for k in delta if lora_module(k) is None)
    assert lost == expected_lost
    assert all(k.endswith("bias") or "norm" in k or "embedding" in k for k in lost)

    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    reference = covered_update(base, factors, 0.7)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).image_embeds, reference(pixel_values=pixels).image_embeds)
    merged = model.merge_and_unload().state_dict()
    before = base.state_dict()
    assert merged.keys() == before.keys()
    for key in before:
        if key in factors and key not in lost:
            torch.testing.assert_close(merged[key], before[key] + 0.7 * factors[key].to_dense())
        else:
            assert torch.equal(merged[key], before[key]), key


def test_export_onto_a_clip_model_leaves_the_text_tower_alone(tmp_path):
    clip = tiny_clip_model()
    factors = C.low_rank(perturbed_delta(clip), 2)
    export_peft_lora(factors, None, tmp_path, lam=1.0)
    merged = peft.PeftModel.from_pretrained(copy.deepcopy(clip), tmp_path).merge_and_unload().state_dict()
    reference = covered_update(clip, factors, 1.0).state_dict()
    for key, value in clip.state_dict().items():
        torch.testing.assert_close(merged[key], reference[key])
        if key.startswith("text_model."):
            assert torch.equal(merged[key], value)


class Wrapped(torch.nn.Module):
    """A user model holding the CLIP vision tower under another prefix."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_vision()

    def forward(self, pixel_values):
        return self.backbone(pixel_values=pixel_values).image_embeds


def _self_explaining():
    from hf_explvec import SelfExplainingCLIPVision, SelfExplainingCLIPVisionConfig
    from hf_explvec.testing import TINY_VISION

    config = SelfExplainingCLIPVisionConfig(vision_config=TINY_VISION, projection_dim=16, class_names=["a", "b"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SelfExplainingCLIPVision(config).eval()


@pytest.mark.parametrize("make_base", [Wrapped, _self_explaining], ids=["wrapped", "self-explaining"])
def test_export_maps_canonical_names_onto_the_base_model(make_base, tmp_path):
    base = make_base()
    factors = C.low_rank(perturbed_delta(base), 2)
    export_peft_lora(factors, None, tmp_path, base_model=base)
    targets = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())["target_modules"]
    assert len(targets) == 13 and {t + ".weight" for t in targets} <= set(base.state_dict())
    if make_base is Wrapped:
        assert "backbone.vision_model.encoder.layers.0.mlp.fc1" in targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).merge_and_unload().state_dict()
    reference = covered_update(base, factors, 1.0).state_dict()
    assert merged.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(merged[key], reference[key])


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "make_factors, kwargs, error, message",
    [
        (lambda d: d, {}, ValueError, "nothing to export: no entry is a LowRankTensor"),
        (lambda d: C.sparsify_magnitude(d, 0.5), {}, ValueError, "nothing to export"),
        (lambda d: C.low_rank(d, 2), {"lam": float("nan")}, ValueError, "lam must be finite, got nan"),
        (lambda d: C.low_rank(d, 2), {"lam": "1"}, TypeError, "lam must be a real number, got str"),
        (lambda d: C.low_rank(d, 2), {"base_model": torch.nn.Linear(2, 2)}, ValueError, "Linear has no CLIP vision"),
        (
            lambda d: C.low_rank(d, 2),
            {"base_model": CLIPVisionModelWithProjection(tiny_clip_config(num_hidden_layers=1).vision_config)},
            ValueError,
            r"vision_model.encoder.layers.1.mlp.fc1 is not a module of CLIPVisionModelWithProjection",
        ),
    ],
    ids=["dense", "sparse", "nan-lam", "str-lam", "no-tower", "fewer-layers"],
)
def test_bad_exports_raise_and_write_nothing(make_factors, kwargs, error, message, tmp_path):
    base = tiny_vision()
    factors = make_factors(perturbed_delta(base))
    out = tmp_path / "adapter"
    out.mkdir()
    (out / ADAPTER_WEIGHTS_NAME).write_bytes(b"previous adapter")
    before = _sha(out)
    with pytest.raises(error, match=message):
        export_peft_lora(factors, None, out, **kwargs)
    assert _sha(out) == before
