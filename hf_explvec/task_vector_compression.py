"""Compressed and merged forms of a [`TaskVector`]: sparse, low-rank, merged, and their storage and PEFT export.

The tensor work is done by [`hf_explvec.compression`] and [`hf_explvec.peft_export`] (pure functions over state
dicts); this module gives it the vector's checks and provenance, as a mixin of [`TaskVector`], plus the helpers that
let the rest of [`TaskVector`] (construction checks, scaling, `to()`, `norm()`, `apply_to`) work on each entry
without densifying it.

An entry is a dense `torch.Tensor`, a [`~compression.SparseTensor`] or a [`~compression.LowRankTensor`].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import arithmetic as A
from . import compression as C
from . import peft_export
from ._validation import check_int
from .compression import LowRankTensor, SparseTensor
from .task_vector_config import MERGE_METHODS, SPARSIFY_METHODS, combined_provenance

if TYPE_CHECKING:
    from .task_vector import TaskVector


def value_parts(entry: C.Entry) -> dict[str, torch.Tensor]:
    """The floating-point tensors an entry stores: `{"": dense}`, `{"values": v}` or `{"a": a, "b": b}`."""
    if isinstance(entry, SparseTensor):
        return {"values": entry.values}
    if isinstance(entry, LowRankTensor):
        return {"a": entry.a, "b": entry.b}
    return {"": entry}


def rebuild(entry: C.Entry, parts: dict[str, torch.Tensor]) -> C.Entry:
    """An entry of the same kind and shape as `entry` holding `parts` (as returned by [`value_parts`])."""
    if isinstance(entry, SparseTensor):
        return SparseTensor(entry.indices.to(parts["values"].device), parts["values"], entry.shape)
    if isinstance(entry, LowRankTensor):
        return LowRankTensor(parts["a"], parts["b"], entry.shape)
    return parts[""]


def scaled_parts(entry: C.Entry, factor: float) -> dict[str, torch.Tensor]:
    """The parts of `factor * entry`: a sparse entry's values or a low-rank entry's left factor `b` are scaled."""
    return {name: t if name == "a" else t * factor for name, t in value_parts(entry).items()}


def parts_finite(parts: dict[str, torch.Tensor]) -> bool:
    """Whether every tensor of `parts` holds finite values only."""
    return all(bool(torch.isfinite(t).all()) for t in parts.values())


def squared_norm(entry: C.Entry) -> float:
    """‖entry‖² in float64 without densifying: the values of a sparse entry, `tr(aaᵀ · bᵀb)` for a low-rank one."""
    if isinstance(entry, LowRankTensor):
        a, b = entry.a.detach().double(), entry.b.detach().double()
        return max(0.0, float(((a @ a.T) * (b.T @ b)).sum()))
    tensor = entry.values if isinstance(entry, SparseTensor) else entry
    return float(torch.linalg.vector_norm(tensor.detach().double())) ** 2


def max_abs_bound(entry: C.Entry) -> float:
    """An upper bound of max |dense entry| without densifying (exact for dense and sparse entries; for a low-rank
    one the largest row norm of `b` times the largest column norm of `a`, by Cauchy-Schwarz)."""
    if isinstance(entry, LowRankTensor):
        rows = torch.linalg.vector_norm(entry.b.detach().double(), dim=1).max()
        columns = torch.linalg.vector_norm(entry.a.detach().double(), dim=0).max()
        return float(rows * columns)
    tensor = entry.values if isinstance(entry, SparseTensor) else entry
    return float(tensor.detach().abs().max()) if tensor.numel() else 0.0


def scaled_sum_is_finite(target: torch.Tensor, entry: C.Entry, lam: float) -> bool:
    """[`arithmetic.scaled_sum_is_finite`] for any entry: a bound decides almost always; only near the dtype's limit
    is the update computed, into one float32 copy of `target`."""
    if torch.is_tensor(entry):
        return A.scaled_sum_is_finite(target, entry, lam)
    if target.numel() == 0:
        return True
    bound = float(target.detach().abs().max()) + abs(lam) * max_abs_bound(entry)
    if bound < 0.5 * torch.finfo(target.dtype).max:  # NaN compares false and falls through to the exact check
        return True
    work = target.detach().to(torch.float32, copy=True)
    C.add_scaled_(work, entry, lam)
    return bool(torch.isfinite(work.to(target.dtype)).all())


class TaskVectorCompressionMixin:
    """The compression and merge methods of [`TaskVector`] (which holds `_vector`, `config`, `commit_hash`,
    `name_or_path` and `_with`)."""

    def sparsify(
        self, density: float, method: str = "magnitude", generator: torch.Generator | None = None
    ) -> TaskVector:
        r"""
        A sparse copy of the vector: each tensor keeps a `density` fraction of its values, stored as indices and
        values ([`~compression.SparseTensor`]).

        Args:
            density (`float`): Fraction of values to keep, in (0, 1].
            method (`str`, *optional*, defaults to `"magnitude"`): `"magnitude"` keeps the `ceil(density * n)` values
                of largest absolute value of each tensor ([`~compression.sparsify_magnitude`]); `"random_rescaled"`
                is DARE: each value is kept with probability `density` and divided by it, so the expectation is the
                vector ([`~compression.sparsify_random_rescaled`]).
            generator (`torch.Generator`, *optional*): Source of randomness of `"random_rescaled"` (a seeded one
                reproduces the draw); not accepted with `"magnitude"`.

        Returns:
            [`TaskVector`] with `config.sparsify_method` and `config.density` recorded (`recommended_lam` is kept: it
            was chosen for the full vector, so check it on validation data). Entries already compressed are
            densified one at a time first.

        Raises:
            `TypeError`: `density` is not a real number, `generator` not a `torch.Generator`.
            `ValueError`: `density` outside (0, 1], an unknown `method`, a `generator` with `"magnitude"`.
        """
        density = C.check_density(density)
        if method not in SPARSIFY_METHODS:
            raise ValueError(f"method must be one of {SPARSIFY_METHODS}, got {method!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        if generator is not None and method == "magnitude":
            raise ValueError("generator is used by method='random_rescaled' only; 'magnitude' draws nothing.")
        sparse = {}
        for key, entry in self._vector.items():  # sorted by name: the draws follow compression's order
            one = {key: C.to_dense(entry)}
            if method == "magnitude":
                sparse.update(C.sparsify_magnitude(one, density))
            else:
                sparse.update(C.sparsify_random_rescaled(one, density, generator))
        # A new vector, not the one at `name_or_path`@`commit_hash`: it does not inherit where that one was loaded
        # from (remove_vector would otherwise fetch the dense original to undo it).
        return type(self)(sparse, dataclasses.replace(self.config, sparsify_method=method, density=density))

    def low_rank(self, rank: int) -> TaskVector:
        r"""
        A low-rank copy of the vector: each 2-D tensor that is not an embedding table (the encoder's linear weights
        and the visual projection) keeps its top `rank` singular directions, stored as two factors
        ([`~compression.LowRankTensor`], `b @ a`); biases, layer norms, the embeddings and the patch convolution
        stay dense ([`~compression.low_rank`]; the SVD runs in float32, the factors keep the vector's dtype).

        Args:
            rank (`int`): The rank to keep, >= 1 (a tensor of smaller rank keeps all of it).

        Returns:
            [`TaskVector`] with `config.rank` recorded (`recommended_lam` is kept, as in [`~TaskVector.sparsify`]).

        Raises:
            `TypeError`: `rank` is not an int. `ValueError`: `rank` < 1.
        """
        rank = check_int("rank", rank, minimum=1)
        factored = {}
        for key, entry in self._vector.items():
            factored.update(C.low_rank({key: C.to_dense(entry)}, rank))
        return type(self)(factored, dataclasses.replace(self.config, rank=rank))  # a new vector, as in sparsify

    @classmethod
    def merge(
        cls,
        vectors: Sequence[TaskVector],
        weights: Sequence[float] | None = None,
        method: str = "sum",
        density: float | None = None,
        generator: torch.Generator | None = None,
    ) -> TaskVector:
        r"""
        Merge several vectors into one (e.g. explainability vectors of several source domains).

        Args:
            vectors (`list[TaskVector]`): At least one vector; all with the same keys and shapes (dense or
                compressed).
            weights (`list[float]`, *optional*): One finite weight per vector; all 1 by default.
            method (`str`, *optional*, defaults to `"sum"`): `"sum"` is task arithmetic, `sum_i weights[i] *
                vectors[i]` ([`~compression.sum_merge`]); `"ties"` trims each vector to its top `density` values,
                elects a sign per value and averages the agreeing weighted values ([`~compression.ties_merge`]);
                `"dare_ties"` drops at random and rescales instead of trimming ([`~compression.dare_ties_merge`]).
                Scale the result with `lam` when applying it.
            density (`float`, *optional*): Fraction kept by `"ties"` / `"dare_ties"`, in (0, 1]; 0.2 by default.
                Not accepted with `"sum"`.
            generator (`torch.Generator`, *optional*): Source of randomness of `"dare_ties"`.

        Returns:
            A dense float32 [`TaskVector`] (computed key by key). Its config keeps the fields on which all sources
            agree (base model, data set, α), clears `recommended_lam` and the compression fields, and records
            `merge = {"method", "weights", "density", "sources"}`; a source is `"repo_id@commit"` for a vector loaded
            from the Hub, else its `finetuned_model`, else `None`.

        Raises:
            `TypeError`: an element is not a [`TaskVector`], a weight is not a number, `generator` is not a
                `torch.Generator`. `ValueError`: no vectors, an unknown `method`, a weight count that is not the vector
                count, a non-finite weight, `density` outside (0, 1] or given with `"sum"`, `generator` given with
                another method than `"dare_ties"`.
            [`~arithmetic.IncompatibleKeysError`]: the vectors' keys or shapes differ (listed).
        """
        if isinstance(vectors, cls) or not isinstance(vectors, Iterable):
            raise TypeError(f"merge takes a list of TaskVector, got {type(vectors).__name__}.")
        vectors = list(vectors)
        if not vectors:
            raise ValueError("merge needs at least one TaskVector, got none.")
        wrong = [f"{i}: {type(v).__name__}" for i, v in enumerate(vectors) if not isinstance(v, cls)]
        if wrong:
            raise TypeError(f"merge takes TaskVector objects only; got {A.preview(wrong)}.")
        if method not in MERGE_METHODS:
            raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}.")
        if weights is not None:
            if isinstance(weights, str | bytes) or not isinstance(weights, Iterable):
                raise TypeError(f"weights must be a list of numbers or None, got {type(weights).__name__}.")
            weights = list(weights)
        if method == "sum" and density is not None:
            raise ValueError("density is used by method='ties' or 'dare_ties' only; 'sum' keeps every value.")
        if generator is not None and method != "dare_ties":
            raise ValueError(f"generator is used by method='dare_ties' only; {method!r} draws nothing.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        entries = [v._vector for v in vectors]
        if method == "sum":
            merged = C.sum_merge(entries, weights)
        else:
            density = C.check_density(0.2 if density is None else density)
            if method == "ties":
                merged = C.ties_merge(entries, weights, density)
            else:
                merged = C.dare_ties_merge(entries, weights, density, generator)
        record = {
            "method": method,
            "weights": [float(w) for w in weights] if weights is not None else [1.0] * len(vectors),
            "density": density,
            "sources": [v._source() for v in vectors],
        }
        config = dataclasses.replace(combined_provenance(*(v.config for v in vectors)), merge=record)
        return cls(merged, config)

    def _source(self) -> str | None:
        """How a merge names this vector: `"repo_id@commit"` when loaded from the Hub, else `finetuned_model`."""
        if self.commit_hash and self.name_or_path:
            return f"{self.name_or_path}@{self.commit_hash}"
        return self.config.finetuned_model

    def to_dense(self) -> TaskVector:
        """The same vector with every entry dense (compressed entries densified; dense tensors shared), same
        config."""
        return self._with(C.densify(self._vector))

    @property
    def storage_format(self) -> str:
        """`"dense"`, `"sparse"`, `"low_rank"` (with dense leftovers) or `"mixed"` ([`~compression.storage_format`])."""
        return C.storage_format(self._vector)

    @property
    def storage_nbytes(self) -> int:
        """Bytes of tensor data `save_pretrained` writes (indices and values, factors, dense tensors); the safetensors
        headers add a few kB."""
        return C.storage_nbytes(self._vector)

    def export_peft_lora(
        self,
        save_directory: str | os.PathLike,
        base_model: nn.Module | Iterable[str] | None = None,
        lam: float = 1.0,
        base_model_name_or_path: str | None = None,
    ) -> list[str]:
        r"""
        Write the low-rank part of the vector as a PEFT LoRA adapter (`adapter_config.json`,
        `adapter_model.safetensors`) that plain `peft` loads: `PeftModel.from_pretrained(base, save_directory)`
        adds `lam * b @ a` to each covered linear weight, as `apply_to(base, lam)` does
        ([`hf_explvec.peft_export.export_peft_lora`]).

        LoRA carries the factored linear weights of the encoder (`q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1`,
        `fc2`) and the visual projection. It cannot carry biases, layer norms, the class and position embeddings or
        the patch convolution: their part of the vector is lost in the adapter, and the keys are returned.

        Args:
            save_directory (`str` or `os.PathLike`): Where to write the adapter (created if missing).
            base_model (`nn.Module` or names, *optional*): The model the adapter is for, to name its modules (e.g. a
                [`SelfExplainingCLIPVision`], whose tower sits under another prefix); canonical names (those of
                `CLIPVisionModelWithProjection` and `CLIPModel`) by default.
            lam (`float`, *optional*, defaults to 1.0): The scaling λ, folded into `lora_B` (e.g.
                `vector.config.recommended_lam`).
            base_model_name_or_path (`str`, *optional*): Recorded in `adapter_config.json`; the vector's
                `config.base_model` by default.

        Returns:
            `list[str]`: the canonical keys the adapter does not carry.

        Raises:
            `ValueError`: the vector has no low-rank linear weight (run [`~TaskVector.low_rank`] first), or a module
            is not in `base_model`; nothing is written then. `TypeError`/`ValueError`: `lam` is not a finite number.
        """
        name = base_model_name_or_path if base_model_name_or_path is not None else self.config.base_model
        return peft_export.export_peft_lora(self._vector, name, save_directory, lam=lam, base_model=base_model)


__all__ = [
    "TaskVectorCompressionMixin",
    "max_abs_bound",
    "parts_finite",
    "rebuild",
    "scaled_parts",
    "scaled_sum_is_finite",
    "squared_norm",
    "value_parts",
]
