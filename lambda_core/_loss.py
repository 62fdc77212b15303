"""What every loss family gives the solver: labels it accepts, value, gradient and curvature terms.

A family is one object (``LossFamily`` subclass, one per module: ``_logistic.py``, ``_square.py``,
``_poisson.py``). For margins ``m_i = x_i . theta + o_i`` it defines the weighted data loss
``sum_i w_i l(y_i, m_i)`` and, per example, its first and second derivative in the margin. The
solver (``_newton.py``) only ever sees these three things, so a new family is one class.

Each family has two forms of the same definition: ``terms`` (numpy, vectorised) for the general
solver and ``terms_small`` (plain Python over lists) for the tiny-problem solver of ``_small.py``;
``tests/test_fast_paths.py`` checks on random margins that the two agree to the last bit or to
rounding.
"""

import math
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple

import numpy as np


class LabelRule:
    """Which labels a family accepts: ``accepts(value)`` and the sentence a rejection gives."""

    def __init__(self, name: str, requirement: str):
        self.name = name
        self.requirement = requirement

    def accepts(self, value: float) -> bool:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def check(self, y: np.ndarray, family: str = "") -> None:
        """``ValueError`` naming the first label this rule rejects (and the family that needs it)."""
        ok = self.accepts_array(y)
        if not ok.all():
            what = f"{family.capitalize()} labels" if family else "Labels"
            raise ValueError(f"{what} must be {self.requirement}; got {float(y[~ok][0])!r}.")

    def accepts_array(self, y: np.ndarray) -> np.ndarray:
        return np.fromiter((self.accepts(v) for v in y), dtype=bool, count=len(y))

    def __repr__(self) -> str:
        return f"LabelRule({self.name!r})"


class _BinaryLabels(LabelRule):
    def accepts(self, value: float) -> bool:
        return value == 1.0 or value == 0.0 or value == -1.0

    def accepts_array(self, y: np.ndarray) -> np.ndarray:
        # |y| is 1, or y is 0: false for NaN and infinities, and no product to overflow (a label of
        # 1e200 is rejected without a warning).
        return (y == 0.0) | (np.abs(y) == 1.0)


class _RealLabels(LabelRule):
    def accepts(self, value: float) -> bool:
        return math.isfinite(value)

    def accepts_array(self, y: np.ndarray) -> np.ndarray:
        return np.isfinite(y)


class _CountLabels(LabelRule):
    def accepts(self, value: float) -> bool:
        return math.isfinite(value) and value >= 0.0

    def accepts_array(self, y: np.ndarray) -> np.ndarray:
        return np.isfinite(y) & (y >= 0.0)


BINARY = _BinaryLabels("binary", "in {0, 1} or {-1, +1}")
REAL = _RealLabels("real", "finite numbers")
COUNT = _CountLabels("count", "finite numbers >= 0 (counts)")


class LossFamily(ABC):
    """One loss family. ``labels`` turns raw labels into what ``terms`` takes (``y`` below).

    ``curvature_bound`` is an upper bound of the second derivative per unit weight, or None when
    there is none (the tiny-problem solver then checks the actual curvature at each step before it
    trusts its low-rank Newton step).
    """

    name: str = ""
    label_rule: LabelRule = REAL
    curvature_bound: Optional[float] = None

    def labels(self, y: np.ndarray) -> np.ndarray:
        """Validated labels in the form ``terms`` uses; ``ValueError`` for labels the family rejects."""
        self.label_rule.check(y, self.name)
        return y

    @abstractmethod
    def value(self, margin: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
        """``sum_i w_i l(y_i, m_i)``."""

    @abstractmethod
    def terms(self, margin: np.ndarray, y: np.ndarray, w: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
        """(weighted loss, first derivatives, second derivatives) per example."""

    @abstractmethod
    def terms_small(self, margins: Sequence[float], y: Sequence[float],
                    w: Sequence[float]) -> Tuple[float, List[float], List[float]]:
        """``terms`` on lists of floats, in plain Python (tiny problems)."""

    def small_labels(self, labels: Sequence[float]) -> Optional[List[float]]:
        """``labels`` for lists (plain Python); None when one is rejected (the caller then takes the
        general path, which raises the family's ``ValueError``)."""
        accepts = self.label_rule.accepts
        for v in labels:
            if not accepts(v):
                return None
        return list(labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
