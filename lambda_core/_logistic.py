"""Logistic regression with an L2 penalty."""

import numpy as np
from scipy.special import expit

from ._indexed import HessianType
from ._trainer import NewtonTrainer


def logistic_labels(y: np.ndarray) -> np.ndarray:
    """Map labels in {0, 1} or {-1, +1} to {-1, +1}; anything else is a ``ValueError``."""
    positive = y == 1.0
    if not np.all(positive | (y == 0.0) | (y == -1.0)):
        bad = y[~(positive | (y == 0.0) | (y == -1.0))][0]
        raise ValueError(f"Logistic labels must be in {{0, 1}} or {{-1, +1}}; got {bad!r}.")
    return np.where(positive, 1.0, -1.0)


class LogisticLoss:
    """Weighted logistic loss ``sum_i w_i log(1 + exp(-y_i m_i))``, overflow-free for any margin."""

    def _data_loss(self, margin):
        return float(self.data.w @ np.logaddexp(0.0, -self._y * margin))

    def _data_terms(self, margin):
        z = self._y * margin
        w = self.data.w
        s = expit(-z)  # probability of the wrong label
        return float(w @ np.logaddexp(0.0, -z)), -w * self._y * s, w * s * (1.0 - s)

    def _labels(self, y):
        return logistic_labels(y)


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
