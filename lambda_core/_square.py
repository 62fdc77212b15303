"""Linear regression (square loss) with an L2 penalty."""

from ._indexed import HessianType
from ._trainer import NewtonTrainer


class SquareLoss:
    """Weighted square loss ``1/2 sum_i w_i (m_i - y_i)^2`` on the raw label."""

    def _data_loss(self, margin):
        r = margin - self.data.y
        return 0.5 * float(self.data.w @ (r * r))

    def _data_terms(self, margin):
        r = margin - self.data.y
        w = self.data.w
        wr = w * r
        return 0.5 * float(wr @ r), wr, w


class TrainerSquareLossWithL2(SquareLoss, NewtonTrainer):
    """Linear regression: ``1/2 sum_i w_i (x_i.theta + o_i - y_i)^2 + penalty/2 |theta|^2``.

    Labels are used as they are (lambda-learner 0.1.0 turns them into +-1). Hessian after training:
    ``X' W X + penalty * I`` (lambda-learner 0.1.0 returns the logistic one here).

    Examples
    --------
    >>> import numpy as np
    >>> from lambda_core import IndexedDataset, IndexedModel
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> data = IndexedDataset(X, y=[1.0, 3.0, 5.0], w=np.ones(3), offsets=np.zeros(3))
    >>> model, loss, meta = TrainerSquareLossWithL2(
    ...     training_data=data, initial_model=IndexedModel(np.zeros(2)), penalty=0.0).train()
    >>> np.round(model.theta, 6).tolist()
    [1.0, 2.0]
    """

    default_hessian_type = HessianType.NONE
