"""SHAP-labelled splits: Kernel SHAP patch attributions as a `datasets` column, resumable and multi-process.

[`label_dataset`] adds to a data set of images and labels the columns

- `shap_values`: `List(Value("float32"), length=M)` (`Sequence` in older `datasets`), the Kernel SHAP value of each
  of the `M` patches (row-major over the patch grid) for the explained class;
- `shap_target`: `Value("int64")`, the explained class (the label, or the model's prediction).

How a run is made reproducible, resumable and parallel:

- **Provenance and fingerprint.** Every setting that changes the values (model name, revision and a SHA-256 of its
  weights, explainer, `num_samples`, `seed`, `baseline`, `value`, target mode, patch size, `M`) is recorded in a
  provenance dict. The run's fingerprint is [`datasets.fingerprint.Hasher`] over that provenance, the input data
  set's `_fingerprint`, the columns, the forward `batch_size` and the image processor's configuration. It names the
  default output directory, so a second call with the same arguments computes nothing, and it is the labelled
  dataset's `_fingerprint` (passed as `new_fingerprint`, never derived from a closure). The columns are attached with
  `Dataset.add_column`, which concatenates them to the existing Arrow table: unlike `Dataset.map`, it does not
  rewrite the images into a new cache file, and the shard store is a cache for in-memory and streamed data sets too.
- **Per-example seeds.** Example `i` is explained alone with the seed `example_seed(seed, i)`, so its values depend
  neither on batching, nor on sharding, nor on the number of processes.
- **Shards.** Values are written shard by shard to `output_dir` (see [`~hf_explvec.data.shards.ShardStore`]),
  atomically; a killed job restarted with the same arguments skips the finished shards.
- **Processes.** Under `accelerate launch`, process `r` of `P` labels shards `r, r + P, r + 2P, ...`; after a barrier
  every process reads all shards and returns the whole labelled data set, in the original order.

[`load_split`] loads a split by name (any `datasets.load_dataset` source, the Hub included) and
[`push_shap_dataset`] pushes a labelled data set with `Dataset.push_to_hub`, then writes hf_explvec's card on top of
the metadata `datasets` wrote (`hub_cards/shap_dataset.md`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets.fingerprint import Hasher
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from huggingface_hub.errors import HfHubHTTPError

from ..attribution import (
    VALUE_OPTIONS,
    make_baseline,
    min_num_samples,
    patch_kernel_shap,
)
from ..attribution.vit import model_kernel_shap
from ..hub import (
    BASE_TAGS,
    LIBRARY_NAME,
    describe_repo,
    load_remote_card,
    merge_cards,
    raise_hub_error,
    render_card,
)
from ..modeling import SelfExplainingCLIPVision
from .shards import (
    SHAP_COLUMNS,
    STORE_FORMAT,
    ShardStore,
    _check_labels,
    _compute_shards,
    _forward_of,
    _preprocess,
    _resolve_subject,
    _rows_sha256,
    _Run,
    _to_rgb,
    example_seed,
    weights_fingerprint,
)

__all__ = [
    "Explainer",
    "image_processor_for",
    "default_explainer",
    "example_seed",
    "label_dataset",
    "load_split",
    "push_shap_dataset",
    "shap_dataset_card",
    "shap_provenance",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

TARGET_OPTIONS = ("label", "prediction")
_PROVENANCE_LINE = "hf_explvec SHAP provenance: "

Explainer = Callable[..., torch.Tensor]
"""`explainer(pixel_values, target, *, num_samples, baseline, batch_size, seed, value) -> values`: explains images
`(B, C, H, W)` for classes `(B,)` and returns `(B, M)` patch values; [`patch_kernel_shap`] with the forward function
and patch size bound is one."""


# -- model and explainer ------------------------------------------------------------------------------------------
def default_explainer(model_or_forward_fn, *, patch_size: int) -> Explainer:
    """The explainer [`label_dataset`] uses when none is given. For a [`SelfExplainingCLIPVision`] whose patch grid
    is `patch_size`: [`model_kernel_shap`], which masks at the patch-embedding level (the same values as painting the
    baseline, without running the patch embedding per coalition). Otherwise [`patch_kernel_shap`] over the model's
    forward (`model(pixel_values=x).logits`) or the given forward function, absent patches painted with the
    baseline."""
    if isinstance(model_or_forward_fn, SelfExplainingCLIPVision) and (
        model_or_forward_fn.config.vision_config.patch_size == patch_size
    ):
        return functools.partial(model_kernel_shap, model_or_forward_fn)
    return functools.partial(patch_kernel_shap, _forward_of(model_or_forward_fn), patch_size=patch_size)


def _explainer_name(explainer: Explainer) -> str:
    func = explainer
    while isinstance(func, functools.partial):
        func = func.func
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__qualname__)}"


def _check_columns(dataset, image_column: str, label_column: str | None) -> None:
    names = dataset.column_names
    if names is None:  # a stream whose features are unknown: checked on the first row
        names = list(next(iter(dataset.with_format(None))).keys())
    for role, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in names:
            raise ValueError(f"{role}={column!r} is not a column of the data set; its columns are {names}")
    clash = [c for c in SHAP_COLUMNS if c in names]
    if clash:
        raise ValueError(f"the data set already has column(s) {clash}; remove them first (dataset.remove_columns)")


def image_processor_for(model, name_or_path: str | None = None, **kwargs):
    """The image processor of a model: the one saved with it (`preprocessor_config.json` in `name_or_path`), else
    a `CLIPImageProcessor` with CLIP's normalisation that resizes and center-crops to the model's image size."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    if name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        except OSError:
            logger.info("no image processor saved with %s; using CLIP's, sized to the model", name_or_path)
    size = model.config.vision_config.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# -- the public function -------------------------------------------------------------------------------------------
def label_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    model_or_forward_fn: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image_processor,
    *,
    image_column: str = "image",
    label_column: str | None = "label",
    target: str = "label",
    num_samples: int = 500,
    baseline: float | str | torch.Tensor = 0.0,
    value: str = "logit",
    seed: int = 0,
    batch_size: int = 64,
    patch_size: int | None = None,
    model_id: str | None = None,
    model_revision: str | None = None,
    explainer: Explainer | None = None,
    output_dir: str | Path | None = None,
    shard_size: int = 64,
    resume: bool = True,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""Add Kernel SHAP patch attributions to a data set of images: columns `shap_values` and `shap_target`.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): images and labels. An `IterableDataset` must
            iterate in a fixed order (not shuffled); it is read once per process.
        model_or_forward_fn (`torch.nn.Module` or `Callable`): the classifier, e.g. a [`SelfExplainingCLIPVision`]
            or `CLIPForImageClassification` (called as `model(pixel_values=x).logits`, in eval mode, on its device;
            under `accelerate launch` on GPUs, move it to `PartialState().device` first), or any function mapping
            images `(N, C, H, W)` to class scores `(N, num_classes)`.
        image_processor (`CLIPImageProcessor` or any callable `(images=..., return_tensors="pt")`): turns RGB PIL
            images into `pixel_values` `(B, C, H, W)`. Images of any size and mode (`"L"`, `"P"`, `"RGBA"`, ...)
            are converted to RGB first (alpha is dropped), then resized and cropped by the processor.
        image_column (`str`, *optional*, defaults to `"image"`): column of images (decoded, `{"bytes", "path"}`,
            or uint8 arrays).
        label_column (`str`, *optional*, defaults to `"label"`): column of int class indices; may be `None` with
            `target="prediction"`.
        target (`str`, *optional*, defaults to `"label"`): the explained class: `"label"` or `"prediction"` (the
            model's argmax on the full image).
        num_samples (`int`, *optional*, defaults to 500): forward passes per image (at least `2 M`).
        baseline (`float`, `str` or `torch.Tensor`, *optional*, defaults to 0.0): what absent patches become, see
            [`~hf_explvec.attribution.make_baseline`] (0.0 is the mean pixel after CLIP normalisation).
        value (`str`, *optional*, defaults to `"logit"`): `"logit"`, `"log_prob"` or `"prob"` of the target.
        seed (`int`, *optional*, defaults to 0): run seed; example `i` uses [`example_seed`]`(seed, i)`.
        batch_size (`int`, *optional*, defaults to 64): masked images per forward call.
        patch_size (`int`, *optional*): patch side in pixels; read from the model's config when not given
            (required with a forward function).
        model_id, model_revision (`str`, *optional*): how the provenance names the model; default to the config's
            `_name_or_path` and `_commit_hash`. `model_id` is required with a forward function.
        explainer (`Callable`, *optional*): `explainer(pixel_values (1, C, H, W), target (1,), *, num_samples,
            baseline, batch_size, seed, value) -> (1, M)`; defaults to [`default_explainer`]. Its qualified name is
            part of the provenance and fingerprint.
        output_dir (`str` or `Path`, *optional*): where the shards go; defaults to
            `<HF_DATASETS_CACHE>/hf_explvec_shap/<fingerprint>`.
        shard_size (`int`, *optional*, defaults to 64): rows per shard (the unit of resumption and of work split
            between processes). Resuming adopts the shard size recorded in `output_dir`.
        resume (`bool`, *optional*, defaults to `True`): skip the finished shards of an interrupted run;
            `False` deletes them and starts over.
        device (`str` or `torch.device`, *optional*): where a forward function receives images (default CPU); a
            module's images go to the device of its parameters.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm bar on the main process.

    Returns:
        The data set with `shap_values` (`List(Value("float32"), length=M)`) and `shap_target` (`Value("int64")`)
        added, on every process: a `Dataset` whose `_fingerprint` is the run's fingerprint and whose
        `info.description` ends with the provenance (see [`shap_provenance`]); for an `IterableDataset` input, an
        `IterableDataset` that adds the stored values to each row.

    Raises:
        `TypeError`: a wrong argument type; labels or images of an unusable type.
        `ValueError`: a missing column, an existing `shap_values` column, a label outside `[0, num_classes)`, a
            patch size that does not divide the processed image (or does not match the model's image size),
            `num_samples < 2 M`, an unknown option, or an `output_dir` of another run.
    """
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        raise TypeError(f"dataset must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}")
    if target not in TARGET_OPTIONS:
        raise ValueError(f"target must be one of {TARGET_OPTIONS}, got {target!r}")
    if value not in VALUE_OPTIONS:
        raise ValueError(f"value must be one of {VALUE_OPTIONS}, got {value!r}")
    for name, number in (("num_samples", num_samples), ("seed", seed), ("batch_size", batch_size)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{name} must be an int, got {type(number).__name__}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if target == "label" and label_column is None:
        raise ValueError('target="label" needs a label_column')
    _check_columns(dataset, image_column, label_column)
    subject = _resolve_subject(model_or_forward_fn, patch_size, model_id, model_revision, device)
    label_feature = (dataset.features or {}).get(label_column) if label_column is not None else None
    if isinstance(label_feature, datasets.ClassLabel):
        if subject.num_classes is None:
            subject.num_classes = label_feature.num_classes
            subject.num_classes_source = f"the ClassLabel of column {label_column!r}"
        elif subject.num_classes != label_feature.num_classes:
            logger.warning(
                "column %r has %d classes, the model %d: labels are checked against the model's",
                label_column, label_feature.num_classes, subject.num_classes,
            )  # fmt: skip
    streaming = isinstance(dataset, datasets.IterableDataset)
    if not streaming and len(dataset) == 0:
        raise ValueError("the data set is empty")

    pixel_shape, num_patches, first_sha = _measure(
        dataset, image_column, image_processor, subject, num_samples, baseline
    )
    p = subject.patch_size
    run = _Run(
        subject=subject,
        explainer=explainer if explainer is not None else default_explainer(model_or_forward_fn, patch_size=p),
        image_processor=image_processor,
        image_column=image_column,
        label_column=label_column,
        target=target,
        explainer_kwargs={"num_samples": num_samples, "baseline": baseline, "batch_size": batch_size, "value": value},
        seed=seed,
        pixel_shape=pixel_shape,
        num_patches=num_patches,
    )
    if not callable(run.explainer):
        raise TypeError(f"explainer must be callable, got {type(run.explainer).__name__}")
    if not streaming and label_column is not None:
        _check_labels(dataset.with_format(None)[label_column], 0, run)  # all at once, before any work

    provenance = _provenance(run, dataset, baseline, value, num_samples, seed, target)
    fingerprint = _fingerprint(run, dataset, provenance, image_processor, batch_size, first_sha)
    if output_dir is None:
        output_dir = Path(datasets.config.HF_DATASETS_CACHE) / "hf_explvec_shap" / fingerprint
    state = _process_state()
    store = _open_store(Path(output_dir), fingerprint, shard_size, num_patches, provenance, resume, state)

    module = subject.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        num_rows = _compute_shards(dataset, run, store, state, show_progress)
    finally:
        if module is not None:
            module.train(was_training)
    state.wait_for_everyone()
    values, targets = store.read(math.ceil(num_rows / store.shard_size), num_rows)
    return _attach(dataset, values, targets, fingerprint, provenance)


def _measure(dataset, image_column, image_processor, subject, num_samples, baseline) -> tuple[tuple, int, str]:
    """Preprocess the first image: its shape `(C, H, W)` fixes `M`. Checks the patch size, the model's image size,
    `num_samples` and the baseline, so that bad settings fail before any work. Returns the pixel shape, `M` and a
    hash of the first image (part of a stream's fingerprint)."""
    first = next(iter(dataset.select_columns([image_column]).with_format(None)), None)
    if first is None:
        raise ValueError("the data set is empty")
    image = _to_rgb(first[image_column], image_column, 0)
    pixels = _preprocess(image_processor, [image])
    height, width = pixels.shape[2:]
    p = subject.patch_size
    if height % p or width % p:
        raise ValueError(
            f"patch_size={p} does not divide the processed images of {height}x{width} pixels "
            f"(image_processor output {tuple(pixels.shape[1:])}); expected a divisor of both"
        )
    if subject.image_size is not None and (height, width) != (subject.image_size, subject.image_size):
        raise ValueError(
            f"image_processor gives {height}x{width} images but the model expects "
            f"{subject.image_size}x{subject.image_size}; set the processor's size / crop_size"
        )
    num_patches = (height // p) * (width // p)
    if num_samples < min_num_samples(num_patches):
        raise ValueError(
            f"num_samples={num_samples} is too small for M={num_patches} patches: need at least "
            f"{min_num_samples(num_patches)} (2 M)"
        )
    make_baseline(pixels, baseline, p)  # raises on an unknown option or a tensor of the wrong shape
    return tuple(pixels.shape[1:]), num_patches, _rows_sha256([image], None)


def _open_store(directory: Path, fingerprint, shard_size, num_patches, provenance, resume, state) -> ShardStore:
    """The main process prepares the directory (adopting the shard size of a run it resumes); then every process
    opens it with the recorded shard size."""
    if state.is_main_process:
        manifest = ShardStore.read_manifest(directory)
        if resume and manifest and manifest.get("fingerprint") == fingerprint:
            shard_size = int(manifest["shard_size"])
        ShardStore(directory, fingerprint, shard_size, num_patches).prepare(provenance, resume=resume)
    state.wait_for_everyone()
    recorded = int(ShardStore.read_manifest(directory)["shard_size"])
    if recorded != shard_size:
        logger.info("resuming with shard_size=%d, as recorded in %s", recorded, directory)
    return ShardStore(directory, fingerprint, recorded, num_patches)


def _process_state() -> PartialState:
    """Accelerate's process state. On a machine without CUDA, processes started by `accelerate launch` / torchrun
    (`WORLD_SIZE > 1`) join a CPU (gloo) group, as they do with `ACCELERATE_USE_CPU=1`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (world_size > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if world_size > state.num_processes:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but Accelerate started {state.num_processes} process group member(s); "
            "on CPU, launch with ACCELERATE_USE_CPU=1"
        )
    return state


def _provenance(run: _Run, dataset, baseline, value, num_samples, seed, target) -> dict:
    if isinstance(baseline, torch.Tensor):
        data = baseline.detach().to("cpu", torch.float32).contiguous()
        baseline = f"tensor{tuple(data.shape)} sha256:{hashlib.sha256(data.numpy().tobytes()).hexdigest()}"
    try:
        library_version = version("hf_explvec")
    except PackageNotFoundError:
        library_version = "unknown"
    return {
        **run.subject.identity,
        "explainer": _explainer_name(run.explainer),
        "num_samples": num_samples,
        "seed": seed,
        "baseline": baseline,
        "value": value,
        "target": target,
        "patch_size": run.subject.patch_size,
        "num_patches": run.num_patches,
        "image_size": list(run.pixel_shape[1:]),
        "image_processor": type(run.image_processor).__name__,
        "source_dataset": dataset.info.dataset_name or None,
        "hf_explvec_version": library_version,
    }


def _fingerprint(run: _Run, dataset, provenance: dict, image_processor, batch_size: int, first_sha: str) -> str:
    if isinstance(dataset, datasets.Dataset):
        source = dataset._fingerprint
    else:  # no fingerprint for a stream: its description and first image here; each shard checks its inputs' hash
        features = dataset.features.to_dict() if dataset.features is not None else None
        info = dataset.info
        source = {"stream": [info.dataset_name, info.config_name, str(dataset.split), features, first_sha]}
    to_json = getattr(image_processor, "to_json_string", None)
    processor = to_json() if callable(to_json) else repr(image_processor)
    key = {
        "format": STORE_FORMAT,
        "provenance": provenance,
        "source": source,
        "columns": [run.image_column, run.label_column],
        "batch_size": batch_size,
        "image_processor": processor,
    }
    text = json.dumps(key, sort_keys=True, default=str)
    logger.debug("fingerprint key: %s", text)
    return Hasher.hash(text)


def _attach(dataset, values: np.ndarray, targets: np.ndarray, fingerprint: str, provenance: dict):
    features = {
        "shap_values": datasets.List(datasets.Value("float32"), length=values.shape[1]),
        "shap_target": datasets.Value("int64"),
    }
    description = _with_provenance(dataset.info.description, provenance)
    if isinstance(dataset, datasets.Dataset):
        # add_column concatenates the new columns to the existing table: the images are not copied.
        labelled = dataset.add_column(
            "shap_values",
            values.tolist(),
            new_fingerprint=Hasher.hash([fingerprint, "shap_values"]),
            feature=features["shap_values"],
        )
        labelled = labelled.add_column(
            "shap_target", targets.tolist(), new_fingerprint=fingerprint, feature=features["shap_target"]
        )
    else:

        def add(batch, indices):
            return {"shap_values": values[indices].tolist(), "shap_target": targets[indices].tolist()}

        full = datasets.Features({**dataset.features, **features}) if dataset.features is not None else None
        labelled = dataset.map(add, with_indices=True, batched=True, features=full)  # info is copied
    labelled.info.description = description
    return labelled


def _with_provenance(description: str | None, provenance: dict) -> str:
    kept = [line for line in (description or "").splitlines() if not line.startswith(_PROVENANCE_LINE)]
    kept.append(_PROVENANCE_LINE + json.dumps(provenance, sort_keys=True))
    return "\n".join(kept).strip()


def shap_provenance(dataset) -> dict | None:
    """The provenance [`label_dataset`] recorded in `dataset.info.description` (kept by `save_to_disk`, `select`,
    `train_test_split`, ... and restored from the card by [`load_split`]), or `None`."""
    description = dataset.info.description or ""
    for line in reversed(description.splitlines()):
        if line.startswith(_PROVENANCE_LINE):
            return json.loads(line[len(_PROVENANCE_LINE) :])
    return None


# -- by name, and to the Hub ---------------------------------------------------------------------------------------
def _card_provenance(name_or_path: str, revision: str | None, token) -> dict | None:
    """`shap_provenance` from the card's metadata: the README of a local folder or of a Hub data set repo."""
    try:
        readme = Path(name_or_path) / "README.md"
        if Path(name_or_path).is_dir():
            card = DatasetCard(readme.read_text(encoding="utf-8")) if readme.is_file() else None
        else:
            card = load_remote_card(name_or_path, repo_type="dataset", revision=revision, token=token)
    except (OSError, ValueError) as error:  # best effort: the data loaded, only its card is unreadable
        logger.debug("no card read for %s: %s", name_or_path, error)
        return None
    provenance = card.data.to_dict().get("shap_provenance") if card is not None else None
    return provenance if isinstance(provenance, dict) else None


def load_split(
    name_or_path: str | Path,
    split: str = "train",
    *,
    revision: str | None = None,
    streaming: bool = False,
    token: str | bool | None = None,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""Load one split with `datasets.load_dataset`: a Hub repo id (the endpoint of `HF_ENDPOINT`, e.g. a
    [`~hf_explvec.testing.LocalHub`]), a local folder, or a packaged builder (`"imagefolder"`, `"parquet"`, ... with
    `data_files=`).

    When the card of a data set pushed by [`push_shap_dataset`] holds the SHAP provenance, it is put back into
    `info.description`, so [`shap_provenance`] works on the loaded split as on the one that was pushed.

    Args:
        name_or_path (`str` or `Path`): what `load_dataset` takes as `path`.
        split (`str`, *optional*, defaults to `"train"`): e.g. `"validation"`, `"train[:10%]"`.
        revision (`str`, *optional*): branch, tag or commit sha of a Hub repo.
        streaming (`bool`, *optional*, defaults to `False`): return an `IterableDataset`.
        token (`str` or `bool`, *optional*): Hub token.
        load_kwargs: more arguments for `datasets.load_dataset` (`name`, `data_files`, `num_proc`, ...).

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset` with `streaming=True`).

    Raises:
        `FileNotFoundError`: no such data set (naming the repo, the revision and the endpoint).
        `ValueError`: no such split (naming the splits there are).
    """
    name = str(name_or_path)
    try:
        dataset = datasets.load_dataset(
            name, split=split, revision=revision, streaming=streaming, token=token, **load_kwargs
        )
    except datasets.exceptions.DatasetNotFoundError as error:
        raise FileNotFoundError(f"data set not found: {describe_repo(name, 'dataset', revision)}: {error}") from error
    provenance = _card_provenance(name, revision, token)
    if provenance is not None and shap_provenance(dataset) is None:
        dataset.info.description = _with_provenance(dataset.info.description, provenance)
    return dataset


def _describe_columns(features: datasets.Features) -> str:
    lines = []
    for name, feature in features.items():
        if name == "shap_values":
            text = f"{feature.length} float32 Kernel SHAP values, one per patch, row-major over the patch grid"
        elif name == "shap_target":
            text = "the explained class (int)"
        elif isinstance(feature, datasets.ClassLabel):
            shown = ", ".join(feature.names[:10]) + (", ..." if feature.num_classes > 10 else "")
            text = f"class label, {feature.num_classes} classes ({shown})"
        else:
            text = type(feature).__name__ if not isinstance(feature, datasets.Value) else feature.dtype
        lines.append(f"- `{name}`: {text}")
    return "\n".join(lines)


def shap_dataset_card(dataset: datasets.Dataset, repo_id: str, provenance: dict, remote_card=None) -> DatasetCard:
    """hf_explvec's card for a SHAP-labelled data set (`hub_cards/shap_dataset.md`), on top of `remote_card`, the
    README `push_to_hub` just wrote: its metadata (`dataset_info`, `configs`, which `load_dataset` needs, and any
    other key) is kept and ours added (`library_name`, tags, `shap_provenance`); a body someone wrote is kept."""
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
        columns=_describe_columns(dataset.features),
        provenance=provenance,
    )
    # push_to_hub writes a README with metadata only: an empty body is nobody's text, so ours replaces it.
    keep = remote_card if remote_card is not None and remote_card.text.strip() else None
    return merge_cards(card, keep)


def push_shap_dataset(
    dataset: datasets.Dataset,
    repo_id: str,
    *,
    split: str | None = None,
    provenance: dict | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SHAP-labelled data set with hf_explvec",
    **push_kwargs,
):
    r"""Push a SHAP-labelled data set with `Dataset.push_to_hub`, then write hf_explvec's card over the README it
    made ([`shap_dataset_card`]): `load_dataset(repo_id)` works as for any pushed data set, and the card adds
    `library_name`, tags and the provenance (model, revision or weights hash, N, seed, baseline, value, target,
    patch size, M). A README someone wrote keeps its text; only its metadata is updated.

    Args:
        dataset (`datasets.Dataset`): with `shap_values` and `shap_target` columns, e.g. from [`label_dataset`].
        repo_id (`str`): `"org/name"` (or `"name"` in the token's namespace).
        split (`str`, *optional*): the split name (defaults to the data set's split, or `"train"`).
        provenance (`dict`, *optional*): defaults to [`shap_provenance`]`(dataset)`.
        private, token, revision: as for `push_to_hub`.
        commit_message (`str`, *optional*): of the data commit.
        push_kwargs: more arguments for `Dataset.push_to_hub` (`max_shard_size`, `num_shards`, ...).

    Returns:
        `huggingface_hub.CommitInfo` of the card commit (the last one).

    Raises:
        `TypeError`: not a `datasets.Dataset`. `ValueError`: SHAP columns or provenance missing.
        `FileNotFoundError` / `OSError`: the Hub refused (naming repo, revision and endpoint).
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    missing = [column for column in SHAP_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset lacks column(s) {missing} (label it with label_dataset); it has {dataset.column_names}"
        )
    provenance = provenance if provenance is not None else shap_provenance(dataset)
    if provenance is None:
        raise ValueError(
            "no SHAP provenance in dataset.info.description: label it with label_dataset, or pass provenance="
        )
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        dataset.push_to_hub(
            repo_id, split=split, private=private, token=token, revision=revision, commit_message=commit_message,
            **push_kwargs,
        )  # fmt: skip
        remote = load_remote_card(repo_id, repo_type="dataset", revision=revision, token=token)
        card = shap_dataset_card(dataset, repo_id, provenance, remote)
        return api.upload_file(
            path_or_fileobj=str(card).encode("utf-8"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message="hf_explvec card: SHAP provenance",
        )
    except HfHubHTTPError as error:
        raise_hub_error(error, repo_id, "dataset", revision)
