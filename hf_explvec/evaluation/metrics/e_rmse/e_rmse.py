"""E-RMSE: root-mean-square error between model patch attributions and Kernel SHAP values (hf_explvec)."""

import evaluate

from hf_explvec.evaluation import e_rmse, metric_info

_DESCRIPTION = """\
Explanation RMSE, as reported in "Transferring Visual Explainability of Self-Explaining Models through
Task Arithmetic" (arXiv 2507.04380): for each example, the root-mean-square error over its M patches between
the model's attributions for the explained class and the Kernel SHAP values, sqrt(mean_m (a_m - s_m)^2);
the result is the mean of these per-example values. Lower is better; 0 iff the explanations are equal.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): model patch attributions for the explained class, M floats per example.
    references (`list` of `list` of `float`): Kernel SHAP values for the same class and patches, M floats per example.
    normalize (`str`, *optional*): None (default), or "l2" to divide each example's two vectors by their L2 norms.
Returns:
    e_rmse (`float`): mean over examples of the per-example RMSE.
Examples:
    >>> from hf_explvec.evaluation import load_metric, metric_info
    >>> metric = load_metric("e_rmse")
    >>> metric.compute(predictions=[[1.0, 2.0]], references=[[1.0, 0.0]])
    {'e_rmse': 1.4142135623730951}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ERMSE(evaluate.Metric):
    """Explanation RMSE between attributions and Kernel SHAP values."""

    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, normalize=None):
        return {"e_rmse": e_rmse(predictions, references, normalize=normalize)}
