"""The logistic loss family, and logistic regression with an L2 penalty."""

import math
from typing import List, Sequence

import numpy as np
from scipy.special import expit

from ._indexed import HessianType
from ._loss import BINARY, LossFamily
from ._trainer import NewtonTrainer

_exp, _log1p = math.exp, math.log1p
_LOG2 = math.log(2.0)
# math.exp raises OverflowError above ~709.78 where C returns inf. Below -709 the sigmoid is under
# 1e-307 and is taken as 0 (C's 1/(1+exp(-z)) reaches 0 a little further out).
_EXP_MAX = 709.0


# From this many margins on, exp then log1p (numpy's vectorised loops) beats logaddexp (not
# vectorised), by ~4x on 1000 margins; below it the one call is cheaper (measured: see the README).
_SOFTPLUS_VECTORISED_MIN = 64


def _softplus_sum(w: np.ndarray, z: np.ndarray) -> float:
    """``sum_i w_i log(1 + exp(z_i))``, overflow-free for any ``z``."""
    if len(z) >= _SOFTPLUS_VECTORISED_MIN:
        with np.errstate(over="ignore", invalid="ignore"):  # invalid: a weight of 0 times an overflowed inf
            value = float(w @ np.log1p(np.exp(z)))
        if math.isfinite(value):
            return value
        # exp overflowed (a margin above ~709), or a weight or margin is not finite: logaddexp is exact there.
    return float(w @ np.logaddexp(0.0, z))


class LogisticLoss(LossFamily):
    """``sum_i w_i log(1 + exp(-y_i m_i))`` with y in {-1, +1}, overflow-free for any margin.

    Its labels (what ``terms`` takes) are ``-y``: ``terms`` works with ``z = -y m``, the margin of
    the wrong label. Second derivative ``w p (1 - p) <= w / 4``.
    """

    name = "logistic"
    label_rule = BINARY
    curvature_bound = 0.25

    def labels(self, y: np.ndarray) -> np.ndarray:
        """``-y`` in {-1, +1} for labels in {0, 1} or {-1, +1} (``ValueError`` for any other)."""
        BINARY.check(y, "logistic")
        return np.where(y == 1.0, -1.0, 1.0)

    def value(self, margin, y, w):
        return _softplus_sum(w, margin * y)

    def terms(self, margin, y, w):
        neg_z = margin * y
        s = expit(neg_z)  # probability of the wrong label
        ws = w * s
        return _softplus_sum(w, neg_z), y * ws, ws - ws * s

    def small_labels(self, labels: Sequence[float]):
        out = []
        for v in labels:
            if v == 1.0:
                out.append(-1.0)
            elif v == 0.0 or v == -1.0:
                out.append(1.0)
            else:
                return None
        return out

    def terms_small(self, margins, y, w):
        # ``expit`` and ``logaddexp(0, z)`` written as scipy and numpy compute them, so each term is
        # the same float as in ``terms`` below ``_SOFTPLUS_VECTORISED_MIN`` margins (the tiny problems
        # this form serves) and equal to rounding above.
        total = 0.0
        d1: List[float] = []
        d2: List[float] = []
        for m, ny, wi in zip(margins, y, w):
            z = m * ny
            if z > 0.0:
                loss = z + _log1p(_exp(-z))
            elif z < 0.0:
                loss = _log1p(_exp(z))
            elif z == 0.0:
                loss = _LOG2
            else:  # NaN stays NaN, as in numpy
                loss = z
            s = 1.0 / (1.0 + _exp(-z)) if z > -_EXP_MAX else (z if z != z else 0.0)
            total += wi * loss
            ws = wi * s
            d1.append(ny * ws)
            d2.append(ws - ws * s)
        return total, d1, d2


LOGISTIC = LogisticLoss()


class TrainerLogisticLossWithL2(NewtonTrainer):
    """Logistic regression: ``sum_i w_i log(1 + exp(-y_i (x_i.theta + o_i))) + penalty/2 |theta|^2``.

    Hessian after training: ``X' D X + penalty * I`` with ``D = diag(w_i p_i (1 - p_i))``.
    Training starts from ``initial_model.theta``; the initial Hessian is not used (memoryless: the
    job offers ``sequential_bayesian_logistic`` instead).

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

    family = LOGISTIC
    default_hessian_type = HessianType.NONE
