"""Compressed and merged task vectors: pure tensor functions over `dict[str, torch.Tensor]` (no models, no files).

A compressed vector maps each name to an *entry*: a dense `torch.Tensor`, a [`SparseTensor`] (flat indices and
values) or a [`LowRankTensor`] (two factors). Every entry has `.shape` and `.dtype`, so [`hf_explvec.arithmetic`]'s
layout checks and fingerprint work on compressed vectors without densifying them.

Rules (all per tensor, never global):

- **Magnitude sparsification** keeps, in each tensor of `n` values, the `k = ceil(density * n)` values of largest
  absolute value (like peft's `magnitude_prune`, which prunes each tensor on its own, but rounding up so that every
  non-empty tensor keeps at least one value and at least a `density` fraction is kept).
- **DARE** (`random_rescaled`) keeps each value independently with probability `density` and divides the kept values
  by `density`, so the expectation of the result is the input.
- **Low rank** factors each tensor that is 2-D and not an embedding table (its name does not contain `"embedding"`):
  the linear weights of the CLIP encoder and the visual projection. 1-D tensors (biases, layer norms, the class
  embedding), the position-embedding table and the 4-D patch-embedding convolution stay dense. The SVD runs in
  float32 (bf16/fp16 SVD is not supported by torch) and the factors are cast back to the tensor's dtype.
- **Merges** (sum, TIES, DARE-TIES) compute in float32 and return dense float32 tensors, key by key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from . import arithmetic as A
from ._validation import check_finite, check_int

INDICES, VALUES, SHAPE, LORA_A, LORA_B = ".indices", ".values", ".shape", ".lora_a", ".lora_b"
SPARSE_PARTS = frozenset({INDICES, VALUES, SHAPE})
LOW_RANK_PARTS = frozenset({LORA_A, LORA_B, SHAPE})
_SUFFIXES = (INDICES, VALUES, SHAPE, LORA_A, LORA_B)
FORMATS = ("dense", "sparse", "low_rank", "mixed")
"""Values of [`storage_format`], meant for the `format` field of a saved vector's `config.json`."""


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==
class SparseTensor:
    r"""
    A tensor stored as the flat positions and values of its kept entries; all others are zero.

    Args:
        indices (`torch.Tensor` of shape `(k,)`): Positions in the flattened tensor, int32 or int64, strictly
            increasing, each in `[0, numel)`.
        values (`torch.Tensor` of shape `(k,)`): The kept values, floating point and finite.
        shape (`torch.Size`): Shape of the dense tensor.

    Raises:
        `TypeError`/`ValueError`: any of the above does not hold (checked on construction).
    """

    indices: torch.Tensor
    values: torch.Tensor
    shape: torch.Size

    def __post_init__(self):
        object.__setattr__(self, "shape", _as_size(self.shape))
        numel = math.prod(self.shape)
        if self.indices.dtype not in (torch.int32, torch.int64) or self.indices.ndim != 1:
            raise TypeError(f"indices must be a 1-D int32/int64 tensor, got {self.indices.dtype} {_dims(self.indices)}")
        _check_values("values", self.values)
        if self.values.ndim != 1 or len(self.values) != len(self.indices):
            raise ValueError(
                f"values must be 1-D with one value per index ({len(self.indices)}), got {_dims(self.values)}"
            )
        if len(self.indices):
            low, high = int(self.indices.min()), int(self.indices.max())
            if low < 0 or high >= numel:
                raise ValueError(f"indices must lie in [0, {numel}) for shape {tuple(self.shape)}, got [{low}, {high}]")
            if len(self.indices) > 1 and not bool((self.indices[1:] > self.indices[:-1]).all()):
                raise ValueError("indices must be strictly increasing (sorted, no repeats)")

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def to_dense(self) -> torch.Tensor:
        """The dense tensor of `shape` and `dtype`."""
        dense = torch.zeros(math.prod(self.shape), dtype=self.dtype, device=self.values.device)
        dense[self.indices.long()] = self.values
        return dense.view(self.shape)


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==
class LowRankTensor:
    r"""
    A matrix stored as two factors, dense = `b @ a` (the LoRA convention: `a` is `lora_A`, `b` is `lora_B`).

    Args:
        a (`torch.Tensor` of shape `(rank, in_features)`): Right factor, floating point and finite.
        b (`torch.Tensor` of shape `(out_features, rank)`): Left factor, same dtype as `a`.
        shape (`torch.Size`): `(out_features, in_features)`; `1 <= rank <= min(out_features, in_features)`.

    Raises:
        `TypeError`/`ValueError`: any of the above does not hold (checked on construction).
    """

    a: torch.Tensor
    b: torch.Tensor
    shape: torch.Size

    def __post_init__(self):
        object.__setattr__(self, "shape", _as_size(self.shape))
        _check_values("lora_a", self.a)
        _check_values("lora_b", self.b)
        if len(self.shape) != 2:
            raise ValueError(f"a low-rank tensor must be 2-D, got shape {tuple(self.shape)}")
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"lora_a and lora_b must share a dtype, got {self.a.dtype} and {self.b.dtype}")
        out_features, in_features = self.shape
        rank = self.a.shape[0] if self.a.ndim == 2 else -1
        if not 1 <= rank <= min(self.shape) or tuple(self.a.shape) != (rank, in_features):
            raise ValueError(
                f"lora_a must have shape (rank, {in_features}) with 1 <= rank <= {min(self.shape)}, "
                f"got {tuple(self.a.shape)}"
            )
        if tuple(self.b.shape) != (out_features, rank):
            raise ValueError(f"lora_b must have shape ({out_features}, {rank}), got {tuple(self.b.shape)}")

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def to_dense(self) -> torch.Tensor:
        """`b @ a`, computed in float32 and returned in `dtype`."""
        return (self.b.float() @ self.a.float()).to(self.dtype)


Entry = torch.Tensor | SparseTensor | LowRankTensor


def _as_size(shape) -> torch.Size:
    try:
        size = torch.Size([int(s) for s in shape])
    except (TypeError, ValueError) as error:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from error
    if any(s < 0 for s in size):
        raise ValueError(f"shape must not have negative sizes, got {tuple(size)}")
    return size


def _dims(t: torch.Tensor) -> str:
    return f"of shape {tuple(t.shape)}"


def _check_values(name: str, t) -> None:
    if not torch.is_tensor(t) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or Inf")


def check_density(density) -> float:
    """Return `density` as a float in (0, 1]; `TypeError` for a non-number, `ValueError` otherwise."""
    density = check_finite("density", density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return density


def num_kept(numel: int, density: float) -> int:
    """`ceil(density * numel)`, ignoring float noise (`0.3 * 10` keeps 3, not 4)."""
    exact = density * numel
    return min(numel, round(exact) if abs(exact - round(exact)) < 1e-6 else math.ceil(exact))


def to_dense(entry: Entry) -> torch.Tensor:
    """The dense tensor of any entry (a dense tensor is returned as is)."""
    return entry if torch.is_tensor(entry) else entry.to_dense()


def densify(entries: Mapping[str, Entry]) -> dict[str, torch.Tensor]:
    """Every entry as a dense tensor (for small vectors; [`add_scaled_`] streams instead)."""
    return {k: to_dense(v) for k, v in entries.items()}


def add_scaled_(target: torch.Tensor, entry: Entry, lam: float) -> None:
    r"""
    `target += lam * entry` in place, computed in float32 and written in `target`'s dtype and device.

    At most one dense tensor of `target`'s size is materialised: none for a float32 `target` (sparse entries use
    `index_add_`, low-rank ones `addmm_`), one float32 working copy otherwise.

    Args:
        target (`torch.Tensor`): The parameter to update (e.g. a model weight under `torch.no_grad()`).
        entry (`torch.Tensor`, [`SparseTensor`] or [`LowRankTensor`]): The delta, of `target`'s shape.
        lam (`float`): The scaling.
    """
    lam = check_finite("lam", lam)
    if tuple(entry.shape) != tuple(target.shape):
        raise ValueError(f"shape mismatch: target {tuple(target.shape)}, delta {tuple(entry.shape)}")
    work = target
    if target.dtype != torch.float32 or not target.is_contiguous():
        work = torch.empty_like(target, dtype=torch.float32, memory_format=torch.contiguous_format).copy_(target)
    if isinstance(entry, SparseTensor):
        values = entry.values.to(work.device, torch.float32)
        work.view(-1).index_add_(0, entry.indices.to(work.device).long(), values, alpha=lam)
    elif isinstance(entry, LowRankTensor):
        work.addmm_(entry.b.to(work.device, torch.float32), entry.a.to(work.device, torch.float32), alpha=lam)
    else:
        work.add_(entry.to(work.device, torch.float32), alpha=lam)
    if work is not target:
        target.copy_(work)


# ----------------------------------------------------------------------------------------------- sparsification
def _magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Flat boolean mask of the top `num_kept` values of `tensor` by absolute value."""
    flat = tensor.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    k = num_kept(flat.numel(), density)
    if k:
        mask[torch.topk(flat.abs().float(), k, sorted=False).indices] = True
    return mask


def _random_mask(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return (torch.rand(tensor.numel(), generator=generator, device=device) < density).to(tensor.device)


def _sparse(tensor: torch.Tensor, mask: torch.Tensor, factor: float = 1.0) -> SparseTensor:
    flat = tensor.reshape(-1)
    indices = mask.nonzero().reshape(-1)
    values = flat[indices] if factor == 1.0 else (flat[indices].float() * factor).to(tensor.dtype)
    index_dtype = torch.int32 if flat.numel() <= torch.iinfo(torch.int32).max else torch.int64
    return SparseTensor(indices.to(index_dtype), values.contiguous(), tensor.shape)


def sparsify_magnitude(delta: Mapping[str, torch.Tensor], density: float) -> dict[str, SparseTensor]:
    r"""
    Keep, in each tensor, the `ceil(density * numel)` values of largest absolute value (ties broken by `torch.topk`).

    Args:
        delta (`dict[str, torch.Tensor]`): Name -> dense delta of any shape.
        density (`float`): Fraction of values to keep, in (0, 1].

    Returns:
        `dict[str, SparseTensor]`: same names, values in the input dtype.
    """
    density = check_density(density)
    return {k: _sparse(v, _magnitude_mask(v, density)) for k, v in delta.items()}


def sparsify_random_rescaled(
    delta: Mapping[str, torch.Tensor], density: float, generator: torch.Generator | None = None
) -> dict[str, SparseTensor]:
    r"""
    DARE (drop and rescale, Yu et al. 2024): keep each value with probability `density`, divide the kept ones by
    `density`. The expectation over the draw is `delta`.

    Args:
        delta (`dict[str, torch.Tensor]`): Name -> dense delta of any shape.
        density (`float`): Probability of keeping a value, in (0, 1].
        generator (`torch.Generator`, *optional*): Source of randomness (pass a seeded one to reproduce a draw);
            the draws for the tensors are taken in sorted-name order.

    Returns:
        `dict[str, SparseTensor]`: same names, rescaled values in the input dtype (rescaling computed in float32).
    """
    density = check_density(density)
    return {k: _sparse(delta[k], _random_mask(delta[k], density, generator), 1.0 / density) for k in sorted(delta)}


# --------------------------------------------------------------------------------------------------- low rank
def is_low_rank_candidate(name: str, tensor) -> bool:
    """The low-rank rule: a tensor is factored when it is 2-D and not an embedding table (see the module doc)."""
    return len(tensor.shape) == 2 and "embedding" not in name


def low_rank(delta: Mapping[str, torch.Tensor], rank: int) -> dict[str, Entry]:
    r"""
    Keep the top `rank` singular directions of each 2-D non-embedding tensor (truncated SVD in float32).

    For a tensor of shape `(out, in)` with SVD `U S Vh`, `r = min(rank, out, in)`, `b = U[:, :r] * sqrt(S[:r])` of
    shape `(out, r)` and `a = sqrt(S[:r])[:, None] * Vh[:r]` of shape `(r, in)`, so `b @ a` is the best rank-`r`
    approximation in Frobenius norm. With `rank >= min(out, in)` the delta is reproduced up to float rounding.

    Args:
        delta (`dict[str, torch.Tensor]`): Name -> dense delta.
        rank (`int`): The rank to keep, >= 1.

    Returns:
        `dict[str, torch.Tensor | LowRankTensor]`: factored entries per [`is_low_rank_candidate`], the others as given.
    """
    rank = check_int("rank", rank, minimum=1)
    out = {}
    for name, tensor in delta.items():
        if not is_low_rank_candidate(name, tensor) or min(tensor.shape) == 0:
            out[name] = tensor
            continue
        u, s, vh = torch.linalg.svd(tensor.detach().float(), full_matrices=False)
        r = min(rank, s.numel())
        root = s[:r].sqrt()
        a = (root[:, None] * vh[:r]).to(tensor.dtype).contiguous()
        b = (u[:, :r] * root).to(tensor.dtype).contiguous()
        out[name] = LowRankTensor(a, b, tensor.shape)
    return out


def relative_error(delta: Mapping[str, torch.Tensor], approx: Mapping[str, Entry]) -> float:
    """`||delta - approx|| / ||delta||` over all tensors as one flat vector (float64 sums, one tensor at a time)."""
    A.check_same_layout(delta, approx, "the vector and its approximation")
    num = math.fsum(float((delta[k].double() - to_dense(approx[k]).double()).square().sum()) for k in delta)
    den = math.fsum(float(v.double().square().sum()) for v in delta.values())
    return math.sqrt(num / den) if den else math.sqrt(num)


# ------------------------------------------------------------------------------------------------------ merges
def _merge_inputs(deltas: Sequence[Mapping[str, Entry]], weights) -> tuple[list, list[float]]:
    deltas = list(deltas)
    if not deltas:
        raise ValueError("merging needs at least one vector, got none")
    for i, d in enumerate(deltas[1:], start=1):
        A.check_same_layout(deltas[0], d, f"vector 0 and vector {i}")
    if weights is None:
        weights = [1.0] * len(deltas)
    weights = [check_finite(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if len(weights) != len(deltas):
        raise ValueError(f"got {len(weights)} weights for {len(deltas)} vectors; expected one weight per vector")
    return deltas, weights


def sum_merge(deltas: Sequence[Mapping[str, Entry]], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    r"""
    Task arithmetic: `sum_i weights[i] * deltas[i]`, key by key in float32.

    Args:
        deltas (`list[dict[str, Entry]]`): Vectors with the same names and shapes (dense or compressed entries).
        weights (`list[float]`, *optional*): One finite weight per vector; all 1 by default.

    Raises:
        [`~arithmetic.IncompatibleKeysError`]: the vectors' names or shapes differ (listed).
    """
    deltas, weights = _merge_inputs(deltas, weights)
    out = {}
    for key in deltas[0]:
        total = None
        for w, d in zip(weights, deltas, strict=True):
            term = to_dense(d[key]).float() * w
            total = term if total is None else total.add_(term.to(total.device))
        out[key] = total
    return out


def _ties(stacked: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Elect the sign of the summed trimmed values (>= 0 counts as +), then average the weighted values of the
    vectors that agree with it (peft's `ties` after pruning). `stacked` has shape `(n_vectors, *shape)`."""
    sign = stacked.sign()
    elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
    agree = sign == elected
    w = torch.tensor(weights, dtype=torch.float32, device=stacked.device).view(-1, *([1] * (stacked.ndim - 1)))
    return (stacked * w * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def ties_merge(
    deltas: Sequence[Mapping[str, Entry]], weights: Sequence[float] | None = None, density: float = 0.2
) -> dict[str, torch.Tensor]:
    r"""
    TIES merging (Yadav et al. 2023), as in peft's `ties`: (1) trim each vector to its top `density` values by
    magnitude, per tensor; (2) elect, per value, the sign of the sum of the trimmed vectors (a zero sum elects +);
    (3) disjoint mean: average `weights[i] * trimmed_i` over the vectors whose sign equals the elected one (a value
    no vector keeps is 0). Scale the result with `lam` when applying it.

    Args:
        deltas (`list[dict[str, Entry]]`): Vectors with the same names and shapes.
        weights (`list[float]`, *optional*): One finite weight per vector; all 1 by default.
        density (`float`, *optional*, defaults to 0.2): Fraction kept by the trim, in (0, 1] (the paper's top-20%).

    Returns:
        `dict[str, torch.Tensor]`: dense float32 tensors.
    """
    density = check_density(density)
    deltas, weights = _merge_inputs(deltas, weights)
    out = {}
    for key in deltas[0]:
        trimmed = []
        for d in deltas:
            t = to_dense(d[key]).float()
            trimmed.append(t * _magnitude_mask(t, density).view(t.shape))
        out[key] = _ties(torch.stack(trimmed), weights)
    return out


def dare_ties_merge(
    deltas: Sequence[Mapping[str, Entry]],
    weights: Sequence[float] | None = None,
    density: float = 0.2,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    r"""
    DARE-TIES, as in peft's `dare_ties`: each vector is dropped at random and rescaled ([`sparsify_random_rescaled`]
    with `density`) instead of trimmed by magnitude, then the TIES sign election and disjoint mean of
    [`ties_merge`] apply.

    Args:
        deltas (`list[dict[str, Entry]]`): Vectors with the same names and shapes.
        weights (`list[float]`, *optional*): One finite weight per vector; all 1 by default.
        density (`float`, *optional*, defaults to 0.2): Probability of keeping each value, in (0, 1].
        generator (`torch.Generator`, *optional*): Source of randomness; draws are taken key by key in sorted-name
            order, vector by vector.

    Returns:
        `dict[str, torch.Tensor]`: dense float32 tensors.
    """
    density = check_density(density)
    deltas, weights = _merge_inputs(deltas, weights)
    out = {}
    for key in sorted(deltas[0]):
        dropped = []
        for d in deltas:
            t = to_dense(d[key]).float()
            dropped.append(t * _random_mask(t, density, generator).view(t.shape) / density)
        out[key] = _ties(torch.stack(dropped), weights)
    return {k: out[k] for k in deltas[0]}


# ----------------------------------------------------------------------------------------- compact encoding
def storage_format(entries: Mapping[str, Entry]) -> str:
    """`"sparse"`, `"low_rank"` (possibly with dense leftovers), `"dense"`, or `"mixed"` (both compact kinds)."""
    kinds = {type(v) for v in entries.values()}
    if SparseTensor in kinds and LowRankTensor in kinds:
        return "mixed"
    return "sparse" if SparseTensor in kinds else "low_rank" if LowRankTensor in kinds else "dense"


def encode(entries: Mapping[str, Entry]) -> dict[str, torch.Tensor]:
    r"""
    Flatten entries into a safetensors-ready dict: a dense tensor under its own name, a [`SparseTensor`] as
    `"<name>.indices"`, `"<name>.values"`, `"<name>.shape"`, a [`LowRankTensor`] as `"<name>.lora_a"`,
    `"<name>.lora_b"`, `"<name>.shape"` (`.shape` is an int64 tensor of the dense sizes). [`decode`] inverts it bit
    for bit.

    Raises:
        `ValueError`: a name ends with one of the reserved suffixes (`.indices`, `.values`, `.shape`, `.lora_a`,
            `.lora_b`). `TypeError`: an entry of another type.
    """
    out = {}
    for name, entry in entries.items():
        if name.endswith(_SUFFIXES):
            raise ValueError(f"cannot encode {name!r}: names ending in {_SUFFIXES} are reserved for compact parts")
        if isinstance(entry, SparseTensor):
            parts = {INDICES: entry.indices, VALUES: entry.values}
        elif isinstance(entry, LowRankTensor):
            parts = {LORA_A: entry.a, LORA_B: entry.b}
        elif torch.is_tensor(entry):
            out[name] = entry.contiguous()
            continue
        else:
            raise TypeError(f"cannot encode {name!r}: expected a tensor, SparseTensor or LowRankTensor, got {entry!r}")
        out.update({name + suffix: t.contiguous() for suffix, t in parts.items()})
        out[name + SHAPE] = torch.tensor(list(entry.shape), dtype=torch.int64)
    return out


def decode(tensors: Mapping[str, torch.Tensor], expected_format: str | None = None) -> dict[str, Entry]:
    r"""
    Rebuild the entries written by [`encode`], checking every part (for corrupted or hand-edited files).

    Args:
        tensors (`dict[str, torch.Tensor]`): As read from safetensors.
        expected_format (`str`, *optional*): One of [`FORMATS`] (e.g. `config.json`'s `format`); the decoded
            entries must have it.

    Returns:
        `dict[str, Entry]`, sorted by name.

    Raises:
        `ValueError` naming the entry: incomplete or mixed parts, a `.shape` that is not a 1-D int tensor of sizes,
            indices out of range, unsorted or not integer, a value count that differs from the index count, factor
            shapes that do not match the shape, a non-floating or non-finite tensor, or another format than
            `expected_format`.
    """
    if expected_format is not None and expected_format not in FORMATS:
        raise ValueError(f"expected_format must be one of {FORMATS}, got {expected_format!r}")
    dense, groups = {}, {}
    for name, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            dense[name] = tensor
        else:
            groups.setdefault(name[: -len(suffix)], {})[suffix] = tensor
    out = {}
    for name, tensor in dense.items():
        if name in groups:
            raise ValueError(f"{name}: stored both dense and as parts {sorted(groups[name])}")
        try:
            _check_values("the tensor", tensor)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: {error}") from error
        out[name] = tensor
    for name, parts in groups.items():
        try:
            if set(parts) not in (SPARSE_PARTS, LOW_RANK_PARTS):
                raise ValueError(
                    f"has parts {sorted(parts)}; expected {sorted(SPARSE_PARTS)} (sparse) or {sorted(LOW_RANK_PARTS)} "
                    "(low rank)"
                )
            shape = parts[SHAPE]
            if shape.ndim != 1 or shape.dtype not in (torch.int32, torch.int64):
                raise ValueError(f".shape must be a 1-D int tensor, got {shape.dtype} of shape {tuple(shape.shape)}")
            if INDICES in parts:
                out[name] = SparseTensor(parts[INDICES], parts[VALUES], shape.tolist())
            else:
                out[name] = LowRankTensor(parts[LORA_A], parts[LORA_B], shape.tolist())
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: corrupted compact entry: {error}") from error
    out = dict(sorted(out.items()))
    if expected_format is not None and storage_format(out) != expected_format:
        raise ValueError(f"the tensors hold a {storage_format(out)!r} vector; expected format {expected_format!r}")
    return out


def storage_nbytes(entries: Mapping[str, Entry]) -> int:
    """Bytes of tensor data [`encode`] writes (the safetensors file adds a small JSON header)."""
    return sum(t.numel() * t.element_size() for t in encode(entries).values())


__all__ = [
    "FORMATS",
    "LowRankTensor",
    "SparseTensor",
    "add_scaled_",
    "check_density",
    "dare_ties_merge",
    "decode",
    "densify",
    "encode",
    "is_low_rank_candidate",
    "low_rank",
    "num_kept",
    "relative_error",
    "sparsify_magnitude",
    "sparsify_random_rescaled",
    "storage_format",
    "storage_nbytes",
    "sum_merge",
    "ties_merge",
    "to_dense",
]
