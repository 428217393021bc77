import base64
import copy
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPForImageClassification

from hf_explvec.arithmetic import vision_state
from hf_explvec.base_check import (
    DEFAULT_THRESHOLD,
    BaseModelMismatchError,
    base_distance,
    base_fingerprint,
    check_base,
    validate_base_fingerprint,
)
from hf_explvec.testing import tiny_clip_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def state_of(model) -> dict[str, torch.Tensor]:
    return vision_state(model.state_dict())


@pytest.fixture(scope="module")
def base():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def fingerprint(base):
    return base_fingerprint(state_of(base))


def toy_images(n: int, seed: int):
    """4 classes: the column of a bright 8x8 patch on noise (32x32 images)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=generator) - 0.5
    labels = torch.randint(0, 4, (n,), generator=generator)
    rows = torch.randint(0, 4, (n,), generator=generator)
    for i in range(n):
        r, c = int(rows[i]), int(labels[i])
        images[i, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += 1.5
    return images, labels


def finetuned_classifier(clip, steps: int, lr: float, seed: int = 0) -> CLIPForImageClassification:
    """A `CLIPForImageClassification` started from `clip`'s vision tower (new linear head), every weight trained
    with AdamW (weight decay 0.01) for `steps` steps of 16 images."""
    torch.manual_seed(seed)
    config = copy.deepcopy(clip.config)
    config.num_labels = 4
    model = CLIPForImageClassification(config)
    model.load_state_dict(clip.state_dict(), strict=False)
    images, labels = toy_images(256, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (16,), generator=generator)
        loss = F.cross_entropy(model(pixel_values=images[index]).logits, labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def pretrained(base):
    """The tiny CLIP "pretrained" for 150 steps at learning rate 1e-3."""
    return finetuned_classifier(base, steps=150, lr=1e-3, seed=0)


# ------------------------------------------------------------------------------------------------- the fingerprint
def test_fingerprint_is_compact_json_versioned_and_deterministic(base, fingerprint):
    text = json.dumps(fingerprint)
    assert json.loads(text) == fingerprint
    assert len(text) < 16_000
    assert fingerprint["method"] == "coordinate-sketch" and fingerprint["version"] == 1
    state = state_of(base)
    # Tensors with at least 2 dimensions only (no biases, no LayerNorms), each with its shape.
    expected = {k for k, v in state.items() if v.dim() >= 2}
    assert set(fingerprint["tensors"]) == expected
    assert all(fingerprint["tensors"][k]["shape"] == list(state[k].shape) for k in expected)
    # The same fingerprint from another copy of the weights, with the keys in another order.
    reordered = dict(reversed(list(state_of(tiny_clip_model(seed=0)).items())))
    assert base_fingerprint(reordered) == fingerprint
    assert validate_base_fingerprint(json.loads(text), "config.json") == fingerprint


def test_the_base_itself_in_another_dtype_is_accepted(base, fingerprint):
    state = state_of(base)
    assert base_distance(fingerprint, state) < 1e-3
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        copy_state = {k: v.to(dtype) for k, v in state.items()}
        assert check_base(fingerprint, copy_state, "tiny") < 0.01, dtype
    # A bf16 copy of the base fingerprints the same as the base, up to rounding.
    bf16_print = base_fingerprint({k: v.bfloat16() for k, v in state.items()})
    assert base_distance(bf16_print, state) < 0.01


def test_non_contiguous_tensors_are_read_in_place(base, fingerprint):
    state = state_of(base)
    transposed = {k: (v.t().contiguous().t() if v.dim() == 2 else v) for k, v in state.items()}
    assert not transposed["vision_model.encoder.layers.0.mlp.fc1.weight"].is_contiguous()
    assert base_distance(fingerprint, transposed) < 1e-3


# ------------------------------------------------------------------------------------------- honest fine-tunes
def test_long_full_finetune_at_a_large_learning_rate_is_accepted(base, fingerprint):
    # 300 AdamW steps at lr 1e-2 on every weight of a CLIPForImageClassification (no visual projection: skipped).
    model = finetuned_classifier(base, steps=300, lr=1e-2)
    state, start = state_of(model), state_of(base)
    assert "visual_projection.weight" not in state
    name = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.linalg.vector_norm(state[name] - start[name]) > 0.5 * torch.linalg.vector_norm(start[name])
    assert check_base(fingerprint, state, "tiny") < DEFAULT_THRESHOLD - 0.2


def test_finetune_of_a_trained_base_is_accepted(pretrained):
    trained_print = base_fingerprint(state_of(pretrained))
    finetuned = finetuned_classifier(pretrained, steps=200, lr=1e-2, seed=1)  # other data, large learning rate
    assert check_base(trained_print, state_of(finetuned), "trained") < DEFAULT_THRESHOLD - 0.2
    # The pretraining itself descends from its initialisation.
    assert check_base(base_fingerprint(state_of(tiny_clip_model(seed=0))), state_of(pretrained), "init") < 0.2


def test_self_explaining_training_is_accepted(tmp_path, fingerprint):
    import datasets

    from hf_explvec.modeling import SelfExplainingCLIPVision
    from hf_explvec.testing import tiny_clip_tokenizer
    from hf_explvec.training import TrainingConfig, train

    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=0), ["a", "b", "c", "d"],
                                               tokenizer=tiny_clip_tokenizer())  # fmt: skip
    images, labels = toy_images(64, 0)
    shap = torch.nn.functional.one_hot(labels, 16).float()
    dataset = datasets.Dataset.from_dict(
        {"pixel_values": images.numpy(), "labels": labels.numpy(), "shap_values": shap.numpy()}
    ).with_format("torch")
    config = TrainingConfig(tmp_path, learning_rate=1e-2, max_steps=60, per_device_batch_size=16, log_every=60,
                            disable_tqdm=True)  # fmt: skip
    train(model, dataset, config)
    assert check_base(fingerprint, state_of(model), "tiny") < DEFAULT_THRESHOLD - 0.2


# ----------------------------------------------------------------------------------------- foreign pretrainings
def test_another_initialisation_is_refused_naming_the_base(fingerprint):
    other = state_of(tiny_clip_model(seed=1))
    assert base_distance(fingerprint, other) > 0.9
    with pytest.raises(BaseModelMismatchError, match="'org/base-clip'.*check_base=False") as caught:
        check_base(fingerprint, other, "org/base-clip")
    assert isinstance(caught.value, ValueError)
    assert caught.value.base_model == "org/base-clip" and caught.value.threshold == DEFAULT_THRESHOLD
    assert caught.value.distance > DEFAULT_THRESHOLD
    copied = copy.deepcopy(caught.value)
    assert str(copied) == str(caught.value) and copied.base_model == "org/base-clip"
    with pytest.raises(BaseModelMismatchError, match="unknown base"):
        check_base(fingerprint, other, None)


def test_a_model_pretrained_from_another_seed_is_refused(base, pretrained):
    other = finetuned_classifier(tiny_clip_model(seed=1), steps=150, lr=1e-3, seed=0)  # same data, other init
    for fingerprint in (base_fingerprint(state_of(pretrained)), base_fingerprint(state_of(base))):
        assert base_distance(fingerprint, state_of(other)) > 0.9
        with pytest.raises(BaseModelMismatchError):
            check_base(fingerprint, state_of(other), "base")


# ---------------------------------------------------------------------------------------------- bad input
NAME = "vision_model.encoder.layers.0.mlp.fc1.weight"


def with_entry(key, value):
    """An edit that sets `key` of the fc1 entry of a copy of the fingerprint."""

    def edit(fingerprint):
        broken = copy.deepcopy(fingerprint)
        broken["tensors"][NAME][key] = value
        return broken

    return edit


def f16(values) -> str:
    return base64.b64encode(np.asarray(values, "<f2").tobytes()).decode()


BAD = [
    (lambda f: list(f), TypeError, "must be a JSON object"),
    (lambda f: {**f, "method": 3}, TypeError, "method must be a string"),
    (lambda f: {**f, "method": "sha256"}, ValueError, "knows 'coordinate-sketch'"),
    (lambda f: {**f, "version": "1"}, TypeError, "version must be an int"),
    (lambda f: {**f, "version": True}, TypeError, "version must be an int"),
    (lambda f: {**f, "version": 0}, ValueError, "version must be >= 1"),
    (lambda f: {**f, "version": 2}, ValueError, "upgrade hf_explvec"),
    (lambda f: {k: v for k, v in f.items() if k != "tensors"}, TypeError, "tensors must be a JSON object"),
    (lambda f: {**f, "tensors": {}}, ValueError, "tensors is empty"),
    (lambda f: {**f, "tensors": {**f["tensors"], NAME: [1, 2]}}, TypeError, "must be a JSON object"),
    (with_entry("shape", "37x32"), TypeError, "shape must be a list of ints"),
    (with_entry("shape", [37, 32.0]), TypeError, "shape must be a list of ints"),
    (with_entry("shape", [1184]), ValueError, "at least 2 positive sizes"),
    (with_entry("shape", [37, 0]), ValueError, "at least 2 positive sizes"),
    (with_entry("shape", [2, 2]), ValueError, "expected 2 to 4"),
    (with_entry("sketch", [0.1, 0.2]), TypeError, "sketch must be a base64 string"),
    (with_entry("sketch", "not base64!"), ValueError, "not valid base64"),
    (with_entry("sketch", base64.b64encode(b"abc").decode()), ValueError, "not a whole number of float16"),
    (with_entry("sketch", f16([1.0, np.nan])), ValueError, "NaN or infinity"),
    (with_entry("sketch", ""), ValueError, "holds 0 values"),
    (with_entry("sketch", f16([0.0] * 8)), ValueError, "8 equal values"),  # base_distance would divide by zero
]


@pytest.mark.parametrize("edit, error, message", BAD)
def test_malformed_fingerprints_are_named(fingerprint, edit, error, message):
    broken = edit(fingerprint)
    with pytest.raises(error, match=message) as caught:
        validate_base_fingerprint(broken, "some/config.json")
    assert "some/config.json: base_fingerprint" in str(caught.value)
    with pytest.raises(error, match=message):
        base_distance(broken, {})


def test_no_overlap_is_an_error_not_a_verdict(fingerprint):
    wider = state_of(tiny_clip_model(seed=0, hidden_size=48, num_attention_heads=4))  # same names, other shapes
    with pytest.raises(ValueError, match="shares no tensor"):
        base_distance(fingerprint, wider)
    with pytest.raises(ValueError, match="shares no tensor"):
        check_base(fingerprint, {"classifier.weight": torch.randn(4, 32)}, "tiny")


def test_bad_states_and_thresholds(base, fingerprint):
    state = state_of(base)
    with pytest.raises(TypeError, match="mapping of names to tensors"):
        base_fingerprint([1, 2])
    with pytest.raises(TypeError, match="not tensors: a"):
        base_fingerprint({**state, "a": [1.0]})
    with pytest.raises(ValueError, match="no floating-point tensor with at least 2 dimensions"):
        base_fingerprint({k: v for k, v in state.items() if v.dim() < 2})
    with pytest.raises(ValueError, match="every tensor with at least 2 dimensions is constant"):
        base_fingerprint({"w": torch.ones(4, 4)})
    nan = {**state, NAME: torch.full_like(state[NAME], float("nan"))}
    with pytest.raises(ValueError, match=f"base model's {NAME} holds NaN"):
        base_fingerprint(nan)
    with pytest.raises(ValueError, match=f"model's {NAME} holds NaN"):
        base_distance(fingerprint, nan)
    meta = {k: torch.empty_like(v, device="meta") for k, v in state.items()}
    with pytest.raises(ValueError, match="meta device"):
        base_distance(fingerprint, meta)
    for threshold, error in ((0.0, ValueError), (2.5, ValueError), (float("nan"), ValueError), ("1", TypeError),
                             (True, TypeError)):  # fmt: skip
        with pytest.raises(error, match="threshold"):
            check_base(fingerprint, state, "tiny", threshold=threshold)
    assert check_base(fingerprint, state_of(tiny_clip_model(seed=1)), "tiny", threshold=2.0) > 0.9


def test_a_constant_tensor_in_the_model_counts_as_unrelated(base, fingerprint):
    state = dict(state_of(base))
    zeroed = {k: (torch.zeros_like(v) if v.dim() >= 2 else v) for k, v in state.items()}
    assert base_distance(fingerprint, zeroed) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_vit_b32_fingerprint_size_and_time():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig())
    state = state_of(model)
    start = time.perf_counter()
    fingerprint = base_fingerprint(state)
    seconds = time.perf_counter() - start
    size = len(json.dumps(fingerprint))
    start = time.perf_counter()
    assert base_distance(fingerprint, state) < 1e-3
    compare = time.perf_counter() - start
    print(f"ViT-B/32: {len(fingerprint['tensors'])} tensors, {size} bytes of JSON, base_fingerprint {seconds:.3f} s, "
          f"base_distance {compare:.3f} s")  # fmt: skip
    assert len(fingerprint["tensors"]) == 75 and size < 20_000 and seconds < 2.0 and compare < 2.0
    assert base_distance(fingerprint, {k: v.bfloat16() for k, v in state.items()}) < 0.01
    torch.manual_seed(1)
    other = CLIPVisionModelWithProjection(CLIPVisionConfig())
    with pytest.raises(BaseModelMismatchError, match="openai/clip-vit-base-patch32"):
        check_base(fingerprint, state_of(other), "openai/clip-vit-base-patch32")
