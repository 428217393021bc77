"""The offline end-to-end demo (`hf-explvec demo`): explainability vectors on small CLIP models, from a base stage to a
report, on CPU in minutes.

The pipeline (arXiv 2507.04380 in miniature; every step uses the library's public functions):

1. **Base stage.** No pretrained CLIP can be downloaded here, so a small CLIP (both towers, built in code) is trained
   on the `base` domain with a zero-shot-style loss: cross-entropy of `logit_scale * <image, text(prompt of class)>`
   over the class prompts, both towers trained. This gives what task arithmetic needs, a shared pretrained start, and
   what CLIP gives the paper, a text tower whose class embeddings mean something for every domain's classes and
   prompt templates. With `--clip NAME` a pretrained CLIP is the base and this stage is skipped.
2. **Source.** From the base, the prediction-only source model θ_S (α = 1); Kernel SHAP labels of its training split
   (of θ_S, label class, [`~hf_explvec.data.label_dataset`] with [`model_kernel_shap`]); the twins (α = 1 and α)
   from the same start and data order ([`train_twins`]); τ_S = θ*_S − θ_S.
3. **Hub.** τ_S is pushed to a [`LocalHub`] started here (loopback, temporary directory) and pulled back by name;
   the pulled vector is the one applied.
4. **Targets.** For each: the prediction-only θ_T from the base, the direct self-explaining θ*_T (needs Kernel SHAP
   labels of the target's training split), and the transfer θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ_S
   ([`transfer`]) over a λ2 grid; λ2 is chosen on the validation split only ([`select_lambda`]).
5. **Evaluation.** Every model is compared with Kernel SHAP values of *that* model (see `demo_report` for the
   definitions), plus faithfulness metrics, then the report folder is written by [`~hf_explvec.demo.report`].

Train, validation and test never share source pixels ([`~hf_explvec.demo.domains`]); all seeds derive from one seed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..attribution.vit import model_kernel_shap
from ..data.images import clip_image_processor
from ..evaluation import accuracy
from ..modeling import SelfExplainingCLIPVision
from ..task_vector import TaskVector, transfer
from ..training import TrainingConfig, train, train_twins
from .report import (
    evaluate_model,
    explanation_metrics,
    forward_attributions,
    illustrated_lambda,
    kernel_shap_values,
    select_lambda,
    write_report,
)

logger = logging.getLogger(__name__)

# Offsets of the derived seeds (all from DemoConfig.seed), recorded in results.json.
SEED_OFFSETS = {"data": 0, "pretrain": 0, "training": 0, "labels": 1000, "validation_shap": 2000, "test_shap": 3000,
                "comparison_shap": 4000, "model_init": 0}  # fmt: skip


@dataclass
class DemoConfig:
    r"""
    Settings of the demo. The defaults are the offline demo on 2 CPU cores; [`quick_config`] gives toy sizes.

    Args:
        output_dir (`str`, defaults to `"reports/demo"`): the report folder (`work/` inside it keeps the models).
        seed (`int`, defaults to 0): every seed derives from it (see `SEED_OFFSETS`).
        num_threads (`int`, defaults to 1): torch intra-op threads. One: the tiny model gains little from two, and a
            second thread on a busy core makes it several times slower; a fixed count also keeps runs bit-identical.
        device (`str`, *optional*): where the models run; CUDA when available, else CPU.
        clip (`str`, *optional*): name or path of a pretrained `CLIPModel` (e.g. `"openai/clip-vit-base-patch32"`);
            it is the base and the base stage is skipped. By default a small CLIP is built in code.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, projection_dim, image_size,
            patch_size (`int`): the small CLIP built in code (image 32, patch 8: M = 16 patches).
        base, source (`str`): domains of [`~hf_explvec.demo.domains.DOMAINS`] or Hub data sets (`"name"` or
            `"name:config"`); `base=None` skips the base stage.
        targets (`tuple[str, ...]`): the target domains or data sets.
        image_column, label_column (`str`, *optional*): columns of Hub data sets; by default the first `Image`
            column and the `ClassLabel` column `label` (or the first `ClassLabel` column).
        base_train_size, train_size, validation_size, test_size (`int`): images per split.
        pretrain_steps, pretrain_batch_size (`int`), pretrain_learning_rate (`float`): the base stage.
        learning_rate (`float`), num_train_epochs, batch_size (`int`): every fine-tuning run (both twins alike).
        alpha (`float`, defaults to 0.8): cross-entropy weight of the self-explaining models.
        label_num_samples, eval_num_samples (`int`): Kernel SHAP evaluations per image for the training labels and
            for the reference values of the evaluation.
        comparison_num_samples (`tuple[int, ...]`): Kernel SHAP budgets compared as explainers (another seed).
        shap_batch_size (`int`): coalitions per forward pass.
        shap_value (`str`, defaults to `"logit"`): the explained score of Kernel SHAP, for labels and references
            alike: `"logit"` (the units the model's attributions are defined in), `"log_prob"` or `"prob"`.
        lambdas (`tuple[float, ...]`): the λ2 grid (0 is the prediction-only target). lam_target (`float`): λ1.
        max_accuracy_drop (`float`, defaults to 0.04): the λ rule's accuracy tolerance on validation.
        top_k (`int`, defaults to 2): K of IoU@K. num_heatmaps (`int`): test images in the overlays.
        show_progress (`bool`): tqdm bars.
    """

    output_dir: str = "reports/demo"
    seed: int = 0
    num_threads: int = 1
    device: str | None = None
    clip: str | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    projection_dim: int = 32
    image_size: int = 32
    patch_size: int = 8
    base: str | None = "base"
    source: str = "digits_on_textures"
    targets: tuple[str, ...] = ("digits_on_photos", "texture_tiles")
    image_column: str | None = None
    label_column: str | None = None
    base_train_size: int = 3000
    train_size: int = 600
    validation_size: int = 240
    test_size: int = 300
    pretrain_steps: int = 600
    pretrain_batch_size: int = 64
    pretrain_learning_rate: float = 1e-3
    learning_rate: float = 5e-4
    num_train_epochs: int = 20
    batch_size: int = 64
    alpha: float = 0.8
    label_num_samples: int = 500
    eval_num_samples: int = 500
    comparison_num_samples: tuple[int, ...] = (150, 500)
    shap_batch_size: int = 256
    shap_value: str = "logit"
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
    lam_target: float = 1.0
    max_accuracy_drop: float = 0.04
    top_k: int = 2
    num_heatmaps: int = 4
    show_progress: bool = True
    note: str | None = None
    command: str | None = field(default=None, repr=False)

    def __post_init__(self):
        self.targets = tuple(self.targets)
        self.lambdas = tuple(float(lam) for lam in self.lambdas)
        self.comparison_num_samples = tuple(int(n) for n in self.comparison_num_samples)
        if self.shap_value not in ("logit", "log_prob", "prob"):
            raise ValueError(f"shap_value must be 'logit', 'log_prob' or 'prob', got {self.shap_value!r}.")
        if not self.targets:
            raise ValueError("targets is empty: the demo needs at least one target domain.")
        if 0.0 not in self.lambdas:
            raise ValueError(f"lambdas must contain 0.0 (the prediction-only target), got {list(self.lambdas)}.")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1) for the self-explaining models, got {self.alpha}.")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ValueError(f"max_accuracy_drop is a fraction in [0, 1], got {self.max_accuracy_drop}.")
        for name in ("num_threads", "train_size", "validation_size", "test_size", "num_train_epochs", "batch_size",
                     "top_k", "shap_batch_size"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def quick_config(output_dir: str = "reports/demo-quick", **overrides) -> DemoConfig:
    """Toy sizes: the whole pipeline in well under a minute on 2 cores (for tests and smoke runs, not for figures)."""
    settings = {
        "output_dir": output_dir, "hidden_size": 32, "intermediate_size": 64, "base_train_size": 240,
        "train_size": 48, "validation_size": 16, "test_size": 16, "pretrain_steps": 30, "num_train_epochs": 2,
        "batch_size": 16, "label_num_samples": 64, "eval_num_samples": 96, "comparison_num_samples": (64, 96),
        "lambdas": (0.0, 0.5, 1.0), "num_heatmaps": 2,
        "note": "toy sizes (--quick): a smoke run of the pipeline, its figures mean nothing",
    }  # fmt: skip
    return DemoConfig(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------------------------- data
@dataclass
class DemoSplit:
    r"""One split, processed once: `pixel_values` `(N, 3, H, W)` (CLIP-normalised), `labels` `(N,)`, `evidence`
    `(N, M)` bool or `None`, `images` `(N, H, W, 3)` uint8 as the model sees them, and the `datasets.Dataset`
    (`image`, `label`) with its image processor for [`~hf_explvec.data.label_dataset`]."""

    pixel_values: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor | None
    images: np.ndarray
    dataset: object
    processor: object

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Domain:
    """A domain: class names, prompt templates, role (`base`, `source`, `related`, `unrelated`, `target`), splits."""

    name: str
    role: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    train: DemoSplit
    validation: DemoSplit | None
    test: DemoSplit | None
    origin: str

    def describe(self) -> dict:
        sizes = {s: len(getattr(self, s)) for s in ("train", "validation", "test") if getattr(self, s) is not None}
        return {"role": self.role, "origin": self.origin, "classes": list(self.class_names),
                "templates": list(self.templates), "sizes": sizes}  # fmt: skip


@dataclass
class Domains:
    base: Domain | None
    source: Domain
    targets: list[Domain]

    def all(self) -> list[Domain]:
        return [d for d in (self.base, self.source, *self.targets) if d is not None]

    def describe(self) -> dict:
        return {d.name: d.describe() for d in self.all()}


def _process(dataset, processor, image_size: int, patch_size: int) -> DemoSplit:
    pixels = []
    for i in range(0, len(dataset), 256):
        images = [image.convert("RGB") for image in dataset[i : i + 256]["image"]]
        pixels.append(processor(images=images, return_tensors="pt")["pixel_values"])
    pixel_values = torch.cat(pixels).float()
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    images = ((pixel_values * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    evidence = None
    if "evidence" in dataset.column_names:
        evidence = torch.tensor(dataset["evidence"], dtype=torch.bool)
        if evidence.shape[1] != (image_size // patch_size) ** 2:
            evidence = None
    return DemoSplit(pixel_values, torch.tensor(dataset["label"]), evidence, images, dataset, processor)


def _hub_splits(name: str, sizes: dict, config: DemoConfig):
    """A Hub data set (`"name"` or `"name:config"`) as train/validation/test `image`/`label` splits of the sizes
    asked: seeded subsets; a validation or test split the data set lacks is cut from its training split."""
    import datasets

    path, _, subset = name.partition(":")
    loaded = datasets.load_dataset(path, subset or None)
    if "train" not in loaded:
        raise ValueError(f"data set {name!r} has no train split; its splits are {list(loaded)}.")
    features = loaded["train"].features
    renames = {_column(name, features, config.image_column, datasets.Image, "image"): "image",
               _column(name, features, config.label_column, datasets.ClassLabel, "label"): "label"}  # fmt: skip
    loaded = {split: ds.select_columns(list(renames)).rename_columns({k: v for k, v in renames.items() if k != v})
              for split, ds in loaded.items()}  # fmt: skip
    train = loaded["train"].shuffle(seed=config.seed)
    for split in ("validation", "test"):
        if split in sizes and split not in loaded:
            cut = min(sizes[split], len(train) // 5)
            loaded[split], train = train.select(range(cut)), train.select(range(cut, len(train)))
    loaded["train"] = train
    return {split: loaded[split].shuffle(seed=config.seed).select(range(min(n, len(loaded[split]))))
            for split, n in sizes.items()}  # fmt: skip


def _column(name: str, features, column: str | None, kind: type, preferred: str) -> str:
    """The column of `kind` (`datasets.Image` or `datasets.ClassLabel`) to use: `column` when given, else
    `preferred` when it has that kind, else the first column of that kind."""
    if column is not None:
        if column not in features:
            raise ValueError(f"data set {name!r} has no column {column!r}; its columns are {list(features)}.")
        return column
    matching = [key for key, feature in features.items() if isinstance(feature, kind)]
    if not matching:
        raise ValueError(f"data set {name!r} has no {kind.__name__} column (columns {list(features)}); name one.")
    return preferred if preferred in matching else matching[0]


def load_domain(name: str, role: str, sizes: dict, config: DemoConfig, image_size: int, patch_size: int, data=None):
    """A [`Domain`]: from `data` (in memory), from [`~hf_explvec.demo.domains`] (offline) or from the Hub, by name."""
    from .domains import DOMAINS, build_domain_dict

    if data is not None and name in data:
        splits, origin = {s: data[name][s] for s in sizes if s in data[name]}, "in memory"
    elif name in DOMAINS:
        geometry = {"image_size": image_size, "patch_size": patch_size}
        splits = build_domain_dict(name, sizes, **geometry, seed=_seed(config, "data"))
        origin = "hf_explvec.domains (offline)"
    else:
        splits, origin = _hub_splits(name, sizes, config), "datasets.load_dataset"
    first = next(iter(splits.values()))
    class_names = tuple(first.features["label"].names)
    templates = DOMAINS[name].templates if name in DOMAINS else ("a photo of a {}.",)
    processor = clip_image_processor(image_size)
    processed = {split: _process(ds, processor, image_size, patch_size) for split, ds in splits.items()}
    return Domain(name, role, class_names, tuple(templates), processed["train"], processed.get("validation"),
                  processed.get("test"), origin)  # fmt: skip


def _role(target: str, source: str) -> str:
    from .domains import DOMAINS

    if target in DOMAINS and source in DOMAINS:
        return "related" if DOMAINS[target].evidence_kind == DOMAINS[source].evidence_kind else "unrelated"
    return "target"


def load_domains(config: DemoConfig, image_size: int, patch_size: int, data=None) -> Domains:
    """The base (when the base stage runs), source and target domains of `config`, processed at `image_size`."""
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    base = None
    if config.base is not None and config.pretrain_steps > 0:
        base = load_domain(config.base, "base", {"train": config.base_train_size}, config, image_size, patch_size, data)
    source = load_domain(config.source, "source", sizes, config, image_size, patch_size, data)
    targets = [
        load_domain(target, _role(target, config.source), sizes, config, image_size, patch_size, data)
        for target in config.targets
    ]
    return Domains(base, source, targets)


# ---------------------------------------------------------------------------------------------------- small helpers
def _seed(config: DemoConfig, what: str) -> int:
    return config.seed + SEED_OFFSETS[what]


def build_clip(config: DemoConfig, clip=None, tokenizer=None):
    """The CLIP model and tokenizer: given, loaded by name (`config.clip`), or the small one built in code."""
    if clip is not None:
        if tokenizer is None:
            raise ValueError("a CLIP model was given without its tokenizer.")
        return clip, tokenizer
    if config.clip is not None:
        from transformers import CLIPModel, CLIPTokenizer

        return CLIPModel.from_pretrained(config.clip).eval(), CLIPTokenizer.from_pretrained(config.clip)
    from .clip import tiny_clip_model, tiny_clip_tokenizer

    vision = {"image_size": config.image_size, "patch_size": config.patch_size, "hidden_size": config.hidden_size,
              "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
              "num_attention_heads": config.num_attention_heads}  # fmt: skip
    return tiny_clip_model(_seed(config, "model_init"), config.projection_dim, **vision), tiny_clip_tokenizer()


def _text_features(clip, inputs) -> torch.Tensor:
    features = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return F.normalize(features if isinstance(features, torch.Tensor) else features.pooler_output, dim=-1)


def pretrain_clip(clip, tokenizer, split: DemoSplit, class_names, templates, config: DemoConfig) -> list[dict]:
    r"""
    The base stage: train both towers of `clip` in place with cross-entropy over the class prompts (one template per
    class drawn at random each step, so that every template of every class lands near the class's images).

    Args:
        clip ([`~transformers.CLIPModel`]): trained in place, left in eval mode.
        tokenizer: its tokenizer.
        split ([`DemoSplit`]): the base domain's training split.
        class_names (`list[str]`), templates (`list[str]`): the prompts are `template.format(name)`.
        config ([`DemoConfig`]): `pretrain_steps`, `pretrain_batch_size`, `pretrain_learning_rate`, the seed.

    Returns:
        `list[dict]`: the loss and batch accuracy every 50 steps and at the end.
    """
    steps = config.pretrain_steps
    generator = torch.Generator().manual_seed(_seed(config, "pretrain"))
    max_length = clip.config.text_config.max_position_embeddings
    device = clip.logit_scale.device
    prompts = [tokenizer([t.format(name) for name in class_names], padding=True, truncation=True,
                         max_length=max_length, return_tensors="pt").to(device) for t in templates]  # fmt: skip
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.pretrain_learning_rate, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / steps))
    )
    rows = torch.arange(len(class_names), device=device)
    history, clip = [], clip.train()
    for step in tqdm(range(steps), desc="base stage", disable=not config.show_progress):
        index = torch.randint(0, len(split), (config.pretrain_batch_size,), generator=generator)
        pixel_values, labels = split.pixel_values[index].to(device), split.labels[index].to(device)
        choice = torch.randint(0, len(templates), (len(class_names),), generator=generator).to(device)
        text = torch.stack([_text_features(clip, inputs) for inputs in prompts], dim=1)[rows, choice]
        image = clip.get_image_features(pixel_values=pixel_values)
        image = F.normalize(image if isinstance(image, torch.Tensor) else image.pooler_output, dim=-1)
        logits = clip.logit_scale.exp() * image @ text.t()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, "loss": float(loss.detach()), "accuracy": accuracy(logits.detach(), labels)}
            )
    logger.info("base stage: %s", history[-1] if history else "skipped")
    clip.eval()
    return history


def start_model(clip, tokenizer, domain: Domain) -> SelfExplainingCLIPVision:
    """θ_base for a domain: the base CLIP's vision tower with the domain's class-prompt head."""
    model = SelfExplainingCLIPVision.from_clip(clip, list(domain.class_names), templates=list(domain.templates),
                                               tokenizer=tokenizer)  # fmt: skip
    model.config.clip_name_or_path = clip.config._name_or_path or "hf_explvec.demo base stage"
    return model


# --------------------------------------------------------------------------------------------------------- training
def _training_config(config: DemoConfig, work: Path, name: str, alpha: float, num_examples: int) -> TrainingConfig:
    """One fine-tuning run: AdamW, cosine schedule with a warmup of 10% of the steps (rounded down: a run of under
    ten steps has none, so that a one-step run does take a step)."""
    steps = config.num_train_epochs * math.ceil(num_examples / config.batch_size)
    return TrainingConfig(
        work / name, alpha=alpha, learning_rate=config.learning_rate, num_train_epochs=config.num_train_epochs,
        per_device_batch_size=config.batch_size, warmup_steps=int(0.1 * steps), seed=_seed(config, "training"),
        log_every=10_000, disable_tqdm=not config.show_progress,
    )  # fmt: skip


def _training_set(split: DemoSplit, shap_values: torch.Tensor | None = None):
    import datasets

    columns = {"pixel_values": split.pixel_values.numpy(), "labels": split.labels.tolist()}
    if shap_values is not None:
        columns["shap_values"] = shap_values.numpy()
    return datasets.Dataset.from_dict(columns)


def shap_labels(model, split: DemoSplit, config: DemoConfig, work: Path, name: str) -> torch.Tensor:
    r"""Kernel SHAP labels of `model` (label class) for a training split, through [`~hf_explvec.data.label_dataset`]
    with [`model_kernel_shap`] as the explainer (provenance and fingerprint recorded, shards under `work/`)."""
    from ..data import label_dataset

    labelled = label_dataset(
        split.dataset, model, split.processor, num_samples=config.label_num_samples, seed=_seed(config, "labels"),
        batch_size=config.shap_batch_size, explainer=functools.partial(model_kernel_shap, model),
        value=config.shap_value,
        output_dir=work / "shap_labels" / name, resume=False, show_progress=config.show_progress,
        model_id=f"hf_explvec.demo/{name}", image_column="image", label_column="label",
    )  # fmt: skip
    if labelled["shap_target"] != split.labels.tolist():
        raise RuntimeError(f"label_dataset explained other classes than the labels for {name}.")
    return torch.tensor(np.asarray(labelled["shap_values"], dtype=np.float32))


def _cosine(a: TaskVector, b: TaskVector) -> float | None:
    """Cosine similarity of two task vectors; `None` when one of them is zero (a run that did not move)."""
    return a.cosine_similarity(b) if a.norm() > 0 and b.norm() > 0 else None


def _same_weights(a, b) -> bool:
    b_state = b.state_dict()
    return all(torch.equal(value, b_state[key]) for key, value in a.state_dict().items())


# --------------------------------------------------------------------------------------------------------- pipeline
class _Clock:
    """Wall time per stage (seconds, summed when a stage name repeats)."""

    def __init__(self):
        self.start, self.stages = time.perf_counter(), {}

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[name] = round(self.stages.get(name, 0.0) + now - since, 3)
        return now


def _evaluate(model, split, config: DemoConfig, seed_name: str, desc: str, perturbation: bool = True):
    return evaluate_model(model, split, num_samples=config.eval_num_samples, seed=_seed(config, seed_name),
                          batch_size=config.shap_batch_size, top_k=config.top_k, perturbation=perturbation,
                          value=config.shap_value, desc=desc if config.show_progress else None)  # fmt: skip


def _source_stage(clip, tokenizer, source: Domain, config: DemoConfig, work: Path, clock: _Clock) -> dict:
    """θ_S, its Kernel SHAP labels, the twins from θ_base and τ_S; the twins' figures on the source test split."""
    t = time.perf_counter()
    base = start_model(clip, tokenizer, source)
    run = _training_config(config, work, "source_prediction_only", 1.0, len(source.train))
    prediction_only = train(copy.deepcopy(base), _training_set(source.train), run).model
    t = clock.lap("source: prediction-only training", t)
    labels = shap_labels(prediction_only, source.train, config, work, f"{source.name}-train")
    t = clock.lap("source: Kernel SHAP labels", t)
    run = _training_config(config, work, "source_twins", config.alpha, len(source.train))
    twins = train_twins(base, _training_set(source.train, labels), run, source_dataset=source.name)
    t = clock.lap("source: twins training", t)
    identical = _same_weights(twins.prediction_only, prediction_only)
    if not identical:
        logger.warning("the prediction-only twin differs from the model the labels were taken from.")
    metrics = {}
    for name, model in (("prediction_only", twins.prediction_only), ("self_explaining", twins.self_explaining)):
        metrics[name], _ = _evaluate(model, source.test, config, "test_shap", f"source {name}", perturbation=False)
    clock.lap("source: evaluation", t)
    vector_pred = TaskVector.from_models(base, twins.prediction_only).to(device="cpu")
    return {"twins": twins, "vector_pred": vector_pred, "metrics": metrics,
            "labels_rms": float(labels.pow(2).mean().sqrt()), "identical": identical}  # fmt: skip


def _hub_round_trip(vector: TaskVector, source: Domain, clock: _Clock) -> tuple[TaskVector, dict]:
    """Push τ_S to a LocalHub started here (loopback, temporary directory) and pull it back by name."""
    from ..hub.loopback import LocalHub, hub_client_env

    t = time.perf_counter()
    repo_id = f"demo/{source.name.replace('_', '-').replace(':', '-').replace('/', '-')}-explainability-vector"
    vector = vector.to(device="cpu")
    with LocalHub() as hub, hub_client_env(hub.endpoint):
        commit = vector.push_to_hub(repo_id, commit_message=f"explainability vector of {source.name} (hf-explvec demo)")
        pulled = TaskVector.from_pretrained(repo_id)
        endpoint = hub.endpoint
    if pulled.commit_hash != commit.oid:
        raise RuntimeError(f"pulled {repo_id} at commit {pulled.commit_hash}, but the push made {commit.oid}.")
    pushed = vector.state_dict()
    difference = max(float((value - pushed[key]).abs().max()) for key, value in pulled.state_dict().items())
    clock.lap("hub push and pull", t)
    return pulled, {"repo_id": repo_id, "commit_sha": commit.oid, "pulled_commit": pulled.commit_hash,
                    "endpoint": endpoint, "max_abs_difference": difference, "num_parameters": pulled.num_parameters,
                    "norm": pulled.norm()}  # fmt: skip


def _target_stage(clip, tokenizer, target: Domain, source: dict, vector: TaskVector, config: DemoConfig, work: Path,
                  clock: _Clock) -> tuple[dict, dict]:  # fmt: skip
    """θ_T, θ*_T, the λ2 sweep on validation and test, the λ2 rule, Kernel SHAP as an explainer, heatmap arrays."""
    name, t = target.name, time.perf_counter()
    base = start_model(clip, tokenizer, target)
    run = _training_config(config, work, f"{name}_prediction_only", 1.0, len(target.train))
    prediction_only = train(copy.deepcopy(base), _training_set(target.train), run).model
    tau_target = TaskVector.from_models(base, prediction_only).to(device="cpu")
    t = clock.lap(f"{name}: prediction-only training", t)
    labels = shap_labels(prediction_only, target.train, config, work, f"{name}-train")
    run = _training_config(config, work, f"{name}_self_explaining", config.alpha, len(target.train))
    direct = train(copy.deepcopy(base), _training_set(target.train, labels), run).model
    t = clock.lap(f"{name}: self-explaining model trained on the target (labels + training)", t)

    sweep, arrays = {"validation": [], "test": []}, {}
    for lam in tqdm(config.lambdas, desc=f"{name}: λ2 sweep", disable=not config.show_progress):
        model = transfer(base, prediction_only, vector, lam=lam, lam_target=config.lam_target)
        for split in ("validation", "test"):
            metrics, arrays[lam, split] = _evaluate(model, getattr(target, split), config, f"{split}_shap", split)
            sweep[split].append({"lam": lam, **metrics})
    chosen = select_lambda(sweep["validation"], config.max_accuracy_drop)
    t = clock.lap(f"{name}: λ2 sweep (validation + test)", t)
    direct_metrics = {}
    for split in ("validation", "test"):
        direct_metrics[split], arrays["direct", split] = _evaluate(direct, getattr(target, split), config,
                                                                   f"{split}_shap", split)  # fmt: skip
    t = clock.lap(f"{name}: evaluation of the self-explaining model", t)

    reference, comparison = arrays[0.0, "test"], []
    for n in config.comparison_num_samples:
        desc = f"Kernel SHAP N={n}" if config.show_progress else None
        values, seconds = kernel_shap_values(prediction_only, target.test, n, _seed(config, "comparison_shap"),
                                             config.shap_batch_size, desc, value=config.shap_value)  # fmt: skip
        metrics = explanation_metrics(prediction_only, target.test, values, reference["reference"], top_k=config.top_k)
        base_accuracy = next(entry for entry in sweep["test"] if entry["lam"] == 0.0)["accuracy"]
        comparison.append(
            {"num_samples": n, "accuracy": base_accuracy, "explain_seconds_per_image": seconds, **metrics}
        )
    clock.lap(f"{name}: Kernel SHAP as the explainer", t)

    count, evidence = min(config.num_heatmaps, len(target.test)), target.test.evidence
    result = {"domain": name, "role": target.role, "class_names": list(target.class_names),
              "cosine_tau_source_prediction_vs_tau_target": _cosine(source["vector_pred"], tau_target),
              "cosine_tau_source_explainability_vs_tau_target": _cosine(vector, tau_target),
              "norm_tau_target": tau_target.norm(), "labels_rms": float(labels.pow(2).mean().sqrt()),
              "sweep": sweep, "chosen_lam": chosen, "direct": direct_metrics, "kernel_shap": comparison}  # fmt: skip
    shown, is_chosen = illustrated_lambda(result, config.max_accuracy_drop)
    heatmaps = {"images": target.test.images[:count], "evidence": None if evidence is None else evidence[:count],
                "labels": target.test.labels[:count], "class_names": target.class_names, "lam": shown,
                "chosen": is_chosen, "kernel_shap": reference["reference"][:count],
                "prediction_only": reference["attributions"][:count],
                "with_vector": arrays[shown, "test"]["attributions"][:count],
                "direct": arrays["direct", "test"]["attributions"][:count]}  # fmt: skip
    return result, heatmaps


def run(config: DemoConfig | None = None, *, clip=None, tokenizer=None, data: dict | None = None) -> dict:
    r"""
    Run the demo and write the report folder (`report.md`, `results.json`, heatmap PNGs, `lambda_sweep.png`; the
    models, the vector and the Kernel SHAP label shards under `work/`).

    Args:
        config ([`DemoConfig`], *optional*): the settings; the defaults are the offline demo.
        clip ([`~transformers.CLIPModel`], *optional*), tokenizer (*optional*): a CLIP model and its tokenizer to use
            instead of building or loading one; the base stage (when there is one) trains it in place.
        data (`dict[str, datasets.DatasetDict]`, *optional*): in-memory data sets by name (columns `image`, `label`
            as a `ClassLabel`, optionally `evidence`), used instead of the domains or Hub data sets of those names.

    Returns:
        `dict`: what `results.json` holds.

    Example (toy sizes, about 10 seconds):

    ```python
    >>> from hf_explvec.demo import quick_config, run
    >>> results = run(quick_config("reports/demo-quick", show_progress=False))
    >>> sorted(results["hub"])[:2], [t["role"] for t in results["targets"]]
    (['commit_sha', 'endpoint'], ['related', 'unrelated'])
    ```
    """
    config = config or DemoConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    bars = _quiet_library_progress_bars() if not config.show_progress else None
    try:
        return _run(config, clip, tokenizer, data)
    finally:
        torch.set_num_threads(threads)
        if bars is not None:
            bars()


def _quiet_library_progress_bars():
    """Hide the progress bars of transformers, huggingface_hub and datasets; return a function that restores them."""
    import datasets
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    states = (transformers_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled(),
              datasets.is_progress_bar_enabled())  # fmt: skip
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()

    def restore():
        for enabled, enable in zip(states, (transformers_logging.enable_progress_bar, hub_utils.enable_progress_bars,
                                            datasets.enable_progress_bars)):  # fmt: skip
            if enabled:
                enable()

    return restore


def _run(config: DemoConfig, clip, tokenizer, data) -> dict:
    clock, output_dir = _Clock(), Path(config.output_dir)
    work = output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    t = time.perf_counter()
    clip, tokenizer = build_clip(config, clip, tokenizer)
    clip.to(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    domains = load_domains(config, image_size, patch_size, data)
    t = clock.lap("data", t)

    history = []
    if domains.base is not None:
        from .domains import DOMAINS

        # The prompt templates of every registered domain (and of the domains in use): the base stage does not
        # depend on which targets are chosen, as CLIP's pretraining does not.
        templates = sorted({template for d in [*DOMAINS.values(), *domains.all()] for template in d.templates})
        history = pretrain_clip(clip, tokenizer, domains.base.train, domains.base.class_names, templates, config)
    zero_shot = {}
    for domain in [domains.source, *domains.targets]:
        logits, _, _ = forward_attributions(start_model(clip, tokenizer, domain), domain.validation)
        zero_shot[domain.name] = accuracy(logits, domain.validation.labels)
    clock.lap("base stage", t)

    source = _source_stage(clip, tokenizer, domains.source, config, work, clock)
    vector, hub = _hub_round_trip(source["twins"].vector, domains.source, clock)
    targets, heatmaps = [], {}
    for target in domains.targets:
        result, heatmaps[target.name] = _target_stage(clip, tokenizer, target, source, vector, config, work, clock)
        targets.append(result)

    twins = source["twins"]
    results = {
        "config": config.to_dict(),
        "default_config": _is_default(config),
        "seeds": {name: _seed(config, name) for name in SEED_OFFSETS},
        "model": {
            "clip": config.clip or "small CLIP built in code (hf_explvec.testing.tiny_clip_model)",
            "image_size": image_size,
            "patch_size": patch_size,
            "num_patches": (image_size // patch_size) ** 2,
            "vision_parameters": sum(p.numel() for p in clip.vision_model.parameters()),
        },
        "domains": domains.describe(),
        "base_stage": {"history": history, "zero_shot_validation_accuracy": zero_shot},
        "source": {
            "domain": domains.source.name,
            "labels_rms": source["labels_rms"],
            "test": source["metrics"],
            "twins_identical_to_labelled_model": source["identical"],
            "vector_norm": twins.vector.norm(),
            "vector_pred_norm": source["vector_pred"].norm(),
        },
        "hub": hub,
        "targets": targets,
        "timings_seconds": {**clock.stages, "total": round(time.perf_counter() - clock.start, 3)},
        "report": str(output_dir / "report.md"),
    }
    write_report(results, heatmaps, output_dir)
    return results


def _is_default(config: DemoConfig) -> bool:
    """Whether `config` is the default demo, up to where it writes, what it shows and how it was started."""
    ignored = {"output_dir", "show_progress", "command", "note"}
    default = DemoConfig().to_dict()
    return all(value == default[key] for key, value in config.to_dict().items() if key not in ignored)


__all__ = ["DemoConfig", "DemoSplit", "Domain", "load_domains", "pretrain_clip", "quick_config", "run"]
