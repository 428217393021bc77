"""IoU@K: overlap of the top-K patches of model attributions and Kernel SHAP values (hf_explvec)."""

import evaluate

from hf_explvec.evaluation import iou_at_k, metric_info

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
    >>> from hf_explvec.evaluation import load_metric, metric_info
    >>> metric = load_metric("iou_at_k")
    >>> metric.compute(predictions=[[3.0, 2.0, 1.0]], references=[[3.0, 1.0, 2.0]], k=2)
    {'iou_at_k': 0.3333333333333333}
"""


def _required_k(k):
    if k is None:
        raise ValueError("iou_at_k needs `k`: call compute(predictions=..., references=..., k=K).")
    return k


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IoUAtK(evaluate.Metric):
    """Intersection over union of the top-K patch sets."""

    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, k=None, absolute=False):
        return {"iou_at_k": iou_at_k(predictions, references, _required_k(k), absolute=absolute)}
