"""Logistic regression with an L2 penalty."""

import numpy as np
from scipy.special import expit

from ._indexed import HessianType
from ._trainer import NewtonTrainer


def logistic_labels(y: np.ndarray) -> np.ndarray:
    """Map labels in {0, 1} or {-1, +1} to {-1, +1}; anything else is a ``ValueError``."""
    # y^3 - y vanishes exactly on {-1, 0, 1} (and is NaN for NaN): one vectorised check.
    valid = (y * y - 1.0) * y == 0.0
    if not valid.all():
        raise ValueError(f"Logistic labels must be in {{0, 1}} or {{-1, +1}}; got {y[~valid][0]!r}.")
    return (y == 1.0) * 2.0 - 1.0


class LogisticLoss:
    """Weighted logistic loss ``sum_i w_i log(1 + exp(-y_i m_i))``, overflow-free for any margin."""

    def _data_loss(self, margin):
        return float(self.data.w @ np.logaddexp(0.0, margin * self._neg_y))

    def _data_terms(self, margin):
        neg_z = margin * self._neg_y
        s = expit(neg_z)  # probability of the wrong label
        ws = self.data.w * s
        return float(self.data.w @ np.logaddexp(0.0, neg_z)), self._neg_y * ws, ws - ws * s

    def _labels(self, y):
        labels = logistic_labels(y)
        self._neg_y = -labels
        return labels


class TrainerLogisticLossWithL2(LogisticLoss, NewtonTrainer):
    """Logistic regression: ``sum_i w_i log(1 + exp(-y_i (x_i.theta + o_i))) + penalty/2 |theta|^2``.

    Hessian after training: ``X' D X + penalty * I`` with ``D = diag(w_i p_i (1 - p_i))``.
    Training starts from ``initial_model.theta``; the initial Hessian is not used.

    Examples
    --------
    >>> import numpy as np
    >>> from lambda_core import IndexedDataset, IndexedModel
    >>> X = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    >>> data = IndexedDataset(X, y=[1, 0, 1, 1], w=np.ones(4), offsets=np.zeros(4))
    >>> model, loss, meta = TrainerLogisticLossWithL2(
    ...     training_data=data, initial_model=IndexedModel(np.zeros(2)), penalty=1.0).train()
    >>> meta["warnflag"], round(loss, 4)
    (0, 2.3107)
    """

    default_hessian_type = HessianType.NONE
