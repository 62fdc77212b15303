"""The prior: the sequential Bayesian one with forgetting, in one place.

Every trainer's penalty is a quadratic

    Q(theta) = scale/2 (theta - center)' P (theta - center) + 1/2 sum_j ridge_j (theta_j - anchor_j)^2

``center``/``P`` are the previous posterior (mean, precision: a diagonal vector or a full matrix),
``scale`` is the forgetting factor ``delta`` and the second term is what forgetting pulls towards,
with ``ridge = (1 - delta) * reference precision``. In natural parameters the prior is the
posterior raised to the power ``delta`` times a reference Gaussian raised to ``1 - delta``:
``delta = 1`` keeps the posterior exactly (no forgetting, whatever the target), ``delta = 0``
replaces it by the reference. The forgetting target picks the reference:

* ``"zero"`` (lambda-learner 0.1.0): mean 0, precision ``penalty``. This is the seed's
  ``(1-delta) penalty/2 |theta|^2 + delta/2 (theta-theta0)' H0 (theta-theta0)``.
* ``"initial"``: the entity's initial model (its means and precisions before its first update;
  ``penalty`` and 0 for coefficients it did not have): forgetting returns to what was known offline.
* ``"variance"``: mean ``theta0`` itself, precision ``penalty``: the mean is kept and only the
  precision relaxes, as in a random walk of the coefficients.

The memoryless trainers use ``scale = 0``, ``ridge = penalty``, ``anchor = 0``.

``forgetting_factor`` turns elapsed event time into ``delta``.
"""

import math
from typing import Optional, Tuple

import numpy as np

FORGETTING_TARGETS = ("zero", "initial", "variance")
#: The forgetting target the job uses unless told otherwise (measured: see the README): change it here.
#: The trainer classes keep lambda-learner's "zero" as their default.
DEFAULT_FORGETTING_TARGET = "variance"


def forgetting_factor(elapsed_ms: float, interval_ms: float, factor: float,
                      half_life_ms: Optional[float] = None) -> float:
    """``delta`` for a prior last updated ``elapsed_ms`` of event time ago.

    ``factor`` is the weight the past keeps per ``interval_ms`` (the mini-batch length): an entity
    updated in every interval forgets exactly as lambda-learner's per-update ``delta``; one updated
    ``k`` intervals later keeps ``factor ** k``. A ``half_life_ms`` replaces ``factor`` by
    ``2 ** (-interval_ms / half_life_ms)`` (the past's weight halves every half-life). ``factor = 1``
    (or an infinite half-life) gives exactly 1: no forgetting. No elapsed time gives 1 as well.

    >>> forgetting_factor(120_000, 60_000, 0.8), forgetting_factor(30_000, 60_000, 1.0)
    (0.6400000000000001, 1.0)
    >>> forgetting_factor(3_600_000, 60_000, 0.5, half_life_ms=3_600_000)
    0.5
    """
    if elapsed_ms <= 0:
        return 1.0
    if half_life_ms is not None:
        return 1.0 if math.isinf(half_life_ms) else 2.0 ** (-elapsed_ms / half_life_ms)
    if factor == 1.0:
        return 1.0
    return factor ** (elapsed_ms / interval_ms)


def forgetting_pull(mean, penalty: float, delta: float, target: str = "zero",
                    reference: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """``(ridge, anchor)`` of ``QuadraticPrior.sequential``: what forgetting by ``delta`` pulls the
    posterior with means ``mean`` towards (see the module docstring). ``ridge`` is a number, or a
    vector for target ``"initial"`` with a reference; ``anchor`` None (zero), ``mean`` itself (target
    ``"variance"``, so a list stays a list) or a vector. The plain-Python update asks this directly,
    on lists, without building the prior's arrays."""
    forget = 1.0 - delta
    if target == "zero" or delta == 1.0:
        return forget * penalty, None
    if target == "variance":
        return forget * penalty, mean
    if target == "initial":
        if reference is None:
            return forget * penalty, None
        d = len(mean)
        ref_mean, ref_precision = reference
        r = len(ref_mean)
        anchor, ridge = np.zeros(d), np.full(d, float(penalty))
        anchor[:r] = ref_mean
        ridge[:r] = ref_precision
        return forget * ridge, anchor
    raise ValueError(f"forgetting target must be one of {', '.join(FORGETTING_TARGETS)}, got {target!r}.")


class QuadraticPrior:
    """``Q(theta)`` above. ``precision`` is a diagonal vector or None, ``matrix`` a full precision or
    None (exactly one is given); ``ridge`` a number or a vector; ``anchor`` a vector or None (zero)."""

    __slots__ = ("center", "precision", "matrix", "scale", "ridge", "anchor", "_scalar_ridge", "_scaled")

    def __init__(self, center: np.ndarray, precision: Optional[np.ndarray], matrix: Optional[np.ndarray],
                 scale: float, ridge, anchor: Optional[np.ndarray] = None):
        self.center = center
        self.precision = precision
        self.matrix = matrix
        self.scale = float(scale)
        self.ridge = ridge
        self.anchor = anchor
        self._scalar_ridge = np.ndim(ridge) == 0
        self._scaled = None  # scale * precision (``_scaled_precision``), computed once when first asked

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def ridge_only(cls, center: np.ndarray, penalty: float) -> "QuadraticPrior":
        """``penalty/2 |theta|^2``, the memoryless trainers' prior (``center`` is only where training starts)."""
        return cls(center, np.zeros(len(center)), None, 0.0, float(penalty))

    @classmethod
    def sequential(cls, mean: np.ndarray, precision: Optional[np.ndarray], matrix: Optional[np.ndarray],
                   penalty: float, delta: float, target: str = "zero",
                   reference: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> "QuadraticPrior":
        """The previous posterior ``N(mean, precision^-1)`` forgotten by ``delta`` towards ``target``.

        ``reference`` is the initial model's ``(means, precisions)`` for target ``"initial"`` (over
        the first coefficients; the rest are 0 with precision ``penalty``); None means the cold prior.
        """
        if matrix is None and precision is None:
            precision = np.full(len(mean), float(penalty))
        ridge, anchor = forgetting_pull(mean, penalty, delta, target, reference)
        return cls(mean, precision, matrix, delta, ridge, anchor)

    def _scaled_precision(self) -> np.ndarray:
        """``scale * precision`` of a diagonal prior, computed once (a prior is not changed after it
        is built: the solver evaluates it several times per Newton step)."""
        if self._scaled is None:
            self._scaled = self.scale * self.precision
        return self._scaled

    # ----- what the solver asks ----------------------------------------------------------------
    @property
    def diagonal_only(self) -> bool:
        """Whether the prior couples no two coefficients."""
        return self.matrix is None

    def _ridge_dev(self, theta: np.ndarray) -> np.ndarray:
        return theta if self.anchor is None else theta - self.anchor

    def value_and_gradient(self, theta: np.ndarray) -> Tuple[float, np.ndarray]:
        """``(Q(theta), its gradient)`` from one set of deviations: what every evaluation of the
        solver asks for."""
        rdev = self._ridge_dev(theta)
        ridge_grad = self.ridge * rdev
        value = 0.5 * self.ridge * float(rdev @ rdev) if self._scalar_ridge else 0.5 * float(rdev @ ridge_grad)
        if not self.scale:
            return value, ridge_grad
        dev = theta - self.center
        if self.matrix is None:
            spdev = dev * self._scaled_precision()
            return value + 0.5 * float(dev @ spdev), ridge_grad + spdev
        pdev = self.matrix @ dev
        return value + 0.5 * self.scale * float(dev @ pdev), ridge_grad + self.scale * pdev

    def value(self, theta: np.ndarray) -> float:
        """``Q(theta)``."""
        return self.value_and_gradient(theta)[0]

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """The gradient of ``Q``."""
        return self.value_and_gradient(theta)[1]

    def hessian_diagonal(self) -> np.ndarray:
        """The diagonal of ``Q``'s Hessian (a new array)."""
        if self.matrix is None:
            return self.ridge + self._scaled_precision()
        return self.ridge + self.scale * np.diagonal(self.matrix)

    def hessian_matrix(self, cols: Optional[np.ndarray] = None) -> np.ndarray:
        """``Q``'s Hessian as a dense matrix (restricted to ``cols``)."""
        if self.matrix is None:
            diag = self.hessian_diagonal()
            return np.diag(diag if cols is None else diag[cols])
        R = self.scale * (self.matrix if cols is None else self.matrix[np.ix_(cols, cols)])
        R[np.diag_indices_from(R)] += self.ridge if np.ndim(self.ridge) == 0 or cols is None else self.ridge[cols]
        return R

    def restricted(self, cols: np.ndarray) -> "QuadraticPrior":
        """The prior of a diagonal ``Q`` on the coordinates ``cols`` only (they decouple)."""
        ridge = self.ridge if np.ndim(self.ridge) == 0 else self.ridge[cols]
        anchor = None if self.anchor is None else self.anchor[cols]
        return QuadraticPrior(self.center[cols], self.precision[cols], None, self.scale, ridge, anchor)

    def minimiser(self) -> np.ndarray:
        """The minimiser of a diagonal ``Q``, coordinate by coordinate: what a coefficient the data
        does not touch becomes. With no prior on a coordinate it keeps its ``center``."""
        sp = self._scaled_precision()
        numer = sp * self.center
        if self.anchor is not None:
            numer = numer + self.ridge * self.anchor
        denom = self.ridge + sp
        safe = denom > 0
        return np.where(safe, numer / np.where(safe, denom, 1.0), self.center)

    def linear_term(self) -> np.ndarray:
        """``b`` in ``grad Q(theta) = H_Q theta - b`` (a diagonal ``Q``)."""
        b = self._scaled_precision() * self.center
        if self.anchor is not None:
            b = b + self.ridge * self.anchor
        return b
