"""Spearman rank correlation between model patch attributions and Kernel SHAP values (hf_explvec)."""

import datasets
import evaluate

from hf_explvec.evaluation import spearman

_DESCRIPTION = """\
Spearman rank correlation, per example, between the model's patch attributions and the Kernel SHAP values
(Pearson correlation of the ranks over the M patches, tied values sharing their average rank); the result is
the mean over examples, in [-1, 1]. An example whose attributions or SHAP values are constant has an undefined
correlation (NaN), which makes the mean NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): model patch attributions for the explained class, M floats per example.
    references (`list` of `list` of `float`): Kernel SHAP values for the same class and patches, M floats per example.
Returns:
    spearman (`float`): mean over examples of the Spearman correlation.
Examples:
    >>> from hf_explvec.evaluation import load_metric
    >>> metric = load_metric("spearman_attribution")
    >>> metric.compute(predictions=[[1.0, 2.0, 3.0]], references=[[3.0, 2.0, 1.0]])
    {'spearman': -1.0}
"""

_CITATION = """\
@article{yoshikawa2025transferring,
  title={Transferring Visual Explainability of Self-Explaining Models through Task Arithmetic},
  author={Yoshikawa, Yuya and Shimizu, Ryotaro and Kawashima, Takahiro and Saito, Yuki},
  journal={arXiv preprint arXiv:2507.04380},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpearmanAttribution(evaluate.Metric):
    """Per-example Spearman rank correlation, averaged."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2507.04380"],
        )

    def _compute(self, predictions, references):
        return {"spearman": spearman(predictions, references)}
