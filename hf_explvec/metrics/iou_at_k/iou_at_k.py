"""IoU@K: overlap of the top-K patches of model attributions and Kernel SHAP values (hf_explvec)."""

import datasets
import evaluate

from hf_explvec.evaluation import iou_at_k

_DESCRIPTION = """\
Intersection over union of the index sets of the K largest model attributions and the K largest Kernel
SHAP values of each example (ties go to the lower patch index, so each set has exactly K patches),
|A & S| / |A | S|; the result is the mean over examples. Higher is better; 1 iff the top-K sets are equal.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): model patch attributions for the explained class, M floats per example.
    references (`list` of `list` of `float`): Kernel SHAP values for the same class and patches, M floats per example.
    k (`int`): size of the top sets, in [1, M]; required.
    absolute (`bool`, *optional*): rank by absolute value instead of signed value (default False).
Returns:
    iou_at_k (`float`): mean over examples of the IoU of the top-K sets, in [0, 1].
Examples:
    >>> from hf_explvec.evaluation import load_metric
    >>> metric = load_metric("iou_at_k")
    >>> metric.compute(predictions=[[3.0, 2.0, 1.0]], references=[[3.0, 1.0, 2.0]], k=2)
    {'iou_at_k': 0.3333333333333333}
"""

_CITATION = """\
@article{yoshikawa2025transferring,
  title={Transferring Visual Explainability of Self-Explaining Models through Task Arithmetic},
  author={Yoshikawa, Yuya and Shimizu, Ryotaro and Kawashima, Takahiro and Saito, Yuki},
  journal={arXiv preprint arXiv:2507.04380},
  year={2025}
}
"""


def _required_k(k):
    if k is None:
        raise ValueError("iou_at_k needs `k`: call compute(predictions=..., references=..., k=K).")
    return k


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IoUAtK(evaluate.Metric):
    """Intersection over union of the top-K patch sets."""

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

    def _compute(self, predictions, references, k=None, absolute=False):
        return {"iou_at_k": iou_at_k(predictions, references, _required_k(k), absolute=absolute)}
