"""The Hub cards of hf_explvec: one module for models, task vectors and data sets.

Each card is rendered from a Jinja template in `hub_cards/` (shipped as `hf_explvec.hub_cards`; templates hold the
body only) with huggingface_hub's `ModelCard` / `DatasetCard`. The YAML front matter is written here, once, from a
`CardData`. A card we generate ends with a marker holding the SHA-256 of its body. When pushing again, a remote README
whose body still matches its marker is ours, unedited, and is regenerated; any other README (one the user wrote or
edited) keeps its body and only gets its metadata updated ([`merge_cards`]).

Builders: [`model_card`] (the config of a [`SelfExplainingCLIPVision`] or an
[`ExplainingCLIPForImageClassification`]), [`vector_card`] (a [`TaskVector`]'s provenance
and layout) and [`dataset_card`] (a SHAP-labelled data set). They take plain values, so this module imports neither
the model nor the vector code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

from huggingface_hub import CardData, DatasetCard, DatasetCardData, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

LIBRARY_NAME = "hf_explvec"
BASE_TAGS = ["hf_explvec", "explainability", "task-arithmetic", "clip"]
FRONT_MATTER = "---\n{{ card_data }}\n---\n\n"
_MARKER = re.compile(r"\n?<!-- hf_explvec card sha256=([0-9a-f]{64}) -->\s*$")


def template_path(name: str) -> Path:
    """Path of a card template shipped in `hf_explvec.hub_cards` (`task_vector`, `self_explaining_model`,
    `shap_dataset`).

    Raises:
        `KeyError`: no template of that name.
    """
    path = files("hf_explvec.hub_cards").joinpath(f"{name}.md")
    if not path.is_file():
        raise KeyError(f"no card template named {name!r} in hf_explvec.hub_cards.")
    return Path(str(path))


def body_hash(body: str) -> str:
    """SHA-256 of a card body (surrounding whitespace ignored), as written in the marker."""
    return hashlib.sha256(body.strip().encode()).hexdigest()


def render_card(template: str, card_data: CardData, card_class=ModelCard, **context):
    r"""
    Render the body template `template` under YAML front matter made from `card_data`, and mark it as ours.

    Args:
        template (`str`): Name of a template in `hf_explvec.hub_cards`.
        card_data (`huggingface_hub.CardData`): The metadata (front matter).
        card_class (`type`, *optional*, defaults to `ModelCard`): `ModelCard` or `DatasetCard`.
        context: Variables of the template.

    Returns:
        A `card_class` instance whose text ends with the marker.
    """
    body_template = template_path(template).read_text(encoding="utf-8")
    card = card_class.from_template(card_data, template_str=FRONT_MATTER + body_template, **context)
    body = card.text.strip()
    card.text = f"{body}\n\n<!-- hf_explvec card sha256={body_hash(body)} -->\n"
    return card


def is_unedited_generated(card) -> bool:
    """Whether `card` is one we generated and nobody edited since (its body matches its marker)."""
    match = _MARKER.search(card.text)
    return bool(match) and body_hash(card.text[: match.start()]) == match.group(1)


def merge_cards(new_card, remote_card):
    """The card to push when `remote_card` is already on the Hub: `new_card` if the remote one is our unedited
    card (or there is none); otherwise the remote body with its metadata updated by `new_card`'s (tags merged)."""
    if remote_card is None or is_unedited_generated(remote_card):
        return new_card
    metadata = remote_card.data.to_dict()
    new_metadata = new_card.data.to_dict()
    tags = list(dict.fromkeys((metadata.get("tags") or []) + (new_metadata.get("tags") or [])))
    metadata.update({k: v for k, v in new_metadata.items() if v is not None})
    metadata["tags"] = tags
    merged = type(remote_card)(remote_card.content)
    merged.data = type(remote_card.data)(**metadata)
    logger.info("kept the README already on the Hub (it was written or edited by hand); updated its metadata.")
    return merged


def _hub_name(name_or_path: str | None) -> str | None:
    """`name_or_path` if it can be a Hub repo id (metadata such as `base_model` must not name a local folder)."""
    return name_or_path if name_or_path and not os.path.isdir(name_or_path) else None


SELF_EXPLAINING_MODEL_TYPE = "self_explaining_clip_vision"
"""`model_type` of [`SelfExplainingCLIPVisionConfig`]; any other config is an explaining linear classifier."""


def _explained_metadata(config) -> tuple[list[str] | str | None, str | None, dict | None]:
    """`base_model`, `base_model_relation` and the provenance record of an explained model (vector applied)."""
    record = getattr(config, "explainability", None) or None
    if record is None:
        return None, None, None
    bases = [name for name in (_hub_name(record.get("model")), _hub_name(record.get("vector"))) if name]
    if len(bases) == 2:
        return bases, "merge", record
    return (bases[0] if bases else None), None, record


def model_card(config, repo_id: str | None = None, eval_results=None) -> ModelCard:
    r"""
    The card of an explaining model: a [`SelfExplainingCLIPVision`] (`hub_cards/self_explaining_model.md`) or an
    [`ExplainingCLIPForImageClassification`] (`hub_cards/explaining_classifier.md`).

    When an explainability vector was applied (`config.explainability`, written by
    [`hf_explvec.from_pretrained_with_vector`]), the metadata says `base_model: [the model, the vector]` and
    `base_model_relation: merge` (Hub names only; a local folder is left out, and with one name left the relation is
    not stated), and the text names the model, the vector, their revisions and λ.

    Args:
        config ([`SelfExplainingCLIPVisionConfig`] or [`ExplainingCLIPForImageClassificationConfig`]): The model's
            config (class names, patch grid, provenance).
        repo_id (`str`, *optional*): Where the model lives, for the usage snippet.
        eval_results (`list[huggingface_hub.EvalResult]`, *optional*): Written as `model-index` metadata.
    """
    base_model, relation, record = _explained_metadata(config)
    self_explaining = getattr(config, "model_type", None) == SELF_EXPLAINING_MODEL_TYPE
    if self_explaining:
        source = config.clip_name_or_path
        tags = ["self-explaining", "image-classification"]
    else:
        source = getattr(config, "classifier_name_or_path", None)
        tags = ["explaining-classifier", "image-classification"]
    if base_model is None:
        base_model = _hub_name(source)
    extra = {"base_model_relation": relation} if relation else {}
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag="image-classification",
        tags=BASE_TAGS + tags + (["explainability-vector-applied"] if record else []),
        base_model=base_model,
        eval_results=eval_results,
        model_name=repo_id if eval_results else None,
        **extra,
    )
    names = list(config.class_names)
    vision = config.vision_config
    return render_card(
        "self_explaining_model" if self_explaining else "explaining_classifier",
        data,
        title=f"{'Self-explaining' if self_explaining else 'Explaining'} CLIP classifier {repo_id or ''}".strip(),
        repo_id=repo_id or "path/to/this/model",
        clip_name_or_path=source,  # self_explaining_model.md
        classifier_name_or_path=source,  # explaining_classifier.md
        classifier_revision=getattr(config, "classifier_revision", None),
        num_classes=len(names),
        class_preview=", ".join(names[:10]) + (f", … ({len(names) - 10} more)" if len(names) > 10 else ""),
        num_patches=config.num_patches,
        grid_size=config.grid_size,
        patch_size=vision.patch_size,
        image_size=vision.image_size,
        alpha=getattr(config, "alpha", None),
        explainability=record,
    )


def vector_card(
    provenance: Mapping, layout: Mapping, repo_id: str | None = None, revision: str | None = None
) -> ModelCard:
    r"""
    The card of a task vector (`hub_cards/task_vector.md`).

    Its metadata names the vector's base model as `base_model` with `base_model_relation: adapter` (the Hub's relation
    for weights that are added to a base), when the base is a Hub name. The body reports the storage format and the
    size of the weights on disk next to the dense size, and how the vector was compressed or merged.

    Args:
        provenance (`Mapping`): The fields of its [`TaskVectorConfig`] (`base_model`, `source_dataset`,
            `recommended_lam`, `sparsify_method`, `density`, `rank`, `merge`, ...).
        layout (`Mapping`): `num_parameters`, `num_tensors`, `dtype` and `fingerprint` of the weights, and their
            storage `format` and `storage_bytes` when known.
        repo_id (`str`, *optional*): Where the vector lives, for the usage snippet.
        revision (`str`, *optional*): The branch it is pushed to, for the usage snippet.
    """
    lam = provenance.get("recommended_lam")
    base_model = _hub_name(provenance.get("base_model"))
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=BASE_TAGS + ["task-vector", "explainability-vector"],
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        datasets=[provenance["source_dataset"]] if provenance.get("source_dataset") else None,
    )
    return render_card(
        "task_vector",
        data,
        title=f"Explainability vector {repo_id or ''}".strip(),
        repo_id=repo_id or "path/to/this/vector",
        revision=revision,
        lam=lam if lam is not None else 1.0,
        num_parameters=f"{layout['num_parameters']:,}",
        num_tensors=layout["num_tensors"],
        dtype=layout["dtype"],
        fingerprint=layout["fingerprint"],
        storage=_storage_description(provenance, layout),
        compressed=layout.get("format", "dense") != "dense",
        merged_from=_merge_description(provenance.get("merge")),
        **provenance,
    )


_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _format_bytes(n: int) -> str:
    """`n` bytes as B, kB, MB or GB (powers of 1000, as the Hub shows file sizes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _storage_description(provenance: Mapping, layout: Mapping) -> str:
    """E.g. `sparse (magnitude, density 0.1): 17.4 kB of weights on disk, 4.8× smaller than dense (83.8 kB)`."""
    storage_format = layout.get("format", "dense")
    how = []
    if provenance.get("sparsify_method"):
        how.append(f"{provenance['sparsify_method']}, density {provenance.get('density')}")
    if provenance.get("rank"):
        how.append(f"rank {provenance['rank']}")
    text = storage_format.replace("_", "-") + (f" ({'; '.join(how)})" if how else "")
    nbytes = layout.get("storage_bytes")
    if nbytes is None:
        return text
    text += f": {_format_bytes(nbytes)} of weights on disk"
    dense = layout["num_parameters"] * _DTYPE_BYTES.get(layout["dtype"], 4)
    if storage_format != "dense" and nbytes:
        text += f", {dense / nbytes:.1f}× smaller than dense ({_format_bytes(dense)})"
    return text


def _merge_description(merge: Mapping | None) -> str | None:
    """E.g. `ties (density 0.2) of org/a@1a2b… (weight 1.0), not recorded (weight 0.5)`, or `None`."""
    if not merge:
        return None
    sources = [
        f"{source or 'not recorded'} (weight {weight})"
        for source, weight in zip(merge["sources"], merge["weights"], strict=True)
    ]
    density = f" (density {merge['density']})" if merge.get("density") is not None else ""
    return f"{merge['method']}{density} of {', '.join(sources)}"


def dataset_card(repo_id: str, provenance: dict, columns: str, remote_card=None) -> DatasetCard:
    r"""
    The card of a SHAP-labelled data set (`hub_cards/shap_dataset.md`), on top of `remote_card`, the README that
    `Dataset.push_to_hub` just wrote: its metadata (`dataset_info`, `configs`, which `load_dataset` needs, and any
    other key) is kept and ours added (`library_name`, tags, `shap_provenance`); a body someone wrote is kept.

    Args:
        repo_id (`str`): The data set repo.
        provenance (`dict`): How the SHAP values were computed (model, N, seed, baseline, ...).
        columns (`str`): Markdown list describing the columns.
        remote_card (`DatasetCard`, *optional*): The README already in the repo.
    """
    remote_metadata = remote_card.data.to_dict() if remote_card is not None else {}
    tags = list(dict.fromkeys((remote_metadata.get("tags") or []) + BASE_TAGS + ["kernel-shap"]))
    metadata = {
        **remote_metadata,
        "library_name": LIBRARY_NAME,
        "tags": tags,
        "task_categories": remote_metadata.get("task_categories") or ["image-classification"],
        "shap_provenance": provenance,
    }
    card = render_card(
        "shap_dataset",
        DatasetCardData(**metadata),
        card_class=DatasetCard,
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        columns=columns,
        provenance=provenance,
    )
    # push_to_hub writes a README with metadata only: an empty body is nobody's text, so ours replaces it.
    keep = remote_card if remote_card is not None and remote_card.text.strip() else None
    return merge_cards(card, keep)


__all__ = [
    "BASE_TAGS",
    "FRONT_MATTER",
    "LIBRARY_NAME",
    "body_hash",
    "dataset_card",
    "is_unedited_generated",
    "merge_cards",
    "model_card",
    "render_card",
    "template_path",
    "vector_card",
]
