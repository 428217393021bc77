"""The `evaluate` modules shipped with the package: their names, paths, shared `MetricInfo`, and a loader.

Each module is a script `hf_explvec/evaluation/metrics/<name>/<name>.py` that `evaluate.load` imports by path
(no network); the scripts compute with the library's own functions (`from hf_explvec.evaluation import ...`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["METRIC_NAMES", "PAPER_CITATION", "load_metric", "metric_info", "metric_path"]

#: Names of the `evaluate` modules shipped in `hf_explvec/evaluation/metrics/`.
METRIC_NAMES = ("accuracy", "e_rmse", "iou_at_k", "spearman_attribution")

_METRICS_DIR = Path(__file__).resolve().parent

PAPER_CITATION = """\
@article{yoshikawa2025transferring,
  title={Transferring Visual Explainability of Self-Explaining Models through Task Arithmetic},
  author={Yoshikawa, Yuya and Shimizu, Ryotaro and Kawashima, Takahiro and Saito, Yuki},
  journal={arXiv preprint arXiv:2507.04380},
  year={2025}
}
"""


def metric_path(name: str) -> str:
    """Path of the `evaluate` module script `hf_explvec/evaluation/metrics/<name>/<name>.py` shipped with the package.

    Args:
        name (`str`): One of [`METRIC_NAMES`].

    Returns:
        `str`: the absolute path of the script.

    Raises:
        `TypeError`: `name` is not a string.
        `ValueError`: an unknown name (the message lists the known ones).
        `FileNotFoundError`: the script is missing from the installed package.
    """
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, one of {list(METRIC_NAMES)}; got {type(name).__name__}.")
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; expected one of {list(METRIC_NAMES)}.")
    path = _METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"The metric script {path} is missing from the installed package.")
    return str(path)


def metric_info(description: str, inputs_description: str, per_example: str = "sequence"):
    """The `evaluate.MetricInfo` shared by the shipped metric scripts.

    Args:
        description (`str`): What the metric measures.
        inputs_description (`str`): The arguments of `compute`.
        per_example (`str`, *optional*, defaults to `"sequence"`): `"sequence"` for M floats per example
            (attribution metrics), `"label"` for one class id per example (accuracy).

    Returns:
        `evaluate.MetricInfo`: with the paper's citation and features `predictions` / `references`.
    """
    import datasets
    import evaluate

    if per_example not in ("sequence", "label"):
        raise ValueError(f"`per_example` must be 'sequence' or 'label', got {per_example!r}.")
    value = datasets.List(datasets.Value("float64")) if per_example == "sequence" else datasets.Value("int64")
    return evaluate.MetricInfo(
        description=description,
        citation=PAPER_CITATION,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": value, "references": value}),
        reference_urls=["https://arxiv.org/abs/2507.04380"],
    )


def load_metric(name: str, **load_kwargs: Any):
    """Loads one of the `evaluate` modules shipped in `hf_explvec/evaluation/metrics/`, by path, without network.

    `evaluate.load` with the path of a local script never contacts the Hub (it only asks the Hub for bare names
    such as `"accuracy"`), so no environment variable is needed or set. As for any local script, `evaluate`
    copies it into its dynamic-modules cache (`$HF_MODULES_CACHE/evaluate_modules/metrics/<name>/<hash>/`,
    default `~/.cache/huggingface/modules`) and imports it from there; the script imports `hf_explvec`, so the
    installed package does the computation.

    Args:
        name (`str`):
            One of `"accuracy"`, `"e_rmse"`, `"iou_at_k"`, `"spearman_attribution"`.
        load_kwargs:
            Passed to `evaluate.load` (e.g. `keep_in_memory=True`, `cache_dir`, `experiment_id`).

    Returns:
        `evaluate.EvaluationModule`: call `.compute(predictions=..., references=..., **options)`; the
        attribution metrics take per-example lists of floats (model attributions as predictions, Kernel SHAP
        values as references).

    Raises:
        `ValueError`: an unknown name (the message lists the known ones); see [`metric_path`].
    """
    path = metric_path(name)  # before importing evaluate: a typo fails fast
    import evaluate  # deferred: importing evaluate pulls in datasets

    logger.debug("loading evaluate module %s from %s", name, path)
    return evaluate.load(path, **load_kwargs)
