"""The Poisson loss family (count labels, log link), and its sequential Bayesian trainer.

This module plus one registry entry (``_registry.py``) is all it takes to add a trainer.
"""

import math
from typing import List

import numpy as np

from ._loss import COUNT, LossFamily
from ._trainer import SequentialBayesianTrainer

_exp, _inf = math.exp, math.inf


class PoissonLoss(LossFamily):
    """``sum_i w_i (exp(m_i) - y_i m_i)`` (the negative log-likelihood without ``log y_i!``), y >= 0.

    The predicted count is ``exp(m)``. Second derivative ``w exp(m)``: no bound, so the tiny-problem
    solver checks the actual curvature before a low-rank step. A margin so large that ``exp``
    overflows makes the loss infinite and the update fails (the entity keeps its model).
    """

    name = "poisson"
    label_rule = COUNT
    curvature_bound = None

    def value(self, margin, y, w):
        return float(w @ (np.exp(margin) - y * margin))

    def terms(self, margin, y, w):
        mu = np.exp(margin)
        wmu = w * mu
        return float(w @ (mu - y * margin)), wmu - w * y, wmu

    def terms_small(self, margins, y, w):
        total = 0.0
        d1: List[float] = []
        d2: List[float] = []
        for m, yi, wi in zip(margins, y, w):
            try:
                mu = _exp(m)
            except OverflowError:
                mu = _inf
            wmu = wi * mu
            total += wi * (mu - yi * m)
            d1.append(wmu - wi * yi)
            d2.append(wmu)
        return total, d1, d2


POISSON = PoissonLoss()


class TrainerSequentialBayesianPoissonLossWithL2(SequentialBayesianTrainer):
    """One incremental update of a Poisson regression model, the previous model as the prior.

    Minimises ``sum_i w_i (exp(x_i.theta + o_i) - y_i (x_i.theta + o_i)) + Q(theta)`` with ``Q`` the
    forgotten prior (``QuadraticPrior.sequential``); labels are counts (any finite y >= 0).

    Examples
    --------
    >>> import numpy as np
    >>> from lambda_core import IndexedDataset, IndexedModel, HessianType
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    >>> data = IndexedDataset(X, y=[1, 4, 6], w=np.ones(3), offsets=np.zeros(3))
    >>> model, loss, meta = TrainerSequentialBayesianPoissonLossWithL2(training_data=data,
    ...     initial_model=IndexedModel(np.zeros(2), np.full(2, 0.01)), penalty=0.01, delta=1.0).train()
    >>> meta["warnflag"], np.round(np.exp(model.theta), 2).tolist()  # ~1 count, then ~5 times more
    (0, [1.02, 4.91])
    """

    family = POISSON
