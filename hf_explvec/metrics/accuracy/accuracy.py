"""Top-1 accuracy of predicted class ids (hf_explvec, loadable offline)."""

import datasets
import evaluate

from hf_explvec.evaluation import accuracy

_DESCRIPTION = """\
Top-1 accuracy: the fraction of examples whose predicted class id equals the reference class id.
Shipped with hf_explvec so that it loads by path without network.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> from hf_explvec.evaluation import load_metric
    >>> metric = load_metric("accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
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
class Accuracy(evaluate.Metric):
    """Fraction of predicted class ids equal to the labels."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2507.04380"],
        )

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
