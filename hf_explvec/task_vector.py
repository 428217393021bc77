"""TaskVector: the difference of two CLIP vision feature extractors, its algebra, its compressed and merged forms,
and applying it to a model.

Any state dict or module with a CLIP vision tower works; this module does not import the model code. The tensor work
of compression and merging lives in [`hf_explvec.compression`] (pure functions); this module gives it the vector's
provenance, checks, files and Hub methods.
"""

import copy
import dataclasses
import json
import logging
import math
import numbers
import os
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from torch import nn

from . import arithmetic as A
from . import base_check
from . import compression as C
from . import task_vector_compression as TVC
from .compression import LowRankTensor, SparseTensor
from .hub import describe_repo, download_snapshot, push_folder, vector_card
from .task_vector_config import (
    CONFIG_NAME,
    VECTOR_TYPE,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    WEIGHTS_PATTERN,
    TaskVectorConfig,
    combined_provenance,
)

logger = logging.getLogger(__name__)


def _check_scalar(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}.")
    return float(value)


def _named_tensors(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict(keep_vars=True)
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        return dict(obj)
    raise TypeError(f"expected an nn.Module or a state dict, got {type(obj).__name__}.")


class TaskVector(TVC.TaskVectorCompressionMixin):
    r"""
    A task vector τ = θ* − θ over the CLIP vision tower and visual projection.

    The explainability vector of the paper is the difference between a self-explaining model (trained with
    α·CE + (1−α)·MSE to Kernel SHAP values) and its prediction-only twin. Adding `lam * τ` to a prediction-only
    model of another domain gives it patch explanations.

    Keys are canonical (`vision_model.*`, `visual_projection.weight`; see [`hf_explvec.arithmetic`]), so a vector
    taken from any CLIP model class applies to any other. The head buffer, the logit scale, `position_ids` and
    integer buffers are never part of a vector.

    Operators: `a + b`, `a - b`, `-a`, `2 * a`, `a * 2`, `a / 2`, `sum([a, b, c])`. Vectors combined with `+`/`-`
    must have the same keys and shapes, or [`~arithmetic.IncompatibleKeysError`] lists the differences. A vector
    never holds NaN or infinity: construction raises `ValueError` naming the tensors.

    Compressed vectors: each entry is a dense tensor, a [`~compression.SparseTensor`] (from [`~TaskVector.sparsify`])
    or a [`~compression.LowRankTensor`] (from [`~TaskVector.low_rank`]); [`~TaskVector.merge`] merges several vectors
    (sum, TIES, DARE-TIES). They save and load in their compact form and `apply_to` adds them without building the
    dense vector. Scaling (`2 * a`, `-a`, `a / 2`), `to()` and `norm()` work on the stored values and factors and
    keep them compressed; `+`, `-`, `cosine_similarity` and the merges densify one key at a time and return dense
    results; `to_dense()` densifies the whole vector.

    Hub methods as in transformers and huggingface_hub: `save_pretrained(folder)`, `push_to_hub(repo_id)` and
    `TaskVector.from_pretrained(folder_or_repo_id)`. They are written here rather than inherited from
    `huggingface_hub.ModelHubMixin`: the vector's `config.json` is [`TaskVectorConfig`]'s contract (checked on load),
    its card comes from [`hf_explvec.hub.cards`] (which keeps a README the user edited), and Hub errors name the repo,
    the revision and the endpoint ([`hf_explvec.hub.HubConnectionError`] when the connection fails).

    Args:
        vector (`dict[str, torch.Tensor | SparseTensor | LowRankTensor]`):
            Canonical name -> delta (floating point), dense or compressed. Tensors are used as given, not copied.
            Each entry is checked on its own (floating point, not on the meta device, finite); compressed entries
            through their stored values and factors, without densifying.
        config ([`TaskVectorConfig`], *optional*):
            Provenance.

    Attributes:
        commit_hash (`str` or `None`): The commit sha a Hub repo's revision resolved to, for a loaded vector.
        name_or_path (`str` or `None`): The folder or repo id the vector was loaded from.
    """

    def __init__(self, vector: dict, config: TaskVectorConfig | None = None):
        if not hasattr(vector, "items") or not vector:
            raise ValueError("a task vector needs a non-empty mapping of parameter name -> tensor.")
        bad = sorted(
            k
            for k, v in vector.items()
            if not (torch.is_tensor(v) or isinstance(v, SparseTensor | LowRankTensor)) or not v.dtype.is_floating_point
        )
        if bad:
            raise TypeError(
                "task vector entries must be floating-point tensors (dense, or compression.SparseTensor / "
                f"LowRankTensor); not so: {A.preview(bad)}."
            )
        meta = sorted(k for k, v in vector.items() if any(t.is_meta for t in TVC.value_parts(v).values()))
        if meta:
            raise ValueError(
                f"task vector entries must hold data, not meta tensors (no values); on the meta device: "
                f"{A.preview(meta)}."
            )
        nonfinite = sorted(k for k, v in vector.items() if not TVC.parts_finite(TVC.value_parts(v)))
        if nonfinite:
            raise ValueError(f"task vector holds NaN or Inf in {len(nonfinite)} tensors: {A.preview(nonfinite)}.")
        if config is not None and not isinstance(config, TaskVectorConfig):
            raise TypeError(f"config must be a TaskVectorConfig or None, got {type(config).__name__}.")
        self._vector = dict(sorted(vector.items()))
        self.config = config if config is not None else TaskVectorConfig()
        self.commit_hash: str | None = None
        self.name_or_path: str | None = None

    def _with(self, vector: dict, config: TaskVectorConfig | None = None) -> "TaskVector":
        """A new vector of `vector` with `config` (this one's by default) that keeps where this one was loaded from."""
        new = TaskVector(vector, self.config if config is None else config)
        new.commit_hash, new.name_or_path = self.commit_hash, self.name_or_path
        return new

    # ----------------------------------------------------------------------------------------------- creation
    @classmethod
    def from_models(cls, base, finetuned, config: TaskVectorConfig | None = None, **provenance) -> "TaskVector":
        r"""
        τ = finetuned − base over the CLIP vision tower and visual projection, in float32.

        Args:
            base (`nn.Module` or `dict[str, torch.Tensor]`): The starting model θ (any CLIP model class).
            finetuned (`nn.Module` or `dict[str, torch.Tensor]`): The model θ* after fine-tuning.
            config ([`TaskVectorConfig`], *optional*): Provenance; fields not given are filled from the models'
                configs when they have them (`base_model` from the base's `_name_or_path`, `base_model_revision` from
                its `_commit_hash` when that is set (transformers 5 does not set it on `from_pretrained`;
                [`hf_explvec.load_explaining_model`] does, otherwise pass `base_model_revision=`), `finetuned_model`,
                `alpha`). The
                `base_fingerprint` of `base` is recorded unless given ([`~base_check.base_fingerprint`]: a few kB
                that let `apply_to` refuse a model that does not descend from the base).
            provenance: Fields of [`TaskVectorConfig`] given as keywords.

        Raises:
            [`~arithmetic.IncompatibleKeysError`]: if the two vision towers differ in keys or shapes (listed).
            `ValueError`: a model has no CLIP vision tower, or holds meta tensors (no values to subtract).
        """
        base_state = A.vision_state(_named_tensors(base))
        finetuned_state = A.vision_state(_named_tensors(finetuned))
        for what, state in (("base", base_state), ("finetuned", finetuned_state)):
            meta = sorted(k for k, v in state.items() if v.is_meta)
            if meta:
                raise ValueError(
                    f"from_models: the {what} model has {len(meta)} tensors on the meta device (no values), e.g. "
                    f"{A.preview(meta, 3)}; load its weights (e.g. `from_pretrained`) before taking a task vector."
                )
        if (A.PROJECTION_KEY in base_state) != (A.PROJECTION_KEY in finetuned_state):
            logger.info("only one of the two models has a visual projection; the vector leaves it out.")
            base_state.pop(A.PROJECTION_KEY, None)
            finetuned_state.pop(A.PROJECTION_KEY, None)
        vector = A.subtract(finetuned_state, base_state)
        config = dataclasses.replace(config or TaskVectorConfig(), **provenance)
        base_config, finetuned_config = getattr(base, "config", None), getattr(finetuned, "config", None)
        if config.base_model is None and getattr(base_config, "_name_or_path", None):
            config.base_model = base_config._name_or_path
        commit = getattr(base_config, "_commit_hash", None)
        if config.base_model_revision is None and isinstance(commit, str) and commit:
            if config.base_model == getattr(base_config, "_name_or_path", None):  # the revision of that name
                config.base_model_revision = commit
        if config.base_fingerprint is None:
            config.base_fingerprint = base_check.base_fingerprint_or_none(base_state, "from_models")
        if config.finetuned_model is None and getattr(finetuned_config, "_name_or_path", None):
            config.finetuned_model = finetuned_config._name_or_path
        if config.alpha is None and isinstance(getattr(finetuned_config, "alpha", None), float):
            config.alpha = finetuned_config.alpha
        return cls(vector, config)

    # ------------------------------------------------------------------------------------------------ algebra
    def _binary(self, other, op) -> "TaskVector":
        if not isinstance(other, TaskVector):
            return NotImplemented
        A.check_same_layout(self._vector, other._vector, "the two task vectors")
        combined = {k: op(C.to_dense(v), C.to_dense(other._vector[k])) for k, v in self._vector.items()}
        return TaskVector(combined, combined_provenance(self.config, other.config))

    def __add__(self, other):
        return self._binary(other, torch.add)

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) starts from 0
            return self
        return self._binary(other, torch.add)

    def __sub__(self, other):
        return self._binary(other, torch.sub)

    def __neg__(self):
        return self * -1.0

    def __mul__(self, factor):
        if isinstance(factor, TaskVector) or not isinstance(factor, numbers.Number):
            return NotImplemented
        factor = _check_scalar(factor, "the scaling factor")
        scaled = {k: TVC.scaled_parts(v, factor) for k, v in self._vector.items()}
        nonfinite = sorted(k for k, parts in scaled.items() if not TVC.parts_finite(parts))
        if nonfinite:
            raise ValueError(
                f"{factor!r} * task vector holds NaN or Inf in {len(nonfinite)} tensors: {A.preview(nonfinite)}."
            )
        vector = {k: TVC.rebuild(self._vector[k], parts) for k, parts in scaled.items()}
        return TaskVector(vector, dataclasses.replace(self.config, recommended_lam=None))

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        if isinstance(divisor, TaskVector) or not isinstance(divisor, numbers.Number):
            return NotImplemented
        divisor = _check_scalar(divisor, "the divisor")
        if divisor == 0:
            raise ZeroDivisionError("cannot divide a task vector by zero.")
        return self * (1.0 / divisor)

    def norm(self) -> float:
        """L2 norm of the vector (all tensors as one flat vector), accumulated in float64 (compressed entries are
        not densified)."""
        return math.sqrt(math.fsum(TVC.squared_norm(v) for v in self._vector.values()))

    def cosine_similarity(self, other: "TaskVector") -> float:
        """Cosine of the angle between two vectors with the same keys and shapes (compressed entries are densified
        one key at a time)."""
        if not isinstance(other, TaskVector):
            raise TypeError(f"cosine_similarity takes a TaskVector, got {type(other).__name__}.")
        A.check_same_layout(self._vector, other._vector, "the two task vectors")
        denominator = self.norm() * other.norm()
        if denominator == 0:
            raise ValueError("the cosine similarity is undefined for a zero task vector.")
        dot = math.fsum(
            float(torch.dot(C.to_dense(v).flatten().double(), C.to_dense(other._vector[k]).flatten().double()))
            for k, v in self._vector.items()
        )
        return max(-1.0, min(1.0, dot / denominator))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "TaskVector":
        """A copy in another floating dtype and/or on another device (tensors already there are shared); compressed
        entries stay compressed (their indices keep their integer dtype)."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
        moved = {
            k: TVC.rebuild(v, {name: t.to(device=device, dtype=dtype) for name, t in TVC.value_parts(v).items()})
            for k, v in self._vector.items()
        }
        return self._with(moved)

    # ------------------------------------------------------------------------------------------ introspection
    def state_dict(self) -> dict[str, C.Entry]:
        """Canonical name -> delta. A new dict holding the vector's own entries (not copies): dense tensors, or
        [`~compression.SparseTensor`] / [`~compression.LowRankTensor`] in a compressed vector (`to_dense()` first
        for tensors only)."""
        return dict(self._vector)

    def keys(self) -> list[str]:
        """The canonical parameter names, sorted."""
        return list(self._vector)

    def __len__(self) -> int:
        return len(self._vector)

    def __contains__(self, key) -> bool:
        return key in self._vector

    @property
    def num_parameters(self) -> int:
        """Number of values of the dense vector (compressed entries count their dense shape)."""
        return sum(math.prod(v.shape) for v in self._vector.values())

    @property
    def dtype(self) -> torch.dtype:
        dtypes = {v.dtype for v in self._vector.values()}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the key/shape layout; equal fingerprints mean the vectors combine and apply alike."""
        return A.layout_fingerprint(self._vector)

    def __repr__(self) -> str:
        storage = "" if self.storage_format == "dense" else f", {self.storage_format} ({self.storage_nbytes:,} bytes)"
        return (
            f"TaskVector({len(self)} tensors, {self.num_parameters:,} parameters, dtype={self.dtype}{storage}, "
            f"{self.config})"
        )

    # -------------------------------------------------------------------------------------------------- apply
    def apply_to(
        self, model: nn.Module, lam: float = 1.0, inplace: bool = True, strict: bool = True, check_base: bool = True
    ) -> nn.Module:
        r"""
        Add `lam * τ` to the CLIP vision tower (and projection) of `model`: θ ← θ + lam·τ.

        Works on [`SelfExplainingCLIPVision`], `CLIPVisionModel`, `CLIPVisionModelWithProjection`, `CLIPModel`,
        `CLIPForImageClassification` and any module holding one CLIP vision tower: parameters are matched by name
        whatever their prefix. The vector's projection is applied where the model has a visual projection and
        skipped where it has none. Each update is computed in float32 and written back in the parameter's dtype and
        on its device, one tensor at a time: besides the model and the vector, at most one parameter-sized tensor is
        in flight (none for float32 parameters on the vector's device). A compressed vector is never densified:
        sparse entries are added with `index_add_`, low-rank ones with `addmm_` ([`~compression.add_scaled_`]).

        Everything is checked before anything is written: on a bad input the model is left exactly as it was. This
        includes the result itself: if `θ + lam·τ` would not be finite in a parameter's dtype (e.g. float16 with a
        large λ), nothing is written. It also includes the model's descent: a vector that records its base's
        fingerprint (`config.base_fingerprint`, see [`~base_check.check_base`]) refuses a model that is not its base
        or a fine-tune of it.

        Args:
            model (`nn.Module`): The model to edit.
            lam (`float`, *optional*, defaults to 1.0): The scaling λ of the vector (finite).
            inplace (`bool`, *optional*, defaults to `True`): Edit `model` itself; with `False`, edit a deep copy
                and leave `model` untouched.
            strict (`bool`, *optional*, defaults to `True`): Require the vector and the model's vision tower to
                have the same keys with the same shapes. With `False`, keys missing on either side are skipped with
                a warning; shape mismatches still raise.
            check_base (`bool`, *optional*, defaults to `True`): Refuse a model that does not descend from the
                vector's base (when the vector records a base fingerprint). `False` applies the vector anyway.

        Returns:
            `nn.Module`: the edited model (`model` itself when `inplace=True`).

        Raises:
            `TypeError`: `model` is not a module, `lam` is not a real number, `check_base` is not a bool.
            `ValueError`: `model` has no CLIP vision tower or is on the meta device; `lam` is not finite or the
                result would not be finite in the parameters' dtype.
            [`~arithmetic.IncompatibleKeysError`]: keys or shapes do not line up (listed).
            [`~base_check.BaseModelMismatchError`] (a `ValueError`): `model` does not descend from the vector's base;
                the message names the base and the override, `check_base=False`.
        """
        lam = _check_scalar(lam, "lam")
        if not isinstance(model, nn.Module):
            raise TypeError(f"apply_to takes an nn.Module, got {type(model).__name__}.")
        if abs(lam) > torch.finfo(torch.float32).max:
            raise ValueError(
                f"lam={lam!r} is beyond the float32 range (±{torch.finfo(torch.float32).max:.3e}) in which the update "
                "is computed; nothing was changed."
            )
        if not isinstance(check_base, bool):
            raise TypeError(f"check_base must be a bool, got {type(check_base).__name__}.")
        pairs = self._match(model, strict)
        self._check_not_meta(model, pairs)
        if check_base:
            self._check_base(model)
        self._check_result_finite(model, pairs, lam)
        if not inplace:
            model = copy.deepcopy(model)
            pairs = self._match(model, strict)
        done = []
        try:
            with torch.no_grad():
                for target, delta in pairs.values():
                    C.add_scaled_(target, delta, lam)
                    done.append((target, delta))
        except BaseException:
            with torch.no_grad():  # best effort: undo what was written (exact up to float rounding)
                for target, delta in done:
                    C.add_scaled_(target, delta, -lam)
            raise
        return model

    @staticmethod
    def _check_not_meta(model: nn.Module, pairs: dict) -> None:
        """Refuse (before writing) a model on the meta device."""
        if any(target.is_meta for target, _ in pairs.values()):
            raise ValueError(
                f"the {type(model).__name__} is on the meta device: its parameters hold no values to add the task "
                "vector to. Load its weights first (e.g. `from_pretrained`, or `to_empty` then `load_state_dict`)."
            )

    def _check_base(self, model: nn.Module) -> None:
        """Refuse (before writing) a model that does not descend from the vector's base, when it records one."""
        if self.config.base_fingerprint is None:
            return
        state = A.vision_state(model.state_dict(keep_vars=True))
        base_check.check_base(self.config.base_fingerprint, state, self.config.base_model)

    @staticmethod
    def _check_result_finite(model: nn.Module, pairs: dict, lam: float) -> None:
        """Refuse (before writing) a λ whose result would overflow the parameters' dtype."""
        with torch.no_grad():
            overflow = [(target.dtype, key) for key, (target, delta) in pairs.items()
                        if not TVC.scaled_sum_is_finite(target, delta, lam)]  # fmt: skip
        if overflow:
            dtypes = sorted({str(dtype).removeprefix("torch.") for dtype, _ in overflow})
            raise ValueError(
                f"apply_to(lam={lam!r}) would write NaN or Inf into {len(overflow)} parameters of "
                f"{type(model).__name__} (dtype {', '.join(dtypes)}; largest finite value "
                f"{min(torch.finfo(d).max for d, _ in overflow):.4g}), e.g. {A.preview([k for _, k in overflow], 3)}; "
                "nothing was changed. Use a smaller lam, or a wider dtype."
            )

    def _match(self, model: nn.Module, strict: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Canonical name -> (the model's tensor, the vector's delta), checked to line up."""
        named = model.state_dict(keep_vars=True)
        mapping = A.canonical_vision_names(named)
        if not mapping:
            raise ValueError(
                f"{type(model).__name__} has no CLIP vision tower (no parameter ending in "
                f"'embeddings.patch_embedding.weight'); this task vector applies to CLIP vision models."
            )
        targets = {k: named[name] for k, name in mapping.items() if named[name].is_floating_point()}
        vector = self._vector
        if A.PROJECTION_KEY in vector and A.PROJECTION_KEY not in targets:
            vector = {k: v for k, v in vector.items() if k != A.PROJECTION_KEY}
        missing, unexpected, mismatched = A.compare_shapes(
            {k: v.shape for k, v in vector.items()}, {k: v.shape for k, v in targets.items()}
        )
        if mismatched or (strict and (missing or unexpected)):
            raise A.IncompatibleKeysError(
                f"task vector does not fit {type(model).__name__} (vector keys vs model keys; nothing was changed)",
                missing=missing,
                unexpected=unexpected,
                mismatched=mismatched,
            )
        if missing or unexpected:
            logger.warning(
                "apply_to(strict=False): %d vector keys not in the model and %d model keys not in the vector "
                "were skipped: %s",
                len(missing),
                len(unexpected),
                A.preview(missing + unexpected),
            )
        return {k: (targets[k], v) for k, v in vector.items() if k in targets}

    # -------------------------------------------------------------------------------------------- save / load
    def layout(self) -> dict:
        """The weights' description written into `config.json` ([`LAYOUT_KEYS`]) and the card: dtype, parameter and
        tensor counts, layout fingerprint, storage `format` and `storage_bytes`."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "num_parameters": self.num_parameters,
            "num_tensors": len(self),
            "fingerprint": self.fingerprint,
            "format": self.storage_format,
            "storage_bytes": self.storage_nbytes,
        }

    def _write_files(self, folder: Path, max_shard_size: int | str = "5GB") -> None:
        """Write the weights (compact entries as [`~compression.encode`] parts, sharded above `max_shard_size`) and
        `config.json` into `folder`."""
        self.config.validate()
        save_torch_state_dict(
            C.encode(self._vector),
            folder,
            filename_pattern=WEIGHTS_PATTERN,
            max_shard_size=max_shard_size,
            metadata={"format": "pt", "vector_type": VECTOR_TYPE, "storage_format": self.storage_format},
        )
        self.config.to_json_file(Path(folder) / CONFIG_NAME, self.layout())

    def save_pretrained(self, save_directory: str | os.PathLike, *, max_shard_size: int | str = "5GB") -> None:
        r"""
        Save the vector to a directory: `task_vector.safetensors` (or shards `task_vector-0000i-of-0000n.safetensors`
        with `task_vector.safetensors.index.json` when larger than `max_shard_size`), `config.json` with the
        provenance, dtype, parameter count, layout fingerprint, storage format and size, and a `README.md` card
        unless one is there.

        A compressed vector is saved compact: a sparse entry as `<name>.indices`, `<name>.values` and `<name>.shape`,
        a low-rank one as `<name>.lora_a`, `<name>.lora_b` and `<name>.shape` ([`~compression.encode`]); its
        `config.json` has `format_version` 2. A dense vector keeps `format_version` 1, readable by older hf_explvec.

        Args:
            save_directory (`str` or `os.PathLike`): Where to save.
            max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): Largest shard, e.g. `"500MB"`.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._write_files(folder, max_shard_size)
        if not (folder / "README.md").exists():
            self.generate_model_card().save(folder / "README.md")

    def generate_model_card(self, repo_id: str | None = None, revision: str | None = None):
        """The vector's card ([`hf_explvec.hub.cards.vector_card`], from `hub_cards/task_vector.md`): metadata
        (library, tags, base model, data set) and a usage snippet for `repo_id` at `revision`."""
        return vector_card(dataclasses.asdict(self.config), self.layout(), repo_id, revision)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        commit_message: str = "Upload explainability vector with hf_explvec",
        commit_description: str | None = None,
        token: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
    ):
        r"""
        Upload the vector to the Hub in one commit: weights, `config.json` and a card. A README already in the repo
        that someone wrote or edited keeps its text; only its metadata is updated. Old weight shards are removed.

        Args:
            repo_id (`str`): The repository, e.g. `"org/imagenet-x-explain"`; created if missing.
            revision (`str`, *optional*): Branch to commit to (created from `main` if missing).
            private (`bool`, *optional*): Visibility of a newly created repository.
            commit_message (`str`, *optional*): The commit message.
            commit_description (`str`, *optional*): The commit description.
            token (`str`, *optional*): Hub token; the logged-in one by default.
            create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of committing.
            max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): Largest weight shard.

        Returns:
            `huggingface_hub.CommitInfo`: `commit.oid` is the commit sha, to pin with `revision=`.

        Raises:
            [`~hf_explvec.hub.HubConnectionError`]: the server is unreachable or the connection failed during the
            LFS upload or the commit (no partial commit becomes visible). `FileNotFoundError` / `OSError`: the Hub
            refused. All name the repo, the revision and the endpoint.
        """
        return push_folder(
            lambda folder: self._write_files(folder, max_shard_size),
            lambda: self.generate_model_card(repo_id, revision),
            repo_id,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
            delete_patterns=["task_vector*.safetensors", WEIGHTS_INDEX_NAME],
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "TaskVector":
        r"""
        Load a vector from a local folder or a Hub repository (safetensors and JSON only, never pickle).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A folder written by `save_pretrained`, or a repo
                id such as `"org/imagenet-x-explain"`.
            revision (`str`, *optional*): Branch, tag or commit sha; `main` by default.
            cache_dir, force_download, local_files_only, token: As in `huggingface_hub.snapshot_download`.

        Returns:
            [`TaskVector`]; for a repo, `commit_hash` is the commit sha the revision resolved to.

        Raises:
            `FileNotFoundError`: repository, revision or weights not found, or `pretrained_model_name_or_path` is
            neither a folder nor a valid repo id. [`~hf_explvec.hub.HubConnectionError`] (a `ConnectionError`): the
            Hub cannot be reached and nothing is cached, or the connection failed during the download (nothing
            partial is left in the cache). `ValueError`: corrupted or truncated weights (including compact parts
            that do not fit together), weights of another storage format than `config.json`'s `format`, or a
            `config.json` that is not JSON, of another kind of vector or of a newer `format_version`. `TypeError`: a
            mistyped config field. Remote errors name the repo, revision and endpoint.
        """
        source = str(pretrained_model_name_or_path)
        if os.path.isdir(source):
            vector = load_vector_folder(source)
            vector.name_or_path = source
            return vector
        folder = download_snapshot(
            source,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=[CONFIG_NAME, "task_vector*.safetensors", WEIGHTS_INDEX_NAME],
        )
        try:
            vector = load_vector_folder(folder)
        except (FileNotFoundError, TypeError, ValueError) as error:
            raise type(error)(f"{describe_repo(source, 'model', revision)}: {error}") from error
        vector.commit_hash, vector.name_or_path = folder.name, source
        return vector


def transfer(
    base: nn.Module,
    target: nn.Module,
    vector: TaskVector,
    lam: float = 1.0,
    lam_target: float = 1.0,
    inplace: bool = False,
    check_base: bool = True,
) -> nn.Module:
    r"""
    The explainability transfer of the paper: θ̃ = θ_base + λ1·(θ_T − θ_base) + λ2·τ_S.

    With `lam_target=1` this is the target model plus `lam` times the source vector, `target + lam * vector`.

    Args:
        base (`nn.Module`): The shared pretrained model θ_base (any CLIP model class).
        target (`nn.Module`): The prediction-only model fine-tuned on the target domain, θ_T; the result has its
            class and head.
        vector ([`TaskVector`]): The explainability vector τ_S of the source domain.
        lam (`float`, *optional*, defaults to 1.0): λ2, the weight of τ_S.
        lam_target (`float`, *optional*, defaults to 1.0): λ1, the weight of the target task vector θ_T − θ_base.
        inplace (`bool`, *optional*, defaults to `False`): Edit `target` itself instead of a copy.
        check_base (`bool`, *optional*, defaults to `True`): Refuse a `target` that does not descend from the base
            recorded in `vector` (see [`TaskVector.apply_to`]).

    Returns:
        `nn.Module`: θ̃, with `target`'s class, head and dtype.

    Raises:
        Those of [`TaskVector.apply_to`], before anything is written.
    """
    if lam_target == 1.0:
        return vector.apply_to(target, lam=lam, inplace=inplace, check_base=check_base)
    if not isinstance(check_base, bool):
        raise TypeError(f"check_base must be a bool, got {type(check_base).__name__}.")
    if check_base:  # the combined vector below keeps the source's fingerprint only when both bases agree
        vector._check_base(target)
    # θ_T + (λ1 − 1)(θ_T − θ_base) + λ2 τ_S is the same point, reached from the target in one update.
    combined = (lam_target - 1.0) * TaskVector.from_models(base, target) + lam * vector
    return combined.apply_to(target, inplace=inplace, check_base=False)


def load_vector_folder(folder: str | os.PathLike) -> TaskVector:
    r"""
    Load a [`TaskVector`] saved by `save_pretrained` from a local folder: safetensors only, never pickle.

    Compact files (`format` other than `"dense"` in `config.json`) are rebuilt with [`~compression.decode`], which
    checks every part.

    Raises:
        `FileNotFoundError`: no `config.json` or no `task_vector*.safetensors` in the folder.
        `ValueError` naming the files: the config describes another kind of vector, the weights are corrupted (also
            compact parts that do not fit together), of another storage format than the config's `format`, or do not
            match the config's parameter count, storage size or layout fingerprint (truncated or foreign files).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not a saved TaskVector.")
    config, layout = TaskVectorConfig.from_json_file(config_path)
    if (folder / WEIGHTS_INDEX_NAME).is_file():
        files = _index_files(folder / WEIGHTS_INDEX_NAME)
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
        hint = f" (found {pickled}: pickled weights are never loaded)" if pickled else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {folder}{hint}.")
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(folder / name))
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {folder / name}: corrupted or truncated safetensors ({error}).") from error
    where = ", ".join(str(folder / name) for name in files)
    storage_format = layout.get("format", "dense")
    if storage_format != "dense" or any(k.endswith(_COMPACT_SUFFIXES) for k in tensors):
        try:
            tensors = C.decode(tensors, expected_format=storage_format)
        except ValueError as error:
            raise ValueError(
                f"the weights in {where} do not hold the {storage_format!r} vector its {CONFIG_NAME} describes: {error}"
            ) from error
    try:
        vector = TaskVector(tensors, config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the weights in {folder} are not a valid task vector: {error}") from error
    expected = {k: layout[k] for k in ("fingerprint", "num_parameters", "storage_bytes") if k in layout}
    found = {"fingerprint": vector.fingerprint, "num_parameters": vector.num_parameters}
    if "storage_bytes" in expected:
        found["storage_bytes"] = vector.storage_nbytes
    if any(expected[k] != found[k] for k in expected):
        raise ValueError(
            f"the weights in {where} do not match its {CONFIG_NAME}: expected "
            f"{', '.join(f'{k} {v}' for k, v in sorted(expected.items()))}; found "
            f"{', '.join(f'{k} {found[k]}' for k in sorted(expected))}."
        )
    return vector


_COMPACT_SUFFIXES = (C.INDICES, C.VALUES, C.SHAPE, C.LORA_A, C.LORA_B)


def _index_files(index_path: Path) -> list[str]:
    """The shard names listed by a safetensors index file, checked to be local `.safetensors` files."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{index_path} is not valid JSON ({error}).") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(
            f"{index_path} has no 'weight_map' (a non-empty object of tensor name -> shard file); got "
            f"{type(weight_map).__name__ if weight_map is not None else 'no such key'}."
        )
    files = sorted({str(name) for name in weight_map.values()})
    for name in files:
        if not name.endswith(".safetensors") or "/" in name or "\\" in name:
            raise ValueError(f"{index_path} lists {name!r}; only local .safetensors shards load.")
    return files


__all__ = ["TaskVector", "TaskVectorConfig", "load_vector_folder", "transfer"]
