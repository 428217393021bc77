"""TaskVector's compressed and merged forms (issue 12) through the public API: sparsify, low_rank, merge, their
algebra, apply_to without densifying, save/load/push/pull in compact form, the card, the PEFT export, and bad input
(each refusal names the problem and leaves the vector, the model and the files as they were)."""

import copy
import hashlib
import json
import math

import pytest
import torch
from conftest import fine_tune
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from hf_explvec import IncompatibleKeysError, SelfExplainingCLIPVision, TaskVector, TaskVectorConfig
from hf_explvec import compression as C
from hf_explvec.compression import LowRankTensor, SparseTensor
from hf_explvec.task_vector_config import FORMAT_VERSION
from hf_explvec.testing import tiny_clip_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def vector(base):
    return TaskVector.from_models(
        base, fine_tune(base, 1), source_dataset="digits", recommended_lam=0.8, finetuned_model="org/explainer"
    )


def mixed(vector):
    """Sparse linear weights of layer 0, low-rank ones elsewhere, the rest dense."""
    low = vector.low_rank(3).state_dict()
    sparse = vector.sparsify(0.25).state_dict()
    return TaskVector(
        {k: sparse[k] if "layers.0" in k and isinstance(low[k], LowRankTensor) else v for k, v in low.items()}
    )


FORMS = {
    "sparse": lambda v: v.sparsify(0.1),
    "dare": lambda v: v.sparsify(0.3, method="random_rescaled", generator=torch.Generator().manual_seed(0)),
    "low_rank": lambda v: v.low_rank(4),
    "mixed": mixed,
    "merged": lambda v: TaskVector.merge([v, 0.5 * v], method="ties", density=0.5),
}
FORMAT_OF = {"sparse": "sparse", "dare": "sparse", "low_rank": "low_rank", "mixed": "mixed", "merged": "dense"}


def model_of(base, dtype=torch.float32):
    return SelfExplainingCLIPVision.from_clip(copy.deepcopy(base), ["a", "b"], class_embeddings=torch.randn(2, 16)).to(
        dtype
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def parts(entry):
    """The stored tensors of an entry, to compare two vectors bit for bit."""
    if isinstance(entry, SparseTensor):
        return [entry.indices, entry.values]
    if isinstance(entry, LowRankTensor):
        return [entry.a, entry.b]
    return [entry]


def assert_same_entries(a: TaskVector, b: TaskVector):
    assert a.keys() == b.keys()
    for key, entry in a.state_dict().items():
        other = b.state_dict()[key]
        assert type(entry) is type(other) and tuple(entry.shape) == tuple(other.shape), key
        for x, y in zip(parts(entry), parts(other), strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y), key


def vision(model):
    from hf_explvec.arithmetic import vision_state

    return {k: v.detach().clone() for k, v in vision_state(model.state_dict()).items()}


def sha256_files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------------- the forms
def test_sparsify_keeps_the_largest_values_of_each_tensor_and_records_how(vector):
    sparse = vector.sparsify(0.1)
    assert sparse.storage_format == "sparse" and sparse.keys() == vector.keys()
    assert sparse.fingerprint == vector.fingerprint and sparse.num_parameters == vector.num_parameters
    for key, entry in sparse.state_dict().items():
        dense = vector.state_dict()[key].flatten()
        k = math.ceil(round(0.1 * dense.numel(), 6))
        assert isinstance(entry, SparseTensor) and len(entry.values) == k
        assert set(entry.indices.tolist()) == set(torch.topk(dense.abs(), k).indices.tolist()), key
        assert torch.equal(entry.values, dense[entry.indices.long()])
    assert (sparse.config.sparsify_method, sparse.config.density, sparse.config.rank) == ("magnitude", 0.1, None)
    # where it came from and the λ chosen for the full vector are kept
    assert sparse.config.source_dataset == "digits" and sparse.config.recommended_lam == 0.8
    assert sparse.storage_nbytes < vector.storage_nbytes / 4
    assert vector.storage_format == "dense" and vector.config.sparsify_method is None  # the source is untouched


def test_a_compressed_vector_is_a_new_vector_not_the_one_it_was_loaded_from(vector, tmp_path):
    """remove_vector and provenance look a loaded vector up by name and commit: a compressed copy is not that vector."""
    vector.save_pretrained(tmp_path / "dense")
    loaded = TaskVector.from_pretrained(tmp_path / "dense")
    assert loaded.name_or_path == str(tmp_path / "dense")
    for compressed in (loaded.sparsify(0.1), loaded.low_rank(2)):
        assert compressed.name_or_path is None and compressed.commit_hash is None
    assert loaded.to(torch.bfloat16).name_or_path == loaded.name_or_path  # a change of dtype keeps it


def test_dare_is_reproducible_and_rescaled(vector):
    draw = lambda seed: vector.sparsify(0.5, "random_rescaled", generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = draw(0), draw(0), draw(1)
    assert_same_entries(a, b)
    assert (a - c).norm() > 0
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    entry = a.state_dict()[key]
    torch.testing.assert_close(entry.values, vector.state_dict()[key].flatten()[entry.indices.long()] / 0.5)
    assert a.config.sparsify_method == "random_rescaled" and a.config.density == 0.5


def test_low_rank_factors_linear_weights_only_and_is_exact_at_full_rank(vector):
    low = vector.low_rank(2)
    assert low.storage_format == "low_rank" and low.config.rank == 2
    for key, entry in low.state_dict().items():
        factored = len(entry.shape) == 2 and "embedding" not in key
        assert isinstance(entry, LowRankTensor) == factored, key
        if factored:
            assert entry.rank == 2
        else:
            assert torch.equal(entry, vector.state_dict()[key])
    full = vector.low_rank(1000)  # every tensor keeps all of its rank
    assert (full.to_dense() - vector).norm() < 1e-5 * vector.norm()
    assert low.storage_nbytes < vector.storage_nbytes


@pytest.mark.parametrize("form", FORMS)
def test_algebra_on_compressed_vectors_matches_the_densified_vector(vector, form):
    compressed = FORMS[form](vector)
    dense = compressed.to_dense()
    assert dense.storage_format == "dense" and dense.config == compressed.config
    assert compressed.norm() == pytest.approx(dense.norm(), rel=1e-6)
    assert compressed.cosine_similarity(vector) == pytest.approx(dense.cosine_similarity(vector), rel=1e-6)
    scaled = -2 * compressed
    assert scaled.storage_format == compressed.storage_format  # scaling keeps the compact form
    assert (scaled.to_dense() + 2 * dense).norm() < 1e-5 * dense.norm()
    total = compressed + vector  # densified key by key
    assert total.storage_format == "dense"
    assert (total - (dense + vector)).norm() == 0.0
    assert total.config.sparsify_method is None and total.config.rank is None and total.config.merge is None
    half = compressed.to(torch.bfloat16)
    assert half.storage_format == compressed.storage_format and half.dtype == torch.bfloat16


@pytest.mark.parametrize("form", ["sparse", "dare", "low_rank", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_to_a_compressed_vector_equals_applying_it_densified(base, vector, form, dtype):
    compressed = FORMS[form](vector)
    a, b = model_of(base, dtype), model_of(base, dtype)
    b.load_state_dict(a.state_dict())
    compressed.apply_to(a, lam=0.7)
    compressed.to_dense().apply_to(b, lam=0.7)
    tolerance = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for key, value in vision(a).items():
        torch.testing.assert_close(value, vision(b)[key], **tolerance)
    before = vision(model_of(base, dtype))
    changed = sum(not torch.equal(value, before[key]) for key, value in vision(a).items())
    assert changed == len(vision(a))


def test_apply_to_never_densifies_a_compressed_vector(base, vector, monkeypatch):
    """The code path: with every way of densifying an entry made to fail, apply_to still works."""
    compressed = mixed(vector)
    expected = model_of(base)
    compressed.apply_to(expected, lam=0.5)

    def refuse(*args, **kwargs):
        raise AssertionError("apply_to densified a compressed entry")

    for target in (SparseTensor, LowRankTensor):
        monkeypatch.setattr(target, "to_dense", refuse)
    monkeypatch.setattr(C, "to_dense", refuse)
    monkeypatch.setattr(C, "densify", refuse)
    for dtype in (torch.float32, torch.bfloat16):
        model = model_of(base, dtype)
        compressed.apply_to(model, lam=0.5)
        for key, value in vision(model).items():
            torch.testing.assert_close(value.float(), vision(expected)[key], atol=2e-2, rtol=2e-2)


def peak_bytes(fn) -> int:
    """The largest amount of CPU memory allocated and not yet freed while `fn` runs (torch profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("form", ["dense", "sparse", "low_rank"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_to_holds_at_most_one_dense_tensor_at_a_time(form, dtype):
    """Measured: the memory apply_to allocates stays below 1.5 float32 copies of the largest parameter, while the
    dense vector is 6x larger than that parameter."""
    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(config)
    tau = TaskVector.from_models(model, fine_tune(model, 2))
    tau = {"dense": tau, "sparse": tau.sparsify(0.1), "low_rank": tau.low_rank(4)}[form]
    largest = max(math.prod(v.shape) for v in tau.state_dict().values()) * 4
    assert tau.num_parameters * 4 > 6 * largest
    target = model.to(dtype)
    peak = peak_bytes(lambda: tau.apply_to(target, lam=0.5))
    assert 0 < peak < 1.5 * largest


# ---------------------------------------------------------------------------------------------------- merges
def test_merge_sum_is_the_weighted_sum(base, vector):
    other = TaskVector.from_models(base, fine_tune(base, 3), source_dataset="digits", finetuned_model="org/other")
    merged = TaskVector.merge([vector, other], weights=[0.75, 0.5])
    assert (merged - (0.75 * vector + 0.5 * other)).norm() < 1e-6 * merged.norm()
    assert merged.storage_format == "dense" and merged.dtype == torch.float32
    assert merged.config.merge == {
        "method": "sum",
        "weights": [0.75, 0.5],
        "density": None,
        "sources": ["org/explainer", "org/other"],
    }
    assert merged.config.source_dataset == "digits"  # all sources agree
    assert merged.config.finetuned_model is None and merged.config.recommended_lam is None


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_merge_ties_of_compressed_vectors_equals_the_merge_of_the_densified(base, vector, method):
    other = TaskVector.from_models(base, fine_tune(base, 4))
    sources = [vector.low_rank(4), other.sparsify(0.5)]
    seeded = lambda: {"generator": torch.Generator().manual_seed(0)} if method == "dare_ties" else {}  # noqa: E731
    merged = TaskVector.merge(sources, method=method, density=0.3, **seeded())
    densified = TaskVector.merge([s.to_dense() for s in sources], method=method, density=0.3, **seeded())
    assert (merged - densified).norm() == 0.0
    reference = getattr(C, f"{method}_merge")(
        [s.to_dense().state_dict() for s in sources],
        None,
        0.3,
        *([torch.Generator().manual_seed(0)] * (method == "dare_ties")),
    )
    for key, value in merged.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert merged.config.merge["method"] == method and merged.config.merge["density"] == 0.3
    assert merged.config.sparsify_method is None and merged.config.rank is None  # the result is dense


# ----------------------------------------------------------------------------------- save / load / hub
@pytest.mark.parametrize("form", FORMS)
def test_save_load_round_trip_of_each_form(vector, form, tmp_path):
    compressed = FORMS[form](vector)
    compressed.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["format"] == FORMAT_OF[form] == compressed.storage_format
    assert raw["format_version"] == (1 if FORMAT_OF[form] == "dense" else 2)
    assert raw["storage_bytes"] == compressed.storage_nbytes
    assert {k: raw[k] for k in ("sparsify_method", "density", "rank", "merge")} == {
        k: getattr(compressed.config, k) for k in ("sparsify_method", "density", "rank", "merge")
    }
    weights = load_file(tmp_path / "task_vector.safetensors")
    data_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    assert data_bytes == compressed.storage_nbytes
    loaded = TaskVector.from_pretrained(tmp_path)
    assert_same_entries(loaded, compressed)
    assert loaded.config == compressed.config
    card = (tmp_path / "README.md").read_text()
    assert f"{compressed.storage_nbytes / 1e3:.1f} kB of weights on disk" in card
    assert FORMAT_OF[form].replace("_", "-") in card


def test_sparse_file_is_smaller_on_disk(vector, tmp_path):
    vector.save_pretrained(tmp_path / "dense")
    vector.sparsify(0.1).save_pretrained(tmp_path / "sparse")
    size = lambda name: (tmp_path / name / "task_vector.safetensors").stat().st_size  # noqa: E731
    # the tiny model's 40 tensors give the safetensors header (3 parts per sparse tensor) a weight it has not at scale
    assert size("sparse") < size("dense") / 2


def test_sharded_compact_vector_loads_back(vector, tmp_path):
    compressed = mixed(vector)
    compressed.save_pretrained(tmp_path, max_shard_size="8KB")
    assert len(list(tmp_path.glob("task_vector-*.safetensors"))) > 1
    assert_same_entries(TaskVector.from_pretrained(tmp_path), compressed)


def test_dense_files_stay_readable_by_format_version_1_readers(vector, tmp_path, monkeypatch):
    """A dense vector is written as format_version 1; a compressed one as 2, which a version-1 reader refuses by
    name rather than misreading its index and factor tensors."""
    import hf_explvec.task_vector_config as config_module

    vector.save_pretrained(tmp_path / "dense")
    vector.low_rank(2).save_pretrained(tmp_path / "low")
    monkeypatch.setattr(config_module, "FORMAT_VERSION", 1)
    assert TaskVector.from_pretrained(tmp_path / "dense").config == vector.config
    with pytest.raises(ValueError, match="format_version 2, newer than format_version 1"):
        TaskVector.from_pretrained(tmp_path / "low")


@pytest.mark.parametrize("form", FORMS)
def test_push_and_pull_of_each_form(local_hub, vector, form):
    compressed = FORMS[form](vector)
    commit = compressed.push_to_hub(f"org/vector-{form}")
    loaded = TaskVector.from_pretrained(f"org/vector-{form}")
    assert_same_entries(loaded, compressed)
    assert loaded.config == compressed.config and loaded.commit_hash == commit.oid
    card = ModelCard.load(f"org/vector-{form}")
    assert f"{compressed.storage_nbytes / 1e3:.1f} kB of weights on disk" in card.text
    raw = json.loads(local_hub.read_file(f"org/vector-{form}", "config.json"))
    assert raw["format"] == FORMAT_OF[form]


def test_a_merge_of_pulled_vectors_names_its_sources_by_repo_and_commit(local_hub, vector):
    first = vector.sparsify(0.5).push_to_hub("org/first").oid
    second = vector.low_rank(4).push_to_hub("org/second").oid
    pulled = [TaskVector.from_pretrained("org/first"), TaskVector.from_pretrained("org/second")]
    merged = TaskVector.merge(pulled, weights=[1.0, 0.5])
    assert merged.config.merge["sources"] == [f"org/first@{first}", f"org/second@{second}"]
    merged.push_to_hub("org/merged")
    card = ModelCard.load("org/merged")
    assert f"sum of org/first@{first} (weight 1.0), org/second@{second} (weight 0.5)" in card.text
    assert TaskVector.from_pretrained("org/merged").config.merge == merged.config.merge


# ------------------------------------------------------------------------------------------------ PEFT export
def test_export_peft_lora_of_a_low_rank_vector_reproduces_apply_to_on_covered_layers(base, vector, tmp_path):
    peft = pytest.importorskip("peft")
    low = vector.low_rank(4)
    vision_base = CLIPVisionModelWithProjection(base.config.vision_config).eval()
    vision_base.vision_model.load_state_dict(base.vision_model.state_dict())
    vision_base.visual_projection.load_state_dict(base.visual_projection.state_dict())
    lost = low.export_peft_lora(tmp_path / "adapter", lam=0.6)
    assert lost and all(not isinstance(low.state_dict()[k], LowRankTensor) for k in lost)
    merged = peft.PeftModel.from_pretrained(copy.deepcopy(vision_base), tmp_path / "adapter").merge_and_unload()
    reference = low.apply_to(copy.deepcopy(vision_base), lam=0.6, inplace=False)
    before = vision(vision_base)
    for key, value in vision(merged).items():
        if key in lost:
            assert torch.equal(value, before[key]), key  # what LoRA cannot carry is left as it was
        else:
            torch.testing.assert_close(value, vision(reference)[key])


def test_export_peft_lora_of_a_dense_vector_is_refused_and_writes_nothing(vector, tmp_path):
    with pytest.raises(ValueError, match="nothing to export: no entry is a LowRankTensor"):
        vector.export_peft_lora(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# -------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("density", "error", "match"),
    [
        (0.0, ValueError, r"density must be in \(0, 1\], got 0.0"),
        (-0.1, ValueError, r"density must be in \(0, 1\], got -0.1"),
        (1.5, ValueError, r"density must be in \(0, 1\], got 1.5"),
        (float("nan"), ValueError, "density must be finite, got nan"),
        ("0.5", TypeError, "density must be a real number, got str"),
        (True, TypeError, "density must be a real number, got bool"),
    ],
)
@pytest.mark.parametrize("method", ["magnitude", "random_rescaled"])
def test_bad_density_is_refused(vector, density, error, match, method):
    before = {k: v.clone() for k, v in vector.state_dict().items()}
    with pytest.raises(error, match=match):
        vector.sparsify(density, method=method)
    with pytest.raises(error, match=match):
        TaskVector.merge([vector, vector], method="ties", density=density)
    assert all(torch.equal(v, before[k]) for k, v in vector.state_dict().items())


@pytest.mark.parametrize(
    ("rank", "error", "match"),
    [
        (0, ValueError, "rank must be >= 1, got 0"),
        (-3, ValueError, "rank must be >= 1, got -3"),
        (2.0, TypeError, "rank must be an int, got float"),
        (2.5, TypeError, "rank must be an int, got float"),
        ("4", TypeError, "rank must be an int, got str"),
        (True, TypeError, "rank must be an int, got bool"),
        (None, TypeError, "rank must be an int, got NoneType"),
    ],
)
def test_bad_rank_is_refused(vector, rank, error, match):
    with pytest.raises(error, match=match):
        vector.low_rank(rank)
    assert vector.storage_format == "dense" and vector.config.rank is None


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda v: v.sparsify(0.5, method="top-k"), ValueError, "method must be one of .*'magnitude'.*, got 'top-k'"),
        (lambda v: v.sparsify(0.5, generator=torch.Generator()), ValueError, "generator is used by method='random_r"),
        (lambda v: v.sparsify(0.5, "random_rescaled", generator=0), TypeError, "generator must be a torch.Generator"),
        (lambda v: TaskVector.merge([]), ValueError, "at least one TaskVector"),
        (lambda v: TaskVector.merge(v), TypeError, "merge takes a list of TaskVector, got TaskVector"),
        (lambda v: TaskVector.merge([v, v.state_dict()]), TypeError, "TaskVector objects only; got 1: dict"),
        (lambda v: TaskVector.merge([v, v], method="mean"), ValueError, "method must be one of .*, got 'mean'"),
        (lambda v: TaskVector.merge([v, v], weights=[1.0]), ValueError, "got 1 weights for 2 vectors"),
        (lambda v: TaskVector.merge([v, v], weights=2.0), TypeError, "weights must be a list of numbers"),
        (lambda v: TaskVector.merge([v, v], weights=[1, float("inf")]), ValueError, r"weights\[1\] must be finite"),
        (lambda v: TaskVector.merge([v, v], weights=[1, "2"]), TypeError, r"weights\[1\] must be a real number"),
        (lambda v: TaskVector.merge([v, v], density=0.5), ValueError, "density is used by method='ties'"),
        (
            lambda v: TaskVector.merge([v, v], method="ties", generator=torch.Generator()),
            ValueError,
            "generator is used by method='dare_ties' only",
        ),
    ],
)
def test_bad_arguments_of_sparsify_and_merge_are_refused(vector, call, error, match):
    before = {k: v.clone() for k, v in vector.state_dict().items()}
    with pytest.raises(error, match=match):
        call(vector)
    assert all(torch.equal(v, before[k]) for k, v in vector.state_dict().items())


@pytest.mark.parametrize("method", ["sum", "ties", "dare_ties"])
def test_merging_vectors_of_different_layouts_is_refused(base, vector, method):
    deeper = tiny_clip_model(seed=5, num_hidden_layers=3)
    other = TaskVector.from_models(deeper, fine_tune(deeper, 6))
    with pytest.raises(IncompatibleKeysError, match="vector 0 and vector 1 do not have the same tensors") as info:
        TaskVector.merge([vector, other.sparsify(0.5)], method=method)
    assert "vision_model.encoder.layers.2.mlp.fc1.weight" in info.value.unexpected
    wider = tiny_clip_model(seed=5, hidden_size=64, intermediate_size=37)
    with pytest.raises(IncompatibleKeysError, match=r"shape mismatch"):
        TaskVector.merge([vector.low_rank(2), TaskVector.from_models(wider, fine_tune(wider, 7))], method=method)


def rewrite_weights(edit):
    def apply(folder):
        path = folder / "task_vector.safetensors"
        tensors = load_file(path)
        edit(tensors)
        save_file(tensors, path, metadata={"format": "pt"})

    return apply


def set_key(key, value):
    def edit(tensors):
        tensors[key] = value

    return edit


def drop(key):
    def edit(tensors):
        del tensors[key]

    return edit


def edit_config(**changes):
    def apply(folder):
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**raw, **changes}))

    return apply


FC1 = "vision_model.encoder.layers.0.mlp.fc1.weight"
CORRUPTIONS = [
    pytest.param("sparse", rewrite_weights(set_key(FC1 + ".indices", torch.tensor([5, 3], dtype=torch.int32))),
                 "indices must be strictly increasing|values must be 1-D with one value per index", id="unsorted"),
    pytest.param("sparse", rewrite_weights(drop(FC1 + ".values")), "corrupted compact entry: has parts",
                 id="no-values"),
    pytest.param("sparse", rewrite_weights(set_key(FC1 + ".shape", torch.tensor([2, 2]))), "indices must lie in",
                 id="shape-too-small"),
    pytest.param("sparse", rewrite_weights(set_key(FC1 + ".shape", torch.tensor([37.0, 32.0]))),
                 ".shape must be a 1-D int tensor", id="float-shape"),
    pytest.param("low_rank", rewrite_weights(set_key(FC1 + ".lora_a", torch.ones(2, 5))), "lora_a must have shape",
                 id="factor-shape"),
    pytest.param("low_rank", rewrite_weights(set_key(FC1 + ".lora_b", torch.full((37, 2), float("nan")))),
                 "lora_b holds NaN or Inf", id="nan-factor"),
    pytest.param("low_rank", rewrite_weights(set_key(FC1, torch.zeros(37, 32))), "stored both dense and as parts",
                 id="dense-and-parts"),
    pytest.param("sparse", edit_config(format="low_rank"), "hold a 'sparse' vector; expected format 'low_rank'",
                 id="format-low-rank-for-sparse"),
    pytest.param("low_rank", edit_config(format="dense"), "hold a 'low_rank' vector; expected format 'dense'",
                 id="format-dense-for-low-rank"),
    pytest.param("dense", edit_config(format="sparse", format_version=2), "hold a 'dense' vector; expected format",
                 id="format-sparse-for-dense"),
    pytest.param("sparse", edit_config(format_version=1), "a 'sparse' vector needs format_version 2, got 1",
                 id="sparse-in-version-1"),
    pytest.param("sparse", edit_config(format="zip"), "format must be one of", id="unknown-format"),
    pytest.param("sparse", edit_config(storage_bytes=12), "do not match .*storage_bytes 12", id="storage-bytes"),
    pytest.param("sparse", edit_config(density=1.5), r"density must be in \(0, 1\], got 1.5", id="config-density"),
    pytest.param("low_rank", edit_config(rank=0), "rank must be >= 1, got 0", id="config-rank"),
    pytest.param("sparse", edit_config(sparsify_method="top"), "sparsify_method must be one of", id="config-method"),
    pytest.param("dense", edit_config(merge={"method": "sum"}), "merge must have the keys", id="config-merge"),
]  # fmt: skip


@pytest.mark.parametrize(("form", "corrupt", "match"), CORRUPTIONS)
def test_a_corrupted_or_mismatched_compact_file_is_refused_naming_the_file(vector, tmp_path, form, corrupt, match):
    saved = {"dense": vector, "sparse": vector.sparsify(0.2), "low_rank": vector.low_rank(2)}[form]
    saved.save_pretrained(tmp_path)
    corrupt(tmp_path)
    before = sha256_files(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        TaskVector.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert sha256_files(tmp_path) == before


def test_config_fields_of_compression_are_checked(vector):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 0"):
        TaskVectorConfig(density=0)
    with pytest.raises(TypeError, match="rank must be an int or None, got float 2.0"):
        TaskVectorConfig(rank=2.0)
    with pytest.raises(ValueError, match=r"merge\['method'\] must be one of"):
        TaskVectorConfig(merge={"method": "avg", "weights": [1.0], "density": None, "sources": [None]})
    with pytest.raises(ValueError, match="one source per weight"):
        TaskVectorConfig(merge={"method": "sum", "weights": [1.0, 1.0], "density": None, "sources": [None]})
    assert FORMAT_VERSION == 2
