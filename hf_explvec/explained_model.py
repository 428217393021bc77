"""The explained model: your classifier, loaded by name, with an explainability vector applied, in one call.

Like peft's `PeftModel.from_pretrained(base, "org/adapter")`, [`from_pretrained_with_vector`] takes the names of a
fine-tuned classifier and of a published vector, loads both, turns the classifier into its explaining twin (same
logits, plus patch attributions; see [`hf_explvec.classifier.explaining_model`]), checks that it descends from the
vector's base, adds λ·τ and records where everything came from in `config.explainability`:

    {"model": id, "model_revision": commit, "vector": id, "vector_revision": commit, "lam": λ}

That record travels with `save_pretrained` / `push_to_hub` into `config.json` and the model card
(`base_model: [model, vector]`, `base_model_relation: merge`), and [`remove_vector`] reads it to undo the edit.

The two steps are also public: [`load_explaining_model`] (no vector) then [`apply_vector`], e.g. to choose λ on
validation data in between ([`hf_explvec.lam.choose_lam`]).

[`ImageExplanationPipeline`] is transformers' image-classification pipeline that also returns each label's patch
attributions; importing hf_explvec registers it under the task `"image-explanation"`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os

from torch import nn
from transformers import AutoModelForImageClassification, CLIPModel, ImageClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling import MissingHeadError
from .task_vector import TaskVector

logger = logging.getLogger(__name__)

PIPELINE_TASK = "image-explanation"
"""The task name of [`ImageExplanationPipeline`] in transformers' pipeline registry."""


_HUB_KWARGS = ("token", "cache_dir", "force_download", "local_files_only")
"""Keyword arguments of a model's `from_pretrained` that also apply to the vector's and the tokenizer's."""


def _is_name(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _check_lam(lam, vector: TaskVector, vector_id: str | None) -> float:
    """λ as given, else the vector's `recommended_lam`; a finite real number either way."""
    if lam is None:
        lam = vector.config.recommended_lam
        if lam is None:
            raise ValueError(
                f"the vector {vector_id or '(in memory)'} records no recommended_lam: pass lam= (e.g. lam=0.5), or "
                "choose one on your validation data with hf_explvec.lam.choose_lam."
            )
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__} {lam!r}.")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}.")
    return float(lam)


@contextlib.contextmanager
def _model_errors(name: str, revision: str | None):
    """[`~hf_explvec.hub.hub_errors`], also for the `OSError` transformers raises from a Hub error (a missing repo or
    revision becomes a `FileNotFoundError` naming the repo, the revision and the endpoint)."""
    from .hub.repo import hub_error, hub_errors

    with hub_errors(name, "model", revision):
        try:
            yield
        except OSError as error:
            cause = error.__cause__ or error.__context__
            mapped = None if cause is None else hub_error(cause, name, "model", revision)
            if mapped is None or mapped is cause:  # no Hub error behind it: transformers' own message stands
                raise
            raise mapped from error


def _resolve_revision(name: str, revision: str | None, from_pretrained_kwargs: dict):
    """`revision` resolved to a commit once (huggingface_hub's `resolve_revision`, from the cache when offline), so
    that the weights come from one commit and the provenance can name it; a local folder stays as it is.

    Returns:
        `(revision, commit)`: what to load (a `ResolvedRevision` for a repo) and its commit sha (`None` for a folder).
    """
    from huggingface_hub import HfApi

    if os.path.isdir(name):
        return revision, None
    options = {
        key: from_pretrained_kwargs[key] for key in ("cache_dir", "local_files_only") if key in from_pretrained_kwargs
    }
    with _model_errors(name, revision):
        resolved = HfApi(token=from_pretrained_kwargs.get("token")).resolve_revision(name, revision=revision, **options)
    return resolved, resolved.resolved


def _fetch_image_processor(name: str, commit: str, hub_kwargs: dict) -> None:
    """Bring the model's `preprocessor_config.json` (if it has one) into the local cache at `commit`, where
    `save_pretrained` / `push_to_hub` find it: the explained model keeps the classifier's own preprocessing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with _model_errors(name, commit), contextlib.suppress(EntryNotFoundError):  # none saved: CLIP's at save time
        hf_hub_download(name, "preprocessor_config.json", revision=commit, **hub_kwargs)


def _load_classifier(name: str, revision: str | None, from_pretrained_kwargs: dict) -> nn.Module:
    """`AutoModelForImageClassification.from_pretrained`, refusing a checkpoint without its head (which
    transformers would fill with random weights)."""
    kwargs = {"use_safetensors": True, **from_pretrained_kwargs, "output_loading_info": True}
    with _model_errors(name, revision):
        model, info = AutoModelForImageClassification.from_pretrained(name, revision=revision, **kwargs)
    mismatched = [key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys") or ()]
    random = sorted(key for key in {*info.get("missing_keys", ()), *mismatched} if not key.endswith("position_ids"))
    if random:
        raise MissingHeadError(
            f"{name!r} has no trained weights for {', '.join(random[:4])}{' ...' if len(random) > 4 else ''}: "
            f"{type(model).__name__} would fill them with random values, so nothing was loaded. A CLIPModel "
            "checkpoint has no classification head: pass class_names= (--class-names on the command line) to "
            "explain it zero-shot with its text head, or fine-tune a CLIPForImageClassification first.",
            missing_keys=random,
        )
    return model


def load_explaining_model(
    model,
    *,
    revision: str | None = None,
    class_names: list[str] | None = None,
    tokenizer=None,
    **from_pretrained_kwargs,
) -> nn.Module:
    r"""
    Load a classifier by name (or take a loaded one) and return its explaining twin, with no vector applied.

    Args:
        model (`str`, `os.PathLike` or `nn.Module`):
            A Hub repo id or a local folder, or a model. Names load with `AutoModelForImageClassification` (a
            `CLIPForImageClassification`, or a [`SelfExplainingCLIPVision`]), or with `CLIPModel` when `class_names`
            is given (zero-shot, the text head). A checkpoint that lacks its classification head is refused.
        revision (`str`, *optional*):
            Branch, tag or commit of `model`.
        class_names (`list[str]`, *optional*):
            The classes of a zero-shot `CLIPModel`, in label order.
        tokenizer (*optional*):
            The CLIP tokenizer for `class_names`; loaded from `model` when it is a name.
        from_pretrained_kwargs:
            Passed to `from_pretrained` (`token`, `cache_dir`, `torch_dtype`, ...).

    Returns:
        The explaining model ([`ExplainingCLIPForImageClassification`] or [`SelfExplainingCLIPVision`]) in eval mode,
        whose forward gives `logits` (the classifier's own) and `patch_attributions`. `config._name_or_path` says
        where it came from and, for a Hub repo, `config._commit_hash` the commit `revision` resolved to (all its
        files come from that commit). A model object's commit is not known (transformers 5 does not record it).

    Raises:
        [`~hf_explvec.MissingHeadError`] (a `ValueError`): a checkpoint without its head. `TypeError`: a model
        class the explaining classes do not support.
        `FileNotFoundError` / [`~hf_explvec.hub.HubConnectionError`]: the model cannot be found or downloaded.
    """
    from .classifier import explaining_model

    commit = None
    hub_kwargs = {key: from_pretrained_kwargs[key] for key in _HUB_KWARGS if key in from_pretrained_kwargs}
    if _is_name(model):
        name = str(model)
        revision, commit = _resolve_revision(name, revision, from_pretrained_kwargs)
        if class_names is not None:
            with _model_errors(name, revision):
                loaded = CLIPModel.from_pretrained(
                    name, revision=revision, **{"use_safetensors": True, **from_pretrained_kwargs}
                )
                if tokenizer is None:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, **hub_kwargs)
        else:
            loaded = _load_classifier(name, revision, from_pretrained_kwargs)
        if commit is not None:
            _fetch_image_processor(name, commit, hub_kwargs)
    elif isinstance(model, nn.Module):
        if revision is not None or from_pretrained_kwargs:
            raise TypeError(
                "revision and from_pretrained arguments only apply when model is a name or path, got a "
                f"{type(model).__name__} object."
            )
        loaded = model
    else:
        raise TypeError(f"model must be a Hub repo id, a local folder or an nn.Module, got {type(model).__name__}.")
    explaining = explaining_model(loaded, class_names=class_names, tokenizer=tokenizer)
    source = getattr(loaded, "config", None)
    if explaining is not loaded and source is not None:  # keep where the weights came from (and the processor is)
        explaining.config._name_or_path = getattr(source, "_name_or_path", "") or explaining.config._name_or_path
    if commit is not None:  # transformers 5 no longer records the commit a model was loaded from
        explaining.config._commit_hash = commit  # not serialised; read by apply_vector and explain's processor lookup
        if getattr(explaining.config, "classifier_revision", commit) is None:
            explaining.config.classifier_revision = commit
    return explaining.eval()


def _load_vector(vector, revision: str | None, hub_kwargs: dict) -> tuple[TaskVector, str | None]:
    """The vector and its id (the name it was loaded by: `TaskVector.name_or_path` for an object)."""
    if isinstance(vector, TaskVector):
        if revision is not None:
            raise TypeError("revision only applies when vector is a name or path, got a TaskVector object.")
        return vector, getattr(vector, "name_or_path", None)
    if _is_name(vector):
        return TaskVector.from_pretrained(str(vector), revision=revision, **hub_kwargs), str(vector)
    raise TypeError(f"vector must be a Hub repo id, a local folder or a TaskVector, got {type(vector).__name__}.")


def apply_vector(
    model: nn.Module,
    vector,
    lam: float | None = None,
    *,
    revision: str | None = None,
    check_base: bool = True,
    **hub_kwargs,
) -> nn.Module:
    r"""
    Add λ·τ to an explaining model, in place, and record the provenance in `model.config.explainability`.

    Args:
        model (`nn.Module`):
            An explaining model (from [`load_explaining_model`], or any model with a CLIP vision tower and a config).
            A model that already has a vector applied is refused: [`remove_vector`] first.
        vector (`str`, `os.PathLike` or [`TaskVector`]):
            The vector, or its Hub repo id or folder.
        lam (`float`, *optional*):
            λ; the vector's `recommended_lam` when not given.
        revision (`str`, *optional*):
            Branch, tag or commit of `vector` (when it is a name).
        check_base (`bool`, *optional*, defaults to `True`):
            Refuse a model that does not descend from the vector's base (see [`TaskVector.apply_to`]).
        hub_kwargs:
            Passed to [`TaskVector.from_pretrained`] (`token`, `cache_dir`, `local_files_only`, ...).

    Returns:
        `model`, edited.

    Raises:
        [`~hf_explvec.base_check.BaseModelMismatchError`] (a `ValueError`): `model` does not descend from the
        vector's base, which it names. `ValueError`: no `lam` and no `recommended_lam`, a non-finite λ, a model that
        already has a vector. On any error the model is left as it was.
    """
    vector, vector_id = _load_vector(vector, revision, hub_kwargs)
    return _apply(model, vector, vector_id, lam, check_base)


def _apply(model: nn.Module, vector: TaskVector, vector_id: str | None, lam, check_base: bool) -> nn.Module:
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise TypeError(f"apply_vector takes a model with a config, got {type(model).__name__}.")
    applied = getattr(model.config, "explainability", None)
    if applied:
        raise ValueError(
            f"this model already has the vector {applied.get('vector') or '(in memory)'} applied with "
            f"λ={applied.get('lam')}: call hf_explvec.remove_vector(model) first."
        )
    lam = _check_lam(lam, vector, vector_id)
    vector.apply_to(model, lam, check_base=check_base)
    config = model.config
    model.config.explainability = {
        "model": getattr(config, "_name_or_path", None) or getattr(config, "classifier_name_or_path", None) or None,
        "model_revision": getattr(config, "_commit_hash", None) or getattr(config, "classifier_revision", None),
        "vector": vector_id,
        "vector_revision": vector.commit_hash,
        "lam": lam,
    }
    return model


def from_pretrained_with_vector(
    model,
    vector,
    *,
    revision: str | None = None,
    model_revision: str | None = None,
    lam: float | None = None,
    check_base: bool = True,
    class_names: list[str] | None = None,
    tokenizer=None,
    **from_pretrained_kwargs,
) -> nn.Module:
    r"""
    Your classifier with an explainability vector applied, from their names: the one call of the practitioner path.

    Loads `model` ([`load_explaining_model`]), loads `vector` at `revision`, checks that the model descends from the
    vector's base, adds λ·τ and records `{"model", "model_revision", "vector", "vector_revision", "lam"}` (the
    revisions as commit hashes when loaded from the Hub) in `config.explainability`. [`remove_vector`] undoes it.

    Args:
        model (`str`, `os.PathLike` or `nn.Module`):
            The classifier: a Hub repo id or folder of a `CLIPForImageClassification` (or of a `CLIPModel` with
            `class_names`, or of a [`SelfExplainingCLIPVision`]), or such a model. A model object is not modified
            unless its explaining twin shares its weights (a [`SelfExplainingCLIPVision`] is its own twin).
        vector (`str`, `os.PathLike` or [`TaskVector`]):
            The explainability vector, or its Hub repo id or folder.
        revision (`str`, *optional*):
            Branch, tag or commit of `vector` (as in peft, `revision` is the adapter's).
        model_revision (`str`, *optional*):
            Branch, tag or commit of `model`.
        lam (`float`, *optional*):
            λ; the vector's `recommended_lam` when not given (an error if it has none).
        check_base (`bool`, *optional*, defaults to `True`):
            Refuse a model that does not descend from the vector's base.
        class_names (`list[str]`, *optional*):
            Classes of a zero-shot `CLIPModel`.
        tokenizer (*optional*):
            Its tokenizer (loaded from `model` by default).
        from_pretrained_kwargs:
            Passed to the model's `from_pretrained`; `token`, `cache_dir`, `force_download` and `local_files_only`
            also to the vector's.

    Returns:
        The explained model, in eval mode: `model(pixel_values)` gives `logits` and `patch_attributions`; it saves,
        pushes and loads like any transformers model (after `import hf_explvec`).

    Raises:
        [`~hf_explvec.base_check.BaseModelMismatchError`] (a `ValueError`): the model does not descend from the
        vector's base (named). `ValueError`: a checkpoint without its classification head, no λ. `FileNotFoundError`
        / [`~hf_explvec.hub.HubConnectionError`]: a name that cannot be found or downloaded.

    Example:

    ```python
    >>> import hf_explvec
    >>> model = hf_explvec.from_pretrained_with_vector("me/my-classifier", "org/imagenet-explain")
    >>> model.config.explainability["lam"]
    0.5
    ```
    """
    hub_kwargs = {key: from_pretrained_kwargs[key] for key in _HUB_KWARGS if key in from_pretrained_kwargs}
    loaded_vector, vector_id = _load_vector(vector, revision, hub_kwargs)  # before the model: cheaper to fail
    _check_lam(lam, loaded_vector, vector_id)
    user_module = model if isinstance(model, nn.Module) else None
    explained = load_explaining_model(
        model, revision=model_revision, class_names=class_names, tokenizer=tokenizer, **from_pretrained_kwargs
    )
    if user_module is not None and explained is not user_module and _shares_weights(explained, user_module):
        raise ValueError(
            f"the explaining twin of this {type(user_module).__name__} shares its weights; applying the vector would "
            "edit your model: pass a copy, or its name."
        )
    return _apply(explained, loaded_vector, vector_id, lam, check_base)


def _shares_weights(a: nn.Module, b: nn.Module) -> bool:
    pointers = {p.data_ptr() for p in b.parameters()}
    return any(p.data_ptr() in pointers for p in a.parameters())


def remove_vector(model: nn.Module, vector=None, **hub_kwargs) -> nn.Module:
    r"""
    Undo [`apply_vector`] / [`from_pretrained_with_vector`]: subtract the recorded λ·τ, in place, and clear
    `config.explainability`. The weights come back to the original ones up to float rounding.

    Args:
        model (`nn.Module`):
            An explained model (also one loaded back from the Hub: its `config.explainability` says which vector).
        vector (`str`, `os.PathLike` or [`TaskVector`], *optional*):
            The vector that was applied. By default it is loaded by the id and revision in `config.explainability`;
            give it when it was applied from memory (no id recorded), or to avoid the download (then it must come
            from the recorded id, and from the recorded revision when both are known).
        hub_kwargs:
            Passed to [`TaskVector.from_pretrained`].

    Returns:
        `model`, with the vector removed.

    Raises:
        `ValueError`: the model has no vector applied, the recorded vector has no id and none was given, or the
        given vector does not come from the recorded id or revision. On any error the model is left as it was.
    """
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise TypeError(f"remove_vector takes a model with a config, got {type(model).__name__}.")
    applied = getattr(model.config, "explainability", None)
    if not applied:
        raise ValueError("this model has no explainability vector applied (config.explainability is empty).")
    recorded_id, recorded_revision = applied.get("vector"), applied.get("vector_revision")
    if vector is None:
        if recorded_id is None:
            raise ValueError(
                "the vector was applied from memory (config.explainability records no id): pass it, "
                "remove_vector(model, vector)."
            )
        vector = TaskVector.from_pretrained(recorded_id, revision=recorded_revision, **hub_kwargs)
    else:
        vector, _ = _load_vector(vector, None, hub_kwargs)
        if recorded_id is not None and vector.name_or_path != recorded_id:
            raise ValueError(
                f"{recorded_id} was applied, but the vector given comes from "
                f"{vector.name_or_path or 'memory (no name)'}: removing it would not restore the model. Pass "
                f"{recorded_id!r}, or nothing to load it."
            )
        if recorded_revision and vector.commit_hash and vector.commit_hash != recorded_revision:
            raise ValueError(
                f"the vector given is at revision {vector.commit_hash}, but revision {recorded_revision} of "
                f"{recorded_id} was applied: removing it would not restore the model."
            )
    lam = applied.get("lam")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam):
        raise ValueError(f"config.explainability records no valid λ (lam={lam!r}): cannot undo the vector.")
    vector.apply_to(model, -lam, check_base=False)
    model.config.explainability = None
    return model


class ImageExplanationPipeline(ImageClassificationPipeline):
    r"""
    transformers' image-classification pipeline for explaining models: each returned label also carries its patch
    attributions, a `grid_size × grid_size` list of lists (row-major), in the units of the model's logit.

    After `import hf_explvec` it is registered under the task `"image-explanation"`:

    ```python
    >>> from transformers import pipeline
    >>> explainer = pipeline("image-explanation", model="me/my-classifier-explained")
    >>> explainer("cat.png", top_k=1)
    [{'label': 'cat', 'score': 0.93, 'attributions': [[0.01, ...], ...]}]
    ```

    The model must return `patch_attributions` of shape `(batch_size, num_labels, num_patches)`
    ([`SelfExplainingCLIPVision`], [`ExplainingCLIPForImageClassification`]); a plain classifier is refused.
    """

    def _forward(self, model_inputs):
        outputs = self.model(**model_inputs)
        if getattr(outputs, "patch_attributions", None) is None:
            raise ValueError(
                f"{type(self.model).__name__} returns no patch_attributions: the image-explanation pipeline needs an "
                "explaining model (hf_explvec.from_pretrained_with_vector, or a model pushed by hf-explvec apply)."
            )
        return outputs

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5):
        scores = super().postprocess(model_outputs, function_to_apply=function_to_apply, top_k=top_k)
        attributions = model_outputs["patch_attributions"][0].float()
        num_patches = attributions.shape[-1]
        grid = math.isqrt(num_patches)
        label2id = {label: i for i, label in self.model.config.id2label.items()}
        for entry in scores:
            entry["attributions"] = attributions[label2id[entry["label"]]].reshape(grid, grid).tolist()
        return scores


def register_pipeline() -> None:
    """Register [`ImageExplanationPipeline`] as `pipeline("image-explanation", ...)` (done by `import hf_explvec`)."""
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=ImageExplanationPipeline,
        pt_model=AutoModelForImageClassification,
        type="image",
    )


__all__ = [
    "PIPELINE_TASK",
    "ImageExplanationPipeline",
    "apply_vector",
    "from_pretrained_with_vector",
    "load_explaining_model",
    "register_pipeline",
    "remove_vector",
]
