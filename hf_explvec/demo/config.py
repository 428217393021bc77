"""The demo's settings ([`DemoConfig`], [`quick_config`]) and the seeds derived from its one seed."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from .._validation import check_finite, check_int

__all__ = ["DEFAULT_TARGETS", "SEEDS_TARGETS", "SEED_OFFSETS", "DemoConfig", "derived_seed", "quick_config",
           "safe_file_name"]  # fmt: skip

# Offsets of the derived seeds (all from DemoConfig.seed), recorded in results.json.
SEED_OFFSETS = {"data": 0, "pretrain": 0, "training": 0, "labels": 1000, "validation_shap": 2000, "test_shap": 3000,
                "comparison_shap": 4000, "model_init": 0, "probe_shap": 5000}  # fmt: skip

DEFAULT_TARGETS = ("letters_on_photos", "symbols_on_textures", "outlines_on_plain", "photo_scenes", "texture_scenes")
"""The default demo's targets: three related domains of object families the source never shows, two unrelated."""
SEEDS_TARGETS = (*DEFAULT_TARGETS[:3], "digits_on_photos", *DEFAULT_TARGETS[3:])
"""The multi-seed mode's targets (`hf-explvec demo --seeds N`): the default ones and the near target
`digits_on_photos` (other classes of a family the source shows), six in all for the diagnostic's correlation."""

_POSITIVE_INTS = ("num_threads", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "projection_dim", "image_size", "patch_size", "base_train_size", "train_size", "validation_size",
                  "test_size", "pretrain_batch_size", "num_train_epochs", "batch_size", "label_num_samples",
                  "eval_num_samples", "shap_batch_size", "top_k", "budget_num_images", "probe_num_images")  # fmt: skip
_NON_NEGATIVE_INTS = ("seed", "pretrain_steps", "num_heatmaps")
_OPTIONAL_STRINGS = ("device", "clip", "base", "image_column", "label_column", "note", "command")


def _check_sequence(name: str, value) -> None:
    """A tuple or list setting: refuse a bare string (a common slip for a one-element tuple) or a non-sequence."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple or list, got {type(value).__name__}: {value!r}.")


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
        targets (`tuple[str, ...]`, defaults to `DEFAULT_TARGETS`): the target domains or data sets.
        image_column, label_column (`str`, *optional*): columns of Hub data sets; by default the first `Image`
            column and the `ClassLabel` column `label` (or the first `ClassLabel` column).
        base_train_size, train_size, validation_size, test_size (`int`): images per split.
        pretrain_steps, pretrain_batch_size (`int`), pretrain_learning_rate (`float`): the base stage.
        learning_rate (`float`), num_train_epochs, batch_size (`int`): every fine-tuning run (both twins alike).
        alpha (`float`, defaults to 0.8): cross-entropy weight of the self-explaining models.
        label_num_samples, eval_num_samples (`int`): Kernel SHAP evaluations per image for the training labels and
            for the reference values of the evaluation.
        comparison_num_samples (`tuple[int, ...]`): Kernel SHAP budgets compared as explainers (another seed).
        budget_ladder (`tuple[int, ...]`, *optional*): the Kernel SHAP budgets at which the equivalent budget of the
            one-pass explanations is measured ([`~hf_explvec.evaluation.budget.equivalent_kernel_shap_budget`]);
            by default [`~hf_explvec.evaluation.budget.default_budget_ladder`] up to `eval_num_samples` (2 M, 4 M,
            8 M, ..., 150, `eval_num_samples`).
        tve_ridge (`float`, defaults to 1e-3): the ridge of the TVE baseline's head
            ([`~hf_explvec.evaluation.tve.TransferableExplainer.fit`]), relative to the normal matrix's mean diagonal.
        budget_num_images (`int`, defaults to 50): the first test images of each target the ladder runs on (the
            ladder costs about twice the reference per image, for three models per target).
        shap_batch_size (`int`): coalitions per forward pass.
        shap_value (`str`, defaults to `"logit"`): the explained score of Kernel SHAP, for labels and references
            alike: `"logit"` (the units the model's attributions are defined in), `"log_prob"` or `"prob"`.
        lambdas (`tuple[float, ...]`): the λ2 grid (0 is the prediction-only target). lam_target (`float`): λ1.
        max_accuracy_drop (`float`, defaults to 0.04): the λ rule's accuracy tolerance on validation (a fraction).
        lambda_metric (`str`, defaults to `"e_rmse_l2"`): the validation figure the λ rule minimises: the scale-free
            E-RMSE (L2), which a model cannot lower by growing less confident, or the raw `"e_rmse"`.
        lambda_confidence (`float`, *optional*, defaults to 0.9): the λ rule admits a λ2 only when the one-sided
            upper confidence bound (at this level) of its paired validation accuracy drop is within
            `max_accuracy_drop` ([`~hf_explvec.evaluation.accuracy_drop_bound`]), so a small validation split does
            not let a lucky λ2 through; `None` compares the observed drop, as the paper does.
        probe_lam (`float`, defaults to 0.3), probe_num_images (`int`, defaults to 16), probe_num_samples (`int`,
            *optional*, defaults to 4 M: 64 for the default's 16 patches, 196 for ViT-B/32's 49): the diagnostic
            measured before the sweep ([`~hf_explvec.evaluation.probe_transfer`]): E-RMSE (L2) at λ2 = `probe_lam`
            against λ2 = 0 on the first validation images, with a small Kernel SHAP budget.
        goal_e_rmse_gain (`float`, defaults to 0.09): the paper's related-domain result the verdict compares with:
            test E-RMSE at least this fraction below the prediction-only target's...
        goal_accuracy_drop (`float`, defaults to 0.04): ...with test accuracy at most this fraction lower.
        goal_gap_closed (`float`, defaults to 0.25): the aim beyond the paper: the share of the E-RMSE gap between
            θ_T and the self-explaining model trained on the target that the vector should close.
        top_k (`int`, defaults to 2): K of IoU@K. num_heatmaps (`int`): test images in the overlays.
        linear_head_target (`bool`, defaults to `False`): also build the related target as a transformers
            `CLIPForImageClassification` on the base's vision tower (a linear probe, then fine-tuning) and measure
            whether τ_S, trained with the text head, transfers to it ([`~hf_explvec.demo.linear_head`]; results in
            `results["linear_head"]` and a report section). Adds a few minutes to the default demo (about 4-5 on 2 CPU
            cores); the other figures are unchanged.
        show_progress (`bool`): tqdm bars.
        note (`str`, *optional*): a line shown at the top of the report.
        command (`str`, *optional*): the command line that started the run, shown in the report.

    Raises:
        `TypeError`: a setting of the wrong type (e.g. a float where an int is needed).
        `ValueError`: a setting out of range (the message names it, the expected range and the value).
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
    base: str | None = "pretraining"
    source: str = "diverse_source"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    image_column: str | None = None
    label_column: str | None = None
    base_train_size: int = 3000
    train_size: int = 400
    validation_size: int = 200
    test_size: int = 200
    pretrain_steps: int = 600
    pretrain_batch_size: int = 64
    pretrain_learning_rate: float = 1e-3
    learning_rate: float = 5e-4
    num_train_epochs: int = 20
    batch_size: int = 64
    alpha: float = 0.8
    label_num_samples: int = 500
    eval_num_samples: int = 300
    comparison_num_samples: tuple[int, ...] = (150, 300)
    budget_ladder: tuple[int, ...] | None = None
    budget_num_images: int = 50
    tve_ridge: float = 1e-3
    shap_batch_size: int = 256
    shap_value: str = "logit"
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
    lam_target: float = 1.0
    max_accuracy_drop: float = 0.04
    lambda_metric: str = "e_rmse_l2"
    lambda_confidence: float | None = 0.9
    probe_lam: float = 0.3
    probe_num_images: int = 16
    probe_num_samples: int | None = None
    goal_e_rmse_gain: float = 0.09
    goal_accuracy_drop: float = 0.04
    goal_gap_closed: float = 0.25
    top_k: int = 2
    num_heatmaps: int = 4
    linear_head_target: bool = False
    show_progress: bool = True
    note: str | None = None
    command: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.output_dir, (str, os.PathLike)):
            raise TypeError(f"output_dir must be a str or a path, got {type(self.output_dir).__name__}.")
        self.output_dir = os.fspath(self.output_dir)
        for name in _POSITIVE_INTS:
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name in _NON_NEGATIVE_INTS:
            setattr(self, name, check_int(name, getattr(self, name), 0))
        for name in _OPTIONAL_STRINGS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}: {value!r}.")
        if not isinstance(self.source, str) or not self.source:
            raise TypeError(f"source must be a non-empty str (a domain or data set name), got {self.source!r}.")
        _check_sequence("targets", self.targets)
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError("targets is empty: the demo needs at least one target domain.")
        bad = [target for target in self.targets if not isinstance(target, str) or not target]
        if bad:
            raise TypeError(f"targets must be non-empty str names, got {bad}.")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must not repeat a name, got {list(self.targets)}.")
        _check_sequence("lambdas", self.lambdas)
        self.lambdas = tuple(check_finite(f"lambdas[{i}]", lam) for i, lam in enumerate(self.lambdas))
        if 0.0 not in self.lambdas:
            raise ValueError(f"lambdas must contain 0.0 (the prediction-only target), got {list(self.lambdas)}.")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise ValueError(f"lambdas must not repeat a value, got {list(self.lambdas)}.")
        _check_sequence("comparison_num_samples", self.comparison_num_samples)
        self.comparison_num_samples = tuple(
            check_int(f"comparison_num_samples[{i}]", n, 1) for i, n in enumerate(self.comparison_num_samples)
        )
        if self.budget_ladder is not None:
            _check_sequence("budget_ladder", self.budget_ladder)
            self.budget_ladder = tuple(check_int(f"budget_ladder[{i}]", n, 1) for i, n in enumerate(self.budget_ladder))
            if not self.budget_ladder:
                raise ValueError("budget_ladder is empty: give at least one Kernel SHAP budget, or None.")
            if len(set(self.budget_ladder)) != len(self.budget_ladder):
                raise ValueError(f"budget_ladder must not repeat a value, got {list(self.budget_ladder)}.")
        if self.lambda_metric not in ("e_rmse", "e_rmse_l2"):
            raise ValueError(f"lambda_metric must be 'e_rmse' or 'e_rmse_l2', got {self.lambda_metric!r}.")
        if self.lambda_confidence is not None:
            self.lambda_confidence = check_finite("lambda_confidence", self.lambda_confidence)
            if not 0.0 < self.lambda_confidence < 1.0:
                raise ValueError(f"lambda_confidence must be in (0, 1) or None, got {self.lambda_confidence}.")
        if self.probe_num_samples is not None:
            self.probe_num_samples = check_int("probe_num_samples", self.probe_num_samples, 1)
        self.probe_lam = check_finite("probe_lam", self.probe_lam)
        if self.probe_lam <= 0:
            raise ValueError(f"probe_lam must be > 0 (the probe compares it with λ2 = 0), got {self.probe_lam}.")
        if self.shap_value not in ("logit", "log_prob", "prob"):
            raise ValueError(f"shap_value must be 'logit', 'log_prob' or 'prob', got {self.shap_value!r}.")
        self.lam_target = check_finite("lam_target", self.lam_target)
        self.tve_ridge = check_finite("tve_ridge", self.tve_ridge)
        if self.tve_ridge < 0:
            raise ValueError(f"tve_ridge must be >= 0, got {self.tve_ridge}.")
        for name in ("learning_rate", "pretrain_learning_rate"):
            value = check_finite(name, getattr(self, name))
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
            setattr(self, name, value)
        self.alpha = check_finite("alpha", self.alpha)
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1) for the self-explaining models, got {self.alpha}.")
        for name in ("max_accuracy_drop", "goal_e_rmse_gain", "goal_accuracy_drop", "goal_gap_closed"):
            value = check_finite(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1], got {value}.")
            setattr(self, name, value)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be a multiple of patch_size, got image_size={self.image_size}, "
                f"patch_size={self.patch_size}."
            )
        for name in ("show_progress", "linear_head_target"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}.")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (recorded in `results.json`)."""
        return dataclasses.asdict(self)


def quick_config(output_dir: str = "reports/demo-quick", **overrides) -> DemoConfig:
    """Toy sizes: the whole pipeline in well under a minute on 2 cores (for tests and smoke runs, not for figures), on
    one related and one unrelated target.

    Args:
        output_dir (`str`, *optional*, defaults to `"reports/demo-quick"`): the report folder.
        overrides: any other [`DemoConfig`] field.

    Returns:
        [`DemoConfig`]
    """
    settings = {
        "output_dir": output_dir, "hidden_size": 32, "intermediate_size": 64, "base_train_size": 240,
        "train_size": 48, "validation_size": 16, "test_size": 16, "pretrain_steps": 30, "num_train_epochs": 2,
        "batch_size": 16, "label_num_samples": 64, "eval_num_samples": 96, "comparison_num_samples": (64, 96),
        "lambdas": (0.0, 0.5, 1.0), "num_heatmaps": 2, "budget_num_images": 4, "probe_num_images": 4,
        "probe_num_samples": 64, "targets": ("letters_on_photos", "photo_scenes"),
        "note": "toy sizes (--quick): a smoke run of the pipeline, its figures mean nothing",
    }  # fmt: skip
    return DemoConfig(**{**settings, **overrides})


def derived_seed(config: DemoConfig, what: str) -> int:
    """The seed of one use (`what`, a key of `SEED_OFFSETS`): `config.seed` plus its offset."""
    if what not in SEED_OFFSETS:
        raise KeyError(f"unknown seed {what!r}; expected one of {sorted(SEED_OFFSETS)}.")
    return config.seed + SEED_OFFSETS[what]


def safe_file_name(name: str) -> str:
    r"""
    A file-name part for a domain or data set name: `/` becomes `--` (`org/name` → `org--name`), every other
    character outside `[A-Za-z0-9._-]` becomes `-`, and leading dots are dropped, so the result names a file inside
    the report folder, never a path elsewhere.

    Args:
        name (`str`): e.g. `"digits_on_photos"`, `"org/name"` or `"name:config"`.

    Returns:
        `str`: never empty.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", str(name).replace("/", "--")).lstrip(".")
    return safe or "unnamed"
