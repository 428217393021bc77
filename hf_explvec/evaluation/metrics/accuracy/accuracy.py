"""Top-1 accuracy of predicted class ids (hf_explvec, loadable offline)."""

import evaluate

from hf_explvec.evaluation import accuracy, metric_info

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
    >>> from hf_explvec.evaluation import load_metric, metric_info
    >>> metric = load_metric("accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Fraction of predicted class ids equal to the labels."""

    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, per_example="label")

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
