"""The Gaussian (square) loss family: linear regression, memoryless and sequential (conjugate)."""

from typing import List

from ._indexed import HessianType
from ._loss import REAL, LossFamily
from ._trainer import NewtonTrainer, SequentialBayesianTrainer


class SquareLoss(LossFamily):
    """``1/2 sum_i w_i (m_i - y_i)^2`` on the raw label; second derivative ``w``.

    The objective is quadratic, so one Newton step from anywhere is the optimum: with the
    sequential prior that step is the exact conjugate Gaussian update.
    """

    name = "gaussian"
    label_rule = REAL
    curvature_bound = 1.0

    def value(self, margin, y, w):
        r = margin - y
        return 0.5 * float(w @ (r * r))

    def terms(self, margin, y, w):
        r = margin - y
        wr = w * r
        return 0.5 * float(wr @ r), wr, w

    def terms_small(self, margins, y, w):
        total = 0.0
        d1: List[float] = []
        for m, yi, wi in zip(margins, y, w):
            wr = wi * (m - yi)
            total += wr * (m - yi)
            d1.append(wr)
        return 0.5 * total, d1, list(w)


GAUSSIAN = SquareLoss()


class TrainerSquareLossWithL2(NewtonTrainer):
    """Linear regression: ``1/2 sum_i w_i (x_i.theta + o_i - y_i)^2 + penalty/2 |theta|^2``.

    Labels are used as they are (lambda-learner 0.1.0 turns them into +-1). Hessian after training:
    ``X' W X + penalty * I`` (lambda-learner 0.1.0 returns the logistic one here). Memoryless: the
    job offers ``sequential_bayesian_linear`` instead.

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

    family = GAUSSIAN
    default_hessian_type = HessianType.NONE


class TrainerSequentialBayesianSquareLossWithL2(SequentialBayesianTrainer):
    """One incremental (conjugate Gaussian) update of a linear model, the previous model as the prior.

    Minimises ``1/2 sum_i w_i (x_i.theta + o_i - y_i)^2 + Q(theta)`` with ``Q`` the forgotten prior
    (``QuadraticPrior.sequential``). With ``delta = 1`` the posterior after any sequence of
    mini-batches is batch ridge regression on all of them.

    Examples
    --------
    >>> import numpy as np
    >>> from lambda_core import IndexedDataset, IndexedModel, HessianType
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> first = IndexedDataset(X[:2], y=[1.0, 3.0], w=np.ones(2), offsets=np.zeros(2))
    >>> rest = IndexedDataset(X[2:], y=[5.0], w=np.ones(1), offsets=np.zeros(1))
    >>> cold = IndexedModel(np.zeros(2), np.full(2, 1.0))
    >>> m1, _, _ = TrainerSequentialBayesianSquareLossWithL2(training_data=first, initial_model=cold,
    ...     penalty=1.0, delta=1.0).train()
    >>> m2, _, _ = TrainerSequentialBayesianSquareLossWithL2(training_data=rest, initial_model=m1,
    ...     penalty=1.0, delta=1.0).train()
    >>> ridge = np.linalg.solve(X.T @ X + np.eye(2), X.T @ [1.0, 3.0, 5.0])
    >>> bool(np.allclose(m2.theta, ridge, rtol=1e-12))
    True
    """

    family = GAUSSIAN
