"""Bad input to TaskVector: edge cases of apply_to / from_models (issue 9, group 6), vector folders (group 7) and
provenance of the operators (group 9).

Every refusal asserts the error type, a message naming the problem, and that nothing changed: the model's state
dict bit for bit, the vector's tensors, and the folder's files by sha256.
"""

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from hf_explvec import SelfExplainingCLIPVision, TaskVector, TaskVectorConfig
from hf_explvec.task_vector_config import FORMAT_VERSION
from hf_explvec.testing import tiny_clip_model


# ----------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def vector():
    base, finetuned = tiny_clip_model(seed=0), tiny_clip_model(seed=1)
    return TaskVector.from_models(base, finetuned, TaskVectorConfig(source_dataset="digits", recommended_lam=0.5))


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def sha256_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def model_in(dtype: torch.dtype) -> SelfExplainingCLIPVision:
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["cat", "dog"], class_embeddings=torch.randn(2, 16))
    return model.to(dtype)


# ------------------------------------------------------------------------------- group 6: apply_to refuses
@pytest.mark.parametrize(
    ("dtype", "lam", "error", "match"),
    [
        pytest.param(torch.float32, 1e300, ValueError, r"lam=1e\+300 is beyond the float32 range", id="lam-1e300"),
        pytest.param(torch.float32, -1e300, ValueError, r"lam=-1e\+300 is beyond the float32 range", id="lam--1e300"),
        pytest.param(torch.float32, 3e38, ValueError, r"would write NaN or Inf .*dtype float32", id="f32-overflow"),
        pytest.param(torch.float16, 1e6, ValueError, r"would write NaN or Inf .*dtype float16", id="f16-large-lam"),
        pytest.param(torch.float16, -1e6, ValueError, r"would write NaN or Inf .*dtype float16", id="f16-neg-lam"),
        pytest.param(torch.float16, 7e4, ValueError, r"largest finite value 6.55e\+04", id="f16-just-over"),
        pytest.param(torch.bfloat16, 3e38, ValueError, r"would write NaN or Inf .*dtype bfloat16", id="bf16-overflow"),
        pytest.param(torch.float32, math.nan, ValueError, "lam must be finite, got nan", id="lam-nan"),
        pytest.param(torch.float32, math.inf, ValueError, "lam must be finite, got inf", id="lam-inf"),
        pytest.param(torch.float16, -math.inf, ValueError, "lam must be finite, got -inf", id="lam--inf"),
        pytest.param(torch.float32, "1.0", TypeError, "lam must be a real number, got str", id="lam-str"),
        pytest.param(torch.float32, True, TypeError, "lam must be a real number, got bool", id="lam-bool"),
        pytest.param(torch.float32, torch.tensor(1.0), TypeError, "got Tensor", id="lam-tensor"),
    ],
)
@pytest.mark.parametrize("inplace", [True, False])
def test_apply_to_refuses_before_writing(vector, dtype, lam, error, match, inplace):
    vector = vector * 4.0  # deltas up to ~4, so that lam * delta can pass the float32 limit with a float32 lam
    model = model_in(dtype)
    before = snapshot(model)
    vector_before = {k: v.clone() for k, v in vector.state_dict().items()}
    with pytest.raises(error, match=match):
        vector.apply_to(model, lam=lam, inplace=inplace)
    assert_unchanged(model, before)
    for key, value in vector.state_dict().items():
        assert torch.equal(value, vector_before[key])


def test_the_largest_finite_lam_still_applies_in_float16(vector):
    # just below the float16 limit the update is written, and finite
    model = model_in(torch.float16)
    largest = max(float(v.abs().max()) for v in vector.state_dict().values())
    vector.apply_to(model, lam=100.0 / largest)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("inplace", [True, False])
def test_apply_to_a_meta_device_model_is_refused(vector, inplace):
    config = model_in(torch.float32).config
    with torch.device("meta"):
        model = SelfExplainingCLIPVision(config)
    names = sorted(model.state_dict())
    with pytest.raises(ValueError, match="is on the meta device"):
        vector.apply_to(model, inplace=inplace)
    assert sorted(model.state_dict()) == names and all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("which", ["base", "finetuned"])
def test_from_models_of_meta_tensors_is_refused(which):
    real = tiny_clip_model(seed=0)
    with torch.device("meta"):
        meta = type(real)(real.config)
    base, finetuned = (meta, real) if which == "base" else (real, meta)
    before = snapshot(real)
    with pytest.raises(ValueError, match=f"the {which} model has .* tensors on the meta device"):
        TaskVector.from_models(base, finetuned)
    assert_unchanged(real, before)


def test_a_vector_of_meta_tensors_is_refused(vector):
    with pytest.raises(ValueError, match="not meta tensors"):
        TaskVector({k: torch.empty(v.shape, device="meta") for k, v in vector.state_dict().items()})
    with pytest.raises(ValueError, match="not meta tensors"):
        vector.to(device="meta")


# ------------------------------------------------------------------------------ group 7: vector folders
def edit_json(name, **changes):
    def edit(folder):
        content = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**content, **changes}))

    return edit


def write(name, text):
    def edit(folder):
        (folder / name).write_text(text)

    return edit


def drop_key(name, key):
    def edit(folder):
        content = json.loads((folder / name).read_text())
        content.pop(key)
        (folder / name).write_text(json.dumps(content))

    return edit


CONFIG_CASES = [
    pytest.param(write("config.json", "{garbage"), ValueError, r"config\.json is not valid JSON", id="garbage"),
    pytest.param(write("config.json", ""), ValueError, r"config\.json is not valid JSON", id="empty"),
    pytest.param(write("config.json", "\xff\xfe"), ValueError, r"config\.json is not valid JSON", id="not-utf8"),
    pytest.param(write("config.json", "[]"), ValueError, r"config\.json must hold a JSON object, got list", id="list"),
    pytest.param(write("config.json", "null"), ValueError, "must hold a JSON object, got NoneType", id="null"),
    pytest.param(write("config.json", '"x"'), ValueError, "must hold a JSON object, got str", id="string"),
    pytest.param(edit_json("config.json", alpha="banana"), TypeError, "alpha must be a real number", id="alpha-str"),
    pytest.param(
        edit_json("config.json", alpha=1.5), ValueError, r"alpha must be in \[0, 1\], got 1.5", id="alpha-1.5"
    ),
    pytest.param(edit_json("config.json", alpha=True), TypeError, "alpha must be a real number", id="alpha-bool"),
    pytest.param(
        edit_json("config.json", recommended_lam=[1]), TypeError, "recommended_lam must be a real", id="lam-list"
    ),
    pytest.param(
        write("config.json", '{"vector_type": "clip_vision", "recommended_lam": NaN}'),
        ValueError,
        "recommended_lam must be finite, got nan",
        id="lam-nan",
    ),
    pytest.param(edit_json("config.json", base_model=42), TypeError, "base_model must be a string", id="base-int"),
    pytest.param(
        edit_json("config.json", format_version=FORMAT_VERSION + 1),
        ValueError,
        f"format_version {FORMAT_VERSION + 1}, newer than format_version {FORMAT_VERSION}",
        id="format-newer",
    ),
    pytest.param(edit_json("config.json", format_version="1"), ValueError, "positive int, got '1'", id="format-str"),
    pytest.param(edit_json("config.json", format_version=0), ValueError, "positive int, got 0", id="format-0"),
    pytest.param(edit_json("config.json", vector_type="llama"), ValueError, "type 'llama'", id="foreign-type"),
    pytest.param(drop_key("config.json", "vector_type"), ValueError, "type None", id="no-type"),
    pytest.param(edit_json("config.json", num_parameters="many"), TypeError, "num_parameters must be an int", id="n"),
    pytest.param(edit_json("config.json", num_parameters=3), ValueError, "do not match", id="wrong-count"),
]

INDEX_CASES = [
    pytest.param(drop_key("task_vector.safetensors.index.json", "weight_map"), "has no 'weight_map'", id="no-map"),
    pytest.param(edit_json("task_vector.safetensors.index.json", weight_map=[]), "has no 'weight_map'", id="list-map"),
    pytest.param(write("task_vector.safetensors.index.json", "{"), "is not valid JSON", id="garbage-index"),
    pytest.param(write("task_vector.safetensors.index.json", "[]"), "has no 'weight_map'", id="list-index"),
    pytest.param(
        edit_json("task_vector.safetensors.index.json", weight_map={"a": "../x.safetensors"}),
        "only local .safetensors",
        id="escaping-shard",
    ),
    pytest.param(
        edit_json("task_vector.safetensors.index.json", weight_map={"a": "x.bin"}),
        "only local .safetensors",
        id="pickle-shard",
    ),
]


@pytest.mark.parametrize(("edit", "error", "match"), CONFIG_CASES)
def test_bad_config_json_is_refused_naming_the_file(vector, tmp_path, edit, error, match):
    vector.save_pretrained(tmp_path)
    edit(tmp_path)
    before = sha256_files(tmp_path)
    with pytest.raises(error, match=match) as info:
        TaskVector.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert sha256_files(tmp_path) == before


@pytest.mark.parametrize(("edit", "match"), INDEX_CASES)
def test_bad_index_is_refused_naming_the_file(vector, tmp_path, edit, match):
    vector.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "task_vector.safetensors.index.json").is_file()
    edit(tmp_path)
    before = sha256_files(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        TaskVector.from_pretrained(tmp_path)
    assert "task_vector.safetensors.index.json" in str(info.value)
    assert sha256_files(tmp_path) == before


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"alpha": "banana"}, TypeError, "alpha must be a real number or None, got str 'banana'"),
        ({"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\]"),
        ({"recommended_lam": math.inf}, ValueError, "recommended_lam must be finite"),
        ({"source_dataset": ["a"]}, TypeError, "source_dataset must be a string or None"),
    ],
)
def test_task_vector_config_refuses_mistyped_fields(vector, fields, error, match):
    with pytest.raises(error, match=match):
        TaskVectorConfig(**fields)
    with pytest.raises(TypeError, match="config must be a TaskVectorConfig"):
        TaskVector(vector.state_dict(), config=fields)


def test_a_field_mistyped_after_construction_is_refused_before_writing(vector, tmp_path):
    mistyped = copy.copy(vector)
    mistyped.config = TaskVectorConfig(alpha=0.8)
    mistyped.config.alpha = "banana"
    with pytest.raises(TypeError, match="alpha must be a real number"):
        mistyped.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------- group 9: provenance
def test_sums_and_differences_drop_recommended_lam(vector):
    assert vector.config.recommended_lam == 0.5
    for combined in (vector + vector, vector - vector, sum([vector, vector]), vector + 2 * vector):
        assert combined.config.recommended_lam is None
        assert combined.config.source_dataset == "digits"  # where it came from is still known
    for scaled in (2 * vector, vector * 2, vector / 2, -vector):
        assert scaled.config.recommended_lam is None
    assert sum([vector]).config.recommended_lam == 0.5  # sum of one vector is the vector itself
    assert vector.to(torch.float16).config.recommended_lam == 0.5  # same vector, other dtype
    assert vector.config.recommended_lam == 0.5  # the operands are untouched
