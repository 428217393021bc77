"""hf_explvec.compression: sparsification, low rank, merges and the compact encoding (known answers, round trips,
bad inputs)."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_explvec import compression as C
from hf_explvec.arithmetic import IncompatibleKeysError
from hf_explvec.compression import LowRankTensor, SparseTensor


def make_delta(seed=0, dtype=torch.float32):
    """A small CLIP-like delta: linear weights, a bias, a layer norm, a position embedding and a conv."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "vision_model.embeddings.class_embedding": (8,),
        "vision_model.embeddings.patch_embedding.weight": (8, 3, 2, 2),
        "vision_model.embeddings.position_embedding.weight": (5, 8),
        "vision_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8),
        "vision_model.encoder.layers.0.self_attn.q_proj.bias": (8,),
        "vision_model.encoder.layers.0.mlp.fc1.weight": (11, 8),
        "vision_model.encoder.layers.0.layer_norm1.weight": (8,),
        "visual_projection.weight": (4, 8),
    }
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def clone(d):
    return {k: v.clone() for k, v in d.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        bits = lambda t: t.contiguous().view(torch.uint8)  # bit for bit, NaN included
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(bits(a[k]), bits(b[k])), k


# ------------------------------------------------------------------------------------------------ magnitude
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 1.0])
def test_magnitude_keeps_exactly_the_top_k_per_tensor(density):
    delta = make_delta()
    sparse = C.sparsify_magnitude(delta, density)
    for key, tensor in delta.items():
        flat = tensor.flatten()
        k = C.num_kept(flat.numel(), density)
        assert k == min(flat.numel(), math.ceil(round(density * flat.numel(), 6)))
        expected = set(torch.topk(flat.abs(), k).indices.tolist())
        entry = sparse[key]
        assert set(entry.indices.tolist()) == expected, key
        assert torch.equal(entry.values, flat[entry.indices.long()])
        # every dropped value is no larger than every kept one
        dense = entry.to_dense()
        assert dense.shape == tensor.shape and dense.dtype == tensor.dtype
        dropped = tensor[dense == 0].abs()
        if dropped.numel() and entry.values.numel():
            assert float(dropped.max()) <= float(entry.values.abs().min())


def test_num_kept_rounds_up_but_ignores_float_noise():
    assert C.num_kept(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004
    assert C.num_kept(10, 0.25) == 3
    assert C.num_kept(8, 0.01) == 1  # a non-empty tensor keeps at least one value
    assert C.num_kept(0, 0.5) == 0


def test_magnitude_density_one_is_lossless_and_keeps_dtype():
    delta = make_delta(dtype=torch.bfloat16)
    assert_same(C.densify(C.sparsify_magnitude(delta, 1.0)), delta)


# ------------------------------------------------------------------------------------------------------ DARE
def test_dare_expectation_is_the_input():
    """Mean of N = 400 draws at density p = 0.5: each value's standard error is |x| sqrt((1 - p) / (p N)) = 0.05 |x|,
    so the relative L2 error of the mean is about 0.05; we require < 0.08 (a fixed generator, so no flakiness)."""
    delta = {"w": torch.randn(50, 40, generator=torch.Generator().manual_seed(1))}
    g = torch.Generator().manual_seed(0)
    draws = [C.sparsify_random_rescaled(delta, 0.5, g)["w"] for _ in range(400)]
    mean = torch.stack([d.to_dense() for d in draws]).mean(0)
    assert float((mean - delta["w"]).norm() / delta["w"].norm()) < 0.08
    kept = sum(len(d.indices) for d in draws) / (400 * delta["w"].numel())
    assert abs(kept - 0.5) < 0.01  # binomial standard error 0.0006
    one = draws[0]  # kept values are exactly x / p
    torch.testing.assert_close(one.values, delta["w"].flatten()[one.indices.long()] * 2, rtol=0, atol=0)


def test_dare_is_reproducible_with_a_seeded_generator_and_lossless_at_density_one():
    delta = make_delta()
    a = C.sparsify_random_rescaled(delta, 0.3, torch.Generator().manual_seed(7))
    b = C.sparsify_random_rescaled(delta, 0.3, torch.Generator().manual_seed(7))
    assert_same(C.encode(a), C.encode(b))
    assert_same(C.densify(C.sparsify_random_rescaled(delta, 1.0)), delta)


# -------------------------------------------------------------------------------------------------- low rank
def test_low_rank_at_full_rank_reproduces_the_delta_and_follows_the_dense_rule():
    delta = make_delta()
    factors = C.low_rank(delta, 64)
    for key, tensor in delta.items():
        entry = factors[key]
        if tensor.ndim == 2 and "embedding" not in key:
            assert isinstance(entry, LowRankTensor) and entry.rank == min(tensor.shape)
            torch.testing.assert_close(entry.to_dense(), tensor, rtol=1e-5, atol=1e-5)
        else:  # 1-D tensors, the position-embedding table, the 4-D conv stay dense (the same tensor)
            assert entry is tensor, key
    assert C.storage_format(factors) == "low_rank"


@pytest.mark.parametrize("rank", [1, 3])
def test_low_rank_error_is_the_tail_of_the_spectrum(rank):
    """Eckart-Young: the Frobenius error of the best rank-r approximation is the norm of the dropped singular values."""
    w = torch.randn(11, 8, generator=torch.Generator().manual_seed(2))
    entry = C.low_rank({"fc.weight": w}, rank)["fc.weight"]
    assert entry.a.shape == (rank, 8) and entry.b.shape == (11, rank)
    tail = torch.linalg.svdvals(w)[rank:].norm()
    assert float((w - entry.to_dense()).norm()) == pytest.approx(float(tail), rel=1e-4)
    assert C.relative_error({"fc.weight": w}, {"fc.weight": entry}) == pytest.approx(float(tail / w.norm()), rel=1e-4)


def test_low_rank_of_bfloat16_runs_the_svd_in_float32_and_returns_bfloat16_factors():
    delta = make_delta(dtype=torch.bfloat16)
    entry = C.low_rank(delta, 64)["visual_projection.weight"]
    assert entry.dtype == torch.bfloat16
    torch.testing.assert_close(
        entry.to_dense().float(), delta["visual_projection.weight"].float(), rtol=0.05, atol=0.05
    )


# ------------------------------------------------------------------------------------------------------ merges
V1 = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}
V2 = {"w": torch.tensor([1.0, 2.0, -4.0, -1.0])}
V3 = {"w": torch.tensor([-2.0, 1.0, -1.0, 4.0])}


def test_ties_matches_a_hand_computation():
    # trim to 2 of 4: [3, 0, 0, 2], [0, 2, -4, 0], [-2, 0, 0, 4]; sum [1, 2, -4, 6] elects [+, +, -, +];
    # disjoint mean of the agreeing values: [3/1, 2/1, -4/1, (2 + 4)/2]
    merged = C.ties_merge([V1, V2, V3], density=0.5)
    torch.testing.assert_close(merged["w"], torch.tensor([3.0, 2.0, -4.0, 3.0]))
    # weights scale each vector's kept values before the mean: [3, 0.5 * 2, 0.5 * -4, (2 + 2 * 4) / 2]
    merged = C.ties_merge([V1, V2, V3], weights=[1.0, 0.5, 2.0], density=0.5)
    torch.testing.assert_close(merged["w"], torch.tensor([3.0, 1.0, -2.0, 5.0]))


def test_ties_without_trim_and_with_a_cancelling_value():
    # density 1: sums [2, 2, -4.5, 5] elect [+, +, -, +]; a value that sums to 0 elects + and keeps only the +
    merged = C.ties_merge([V1, V2, V3], density=1.0)
    torch.testing.assert_close(merged["w"], torch.tensor([2.0, 1.5, -2.5, 3.0]))
    merged = C.ties_merge([{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([-1.0, 0.0])}], density=1.0)
    torch.testing.assert_close(merged["w"], torch.tensor([1.0, 0.0]))


def test_ties_matches_peft():
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    vectors = [make_delta(seed) for seed in range(3)]
    weights = [1.0, 0.7, 1.3]
    merged = C.ties_merge(vectors, weights, density=0.5)
    for key in ["vision_model.encoder.layers.0.self_attn.q_proj.weight", "visual_projection.weight"]:  # n * 0.5 int
        expected = merge_utils.ties([v[key] for v in vectors], torch.tensor(weights), density=0.5)
        torch.testing.assert_close(merged[key], expected)


def test_dare_ties_at_density_one_is_ties_and_is_reproducible():
    vectors = [make_delta(seed) for seed in range(3)]
    assert_same(C.dare_ties_merge(vectors, density=1.0), C.ties_merge(vectors, density=1.0))
    a = C.dare_ties_merge(vectors, density=0.4, generator=torch.Generator().manual_seed(3))
    b = C.dare_ties_merge(vectors, density=0.4, generator=torch.Generator().manual_seed(3))
    assert_same(a, b)


def test_sum_merge_of_dense_and_compressed_vectors():
    vectors = [make_delta(seed) for seed in range(3)]
    compressed = [vectors[0], C.sparsify_magnitude(vectors[1], 1.0), C.low_rank(vectors[2], 64)]
    merged = C.sum_merge(compressed, weights=[1.0, -0.5, 2.0])
    for key in vectors[0]:
        expected = vectors[0][key] - 0.5 * vectors[1][key] + 2.0 * vectors[2][key]
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-5)
    assert_same(C.sum_merge([V1, V2]), {"w": V1["w"] + V2["w"]})


# ---------------------------------------------------------------------------------------------- apply (stream)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["dense", "sparse", "low_rank"])
def test_add_scaled_matches_the_dense_update(kind, dtype):
    delta = make_delta(3)
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    entry = {
        "dense": delta[key],
        "sparse": C.sparsify_magnitude(delta, 0.3)[key],
        "low_rank": C.low_rank(delta, 2)[key],
    }
    entry = entry[kind]
    target = torch.randn(11, 8).to(dtype)
    expected = (target.float() + 0.8 * C.to_dense(entry).float()).to(dtype)
    C.add_scaled_(target, entry, 0.8)
    torch.testing.assert_close(target, expected)


def test_add_scaled_writes_through_to_a_non_contiguous_target():
    delta = make_delta(3)
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    for entry in (C.sparsify_magnitude(delta, 0.3)[key], C.low_rank(delta, 2)[key]):
        storage = torch.randn(8, 11)
        target = storage.t()  # a view: the update must land in `storage`
        expected = target + 0.5 * entry.to_dense()
        C.add_scaled_(target, entry, 0.5)
        torch.testing.assert_close(storage.t(), expected)


# ------------------------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "compress",
    [
        lambda d: C.sparsify_magnitude(d, 0.2),
        lambda d: C.sparsify_random_rescaled(d, 0.2, torch.Generator().manual_seed(0)),
        lambda d: C.low_rank(d, 2),
        lambda d: d,
    ],
    ids=["magnitude", "dare", "low_rank", "dense"],
)
def test_encode_decode_round_trip_through_safetensors_bit_for_bit(compress, dtype, tmp_path):
    entries = compress(make_delta(dtype=dtype))
    flat = C.encode(entries)
    save_file(flat, tmp_path / "v.safetensors")
    decoded = C.decode(load_file(tmp_path / "v.safetensors"), C.storage_format(entries))
    assert list(decoded) == sorted(entries)
    for key, entry in entries.items():
        got = decoded[key]
        assert type(got) is type(entry) and got.shape == entry.shape and got.dtype == entry.dtype
        if isinstance(entry, SparseTensor):
            assert torch.equal(got.indices, entry.indices) and torch.equal(got.values, entry.values)
        elif isinstance(entry, LowRankTensor):
            assert torch.equal(got.a, entry.a) and torch.equal(got.b, entry.b)
        else:
            assert torch.equal(got, entry)
    assert C.storage_nbytes(entries) == sum(t.numel() * t.element_size() for t in flat.values())


def test_sparse_storage_is_smaller_and_uses_int32_indices():
    delta = make_delta()
    sparse = C.sparsify_magnitude(delta, 0.1)
    assert all(e.indices.dtype == torch.int32 for e in sparse.values())
    assert C.storage_nbytes(sparse) < C.storage_nbytes(delta) / 3


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "density, error, message",
    [
        (0, ValueError, r"density must be in \(0, 1\], got 0.0"),
        (1.5, ValueError, r"density must be in \(0, 1\], got 1.5"),
        (-0.2, ValueError, r"density must be in \(0, 1\]"),
        (float("nan"), ValueError, "density must be finite, got nan"),
        (float("inf"), ValueError, "density must be finite"),
        ("0.5", TypeError, "density must be a real number, got str"),
        (True, TypeError, "density must be a real number, got bool"),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda d, density: C.sparsify_magnitude(d, density),
        lambda d, density: C.sparsify_random_rescaled(d, density),
        lambda d, density: C.ties_merge([d, d], density=density),
        lambda d, density: C.dare_ties_merge([d, d], density=density),
    ],
    ids=["magnitude", "dare", "ties", "dare_ties"],
)
def test_bad_density_raises_and_changes_nothing(call, density, error, message):
    delta = make_delta()
    before = clone(delta)
    with pytest.raises(error, match=message):
        call(delta, density)
    assert_same(delta, before)


@pytest.mark.parametrize(
    "rank, error, message",
    [
        (0, ValueError, "rank must be >= 1, got 0"),
        (-1, ValueError, "rank must be >= 1, got -1"),
        (1.5, TypeError, "rank must be an int, got float"),
        (True, TypeError, "rank must be an int, got bool"),
    ],
)
def test_bad_rank_raises_and_changes_nothing(rank, error, message):
    delta = make_delta()
    before = clone(delta)
    with pytest.raises(error, match=message):
        C.low_rank(delta, rank)
    assert_same(delta, before)


def _other_keys(d):
    d = dict(d)
    d["extra.weight"] = d.pop("visual_projection.weight")
    return d


def _other_shape(d):
    return {**d, "visual_projection.weight": torch.zeros(5, 8)}


@pytest.mark.parametrize(
    "make_second, kwargs, error, message",
    [
        (
            _other_keys,
            {},
            IncompatibleKeysError,
            r"(?s)vector 0 and vector 1 do not have.*unexpected \(1\): extra.weight",
        ),
        (
            _other_shape,
            {},
            IncompatibleKeysError,
            r"shape mismatch \(1\): visual_projection.weight: \(4, 8\) vs \(5, 8\)",
        ),
        (lambda d: d, {"weights": [1.0]}, ValueError, "got 1 weights for 2 vectors"),
        (lambda d: d, {"weights": [1.0, float("nan")]}, ValueError, r"weights\[1\] must be finite"),
    ],
    ids=["keys", "shapes", "weight-count", "nan-weight"],
)
@pytest.mark.parametrize("merge", [C.sum_merge, C.ties_merge, C.dare_ties_merge])
def test_merging_incompatible_vectors_raises_and_changes_nothing(merge, make_second, kwargs, error, message):
    first = make_delta(0)
    second = make_second(make_delta(1))
    before = [clone(first), clone(second)]
    with pytest.raises(error, match=message):
        merge([first, second], **kwargs)
    assert_same(first, before[0])
    assert_same(second, before[1])


@pytest.mark.parametrize("merge", [C.sum_merge, C.ties_merge, C.dare_ties_merge])
def test_merging_nothing_raises(merge):
    with pytest.raises(ValueError, match="at least one vector, got none"):
        merge([])


def _corrupt(flat, key, value):
    flat = dict(flat)
    if value is None:
        del flat[key]
    else:
        flat[key] = value
    return flat


Q = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
CORRUPTIONS = {
    "index-out-of-range": (
        Q + ".indices",
        lambda t: torch.cat([t[:-1], torch.tensor([64], dtype=t.dtype)]),
        r"\[0, 64\)",
    ),
    "negative-index": (Q + ".indices", lambda t: torch.cat([torch.tensor([-1], dtype=t.dtype), t[1:]]), r"\[0, 64\)"),
    "unsorted-indices": (Q + ".indices", lambda t: t.flip(0), "strictly increasing"),
    "float-indices": (Q + ".indices", lambda t: t.float(), "indices must be a 1-D int32/int64 tensor"),
    "wrong-value-count": (Q + ".values", lambda t: t[:-1], "one value per index"),
    "nan-value": (Q + ".values", lambda t: torch.cat([t[:-1], torch.tensor([float("nan")])]), "values holds NaN"),
    "missing-values": (Q + ".values", lambda t: None, r"has parts \['.indices', '.shape'\]"),
    "negative-shape": (Q + ".shape", lambda t: torch.tensor([-8, 8]), "negative sizes"),
    "2d-shape": (Q + ".shape", lambda t: t.view(1, 2), ".shape must be a 1-D int tensor"),
}
LOW_RANK_CORRUPTIONS = {
    "lora-a-in-features": (Q + ".lora_a", lambda t: t[:, :-1], r"lora_a must have shape \(rank, 8\)"),
    "lora-b-out-features": (Q + ".lora_b", lambda t: t[:-1], r"lora_b must have shape \(8, 2\)"),
    "rank-mismatch": (Q + ".lora_b", lambda t: t[:, :1], r"lora_b must have shape \(8, 2\), got \(8, 1\)"),
    "rank-too-large": (Q + ".shape", lambda t: torch.tensor([8, 1]), r"rank <= 1"),
    "factor-dtypes": (Q + ".lora_b", lambda t: t.double(), "share a dtype"),
    "mixed-parts": (Q + ".indices", lambda t: torch.arange(3), "has parts"),
}


@pytest.mark.parametrize(
    "source, case",
    [("sparse", c) for c in CORRUPTIONS] + [("low_rank", c) for c in LOW_RANK_CORRUPTIONS],
)
def test_decoding_a_corrupted_payload_raises_naming_the_key(source, case):
    delta = make_delta()
    entries = C.sparsify_magnitude(delta, 0.25) if source == "sparse" else C.low_rank(delta, 2)
    key, change, message = {**CORRUPTIONS, **LOW_RANK_CORRUPTIONS}[case]
    flat = C.encode(entries)
    flat = _corrupt(flat, key, change(flat.get(key)))
    before = clone(flat)
    with pytest.raises(ValueError, match=re.escape(Q) + ": corrupted compact entry: .*" + message):
        C.decode(flat)
    assert_same(flat, before)


def test_decoding_other_faults_raises():
    flat = C.encode(C.sparsify_magnitude(make_delta(), 0.25))
    with pytest.raises(ValueError, match=re.escape(Q) + r": stored both dense and as parts"):
        C.decode({**flat, Q: torch.zeros(8, 8)})
    with pytest.raises(ValueError, match="visual_projection.weight: the tensor must be a floating-point tensor"):
        C.decode({"visual_projection.weight": torch.zeros(4, 8, dtype=torch.int64)})
    with pytest.raises(ValueError, match="the tensors hold a 'sparse' vector; expected format 'low_rank'"):
        C.decode(flat, expected_format="low_rank")
    with pytest.raises(ValueError, match="expected_format must be one of"):
        C.decode(flat, expected_format="lora")


def test_encoding_a_reserved_name_raises():
    with pytest.raises(ValueError, match=r"cannot encode 'w.values': names ending in"):
        C.encode({"w.values": torch.zeros(2)})
    with pytest.raises(TypeError, match="cannot encode 'w': expected a tensor"):
        C.encode({"w": [1.0]})
