"""Spearman rank correlation between model patch attributions and Kernel SHAP values (hf_explvec)."""

import evaluate

from hf_explvec.evaluation import metric_info, spearman

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
    >>> from hf_explvec.evaluation import load_metric, metric_info
    >>> metric = load_metric("spearman_attribution")
    >>> metric.compute(predictions=[[1.0, 2.0, 3.0]], references=[[3.0, 2.0, 1.0]])
    {'spearman': -1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpearmanAttribution(evaluate.Metric):
    """Per-example Spearman rank correlation, averaged."""

    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        return {"spearman": spearman(predictions, references)}
