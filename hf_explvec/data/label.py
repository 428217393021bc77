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
  atomically, with a SHA-256 per shard in the manifest; a killed job restarted with the same arguments skips the
  finished shards and recomputes any whose bytes no longer match.
- **Processes.** Under `accelerate launch`, process `r` of `P` labels shards `r, r + P, r + 2P, ...`; after a barrier
  every process reads all shards and returns the whole labelled data set, in the original order.

Loading a split by name and pushing a labelled one with its card live in [`~hf_explvec.data.load`]; the shard
store in [`~hf_explvec.data.shards`]; the per-row work and the process split in [`~hf_explvec.data.rows`]; images
to pixels in [`~hf_explvec.data.images`].
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher

from .._process import process_state
from ..attribution import (
    VALUE_OPTIONS,
    make_baseline,
    min_num_samples,
    patch_kernel_shap,
)
from ..attribution.vit import model_kernel_shap
from ..modeling import SelfExplainingCLIPVision
from .images import image_processor_for, preprocess, rows_sha256, to_rgb
from .load import SHAP_COLUMNS, load_split, push_shap_dataset, shap_dataset_card, shap_provenance, with_provenance
from .rows import (
    LabellingRun,
    compute_shards,
    example_seed,
    forward_of,
    iterate_shards,
    resolve_subject,
    weights_fingerprint,
)
from .shards import STORE_FORMAT, ShardStore

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
    return functools.partial(patch_kernel_shap, forward_of(model_or_forward_fn), patch_size=patch_size)


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
        seed (`int`, *optional*, defaults to 0): run seed, in `[0, 2**64)`; example `i` uses
            [`example_seed`]`(seed, i)`.
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
            `num_samples < 2 M`, a seed outside `[0, 2**64)`, an unknown option, an `output_dir` of another run, an
            image that cannot be decoded, or non-finite pixels, scores or SHAP values (each naming the row and the
            column; no shard holding that row is written).
        `NotADirectoryError`: `output_dir` is a file, or under one.
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
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if target == "label" and label_column is None:
        raise ValueError('target="label" needs a label_column')
    _check_columns(dataset, image_column, label_column)
    if output_dir is not None:
        _check_output_dir(Path(output_dir))
    subject = resolve_subject(model_or_forward_fn, patch_size, model_id, model_revision, device)
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
    run = LabellingRun(
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
        run.labels({label_column: dataset.with_format(None)[label_column]}, 0)  # all at once, before any work

    provenance = _provenance(run, dataset, baseline, value, num_samples, seed, target)
    fingerprint = _fingerprint(run, dataset, provenance, image_processor, batch_size, first_sha)
    if output_dir is None:
        output_dir = Path(datasets.config.HF_DATASETS_CACHE) / "hf_explvec_shap" / fingerprint
    state = process_state()
    store = _open_store(Path(output_dir), fingerprint, shard_size, num_patches, provenance, resume, state)

    module = subject.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        num_rows = compute_shards(dataset, run, store, state, show_progress)
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
    first = next(iterate_shards(dataset, [image_column], 1), None)
    if first is None:
        raise ValueError("the data set is empty")
    image = to_rgb(first[1][image_column][0], image_column, 0)
    pixels = preprocess(image_processor, [image])
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
    return tuple(pixels.shape[1:]), num_patches, rows_sha256([image], None)


def _check_output_dir(directory: Path) -> None:
    """`output_dir` must be a folder or a path where one can be made: not a file, nor under one."""
    for path in (directory, *directory.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(
                    f"output_dir={str(directory)!r} cannot be a folder of shards: {str(path)!r} is a file"
                )
            return


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


def _provenance(run: LabellingRun, dataset, baseline, value, num_samples, seed, target) -> dict:
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


def _fingerprint(run: LabellingRun, dataset, provenance: dict, image_processor, batch_size: int, first_sha: str) -> str:
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
    description = with_provenance(dataset.info.description, provenance)
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
