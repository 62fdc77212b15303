"""The shared base of the trainer classes: a loss family plus a prior, solved by ``NewtonSolver``.

A trainer class only says which ``LossFamily`` it uses (``family``) and how it builds its
``QuadraticPrior`` from the initial model (``_prior``); holding the data, the public objective
(``loss``, ``gradient``, ``hessian``), training and the returned model are shared here.
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np
from scipy import sparse

from ._indexed import HessianType, IndexedDataset, IndexedModel, model_precision
from ._loss import LossFamily
from ._newton import FAILED, DesignMatrix, NewtonSolver
from ._prior import QuadraticPrior


class NewtonTrainer:
    """Base class of the trainers: ``family`` is the loss, ``_prior`` the penalty; see the module docstring."""

    family: LossFamily
    default_hessian_type = HessianType.NONE

    def __init__(
        self,
        *,
        training_data: IndexedDataset,
        initial_model: IndexedModel,
        hessian_type: Optional[HessianType] = None,
        penalty: float = 0.0,
    ):
        if not (np.isfinite(penalty) and penalty >= 0):
            raise ValueError(f"penalty must be a finite number >= 0, got {penalty}.")
        if hessian_type is None:
            hessian_type = self.default_hessian_type
        if not isinstance(hessian_type, HessianType):
            raise ValueError(f"hessian_type must be a HessianType, got {hessian_type!r}.")
        d = training_data.num_cols
        theta0 = np.zeros(d) if initial_model.theta is None else np.asarray(initial_model.theta, dtype=np.float64)
        if theta0.shape != (d,):
            raise ValueError(f"initial model has {theta0.shape[0]} coefficients but the data has {d} columns.")
        if initial_model.theta is not None and initial_model.hessian_diagonal() is not None:
            self.initial_model = initial_model
        elif initial_model.hessian_diagonal() is None:
            self.initial_model = IndexedModel.with_diagonal_hessian(theta0, np.full(d, float(penalty)))
        else:
            self.initial_model = IndexedModel(theta0, initial_model.hessian)
        self.data = training_data
        self.param_reg = float(penalty)
        self.hessian_type = hessian_type
        self._y = self.family.labels(training_data.y)
        self.prior = self._prior(initial_model, theta0)

    def _prior(self, initial_model: IndexedModel, theta0: np.ndarray) -> QuadraticPrior:
        """The memoryless trainers' ``penalty/2 |theta|^2`` (training starts at ``theta0``)."""
        return QuadraticPrior.ridge_only(theta0, self.param_reg)

    def _initial_precision(self, initial_model: IndexedModel, d: int):
        """(diagonal, None) or (None, full matrix) of the initial model's Hessian (``penalty`` I if none)."""
        return model_precision(initial_model, d, self.param_reg)

    # ----- public objective --------------------------------------------------------------------
    def _margin(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(self.data.X @ theta).reshape(-1) + self.data.offsets

    def loss(self, theta: np.ndarray) -> float:
        """The objective at ``theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        return self.family.value(self._margin(theta), self._y, self.data.w) + self.prior.value(theta)

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """The gradient of the objective at ``theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        _, d1, _ = self.family.terms(self._margin(theta), self._y, self.data.w)
        return np.asarray(self.data.X.T @ d1).reshape(-1) + self.prior.gradient(theta)

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """The full Hessian of the objective at ``theta`` (dense)."""
        theta = np.asarray(theta, dtype=np.float64)
        _, _, d2 = self.family.terms(self._margin(theta), self._y, self.data.w)
        return DesignMatrix(self.data.X, None).weighted_gram(d2) + self.prior.hessian_matrix()

    # ----- training ----------------------------------------------------------------------------
    def train(self, max_iterations: int = 100, tolerance: float = 1e-12) -> Tuple[IndexedModel, float, Dict[str, Any]]:
        """Minimise the objective; return ``(model, loss, metadata)``.

        ``metadata`` has ``warnflag`` (0 converged, 1 iteration limit, 2 failure), ``nit``,
        ``funcalls``, ``task``, ``grad`` and ``inner_solves`` (how many Newton steps each inner
        solve took). On failure the initial model is returned unchanged. ``tolerance`` bounds the
        Newton decrement relative to ``max(1, |loss|)``.
        """
        solver = NewtonSolver(self.family, self.data.X, self._y, self.data.w, self.data.offsets, self.prior,
                              self.hessian_type)
        theta, hessian, loss, meta = solver.solve(max_iterations, tolerance)
        if meta["warnflag"] == FAILED:
            return self.initial_model, loss, meta
        if self.hessian_type is HessianType.IDENTITY:
            return IndexedModel.with_diagonal_hessian(theta, np.ones(len(theta))), loss, meta
        if self.hessian_type is HessianType.DIAGONAL:
            return IndexedModel.with_diagonal_hessian(theta, hessian), loss, meta
        return IndexedModel(theta, None if hessian is None else sparse.csc_matrix(hessian)), loss, meta


class SequentialBayesianTrainer(NewtonTrainer):
    """A trainer whose prior is the initial model, forgotten by ``delta``: see ``QuadraticPrior.sequential``.

    ``delta`` in [0, 1] is the forgetting factor (1 keeps the prior exactly, 0 forgets it);
    ``forgetting_target`` is where forgetting pulls (``"zero"``, lambda-learner's rule, by default).
    """

    default_hessian_type = HessianType.FULL

    def __init__(self, *, training_data, initial_model, hessian_type=None, penalty=0.0, delta=0.8,
                 forgetting_target: str = "zero", reference: Optional[Tuple[np.ndarray, np.ndarray]] = None):
        if not (np.isfinite(delta) and 0.0 <= delta <= 1.0):
            raise ValueError(f"delta (the forgetting factor) must be in [0, 1], got {delta}.")
        self.param_delta = float(delta)
        self.forgetting_target = forgetting_target
        self.reference = reference
        super().__init__(
            training_data=training_data, initial_model=initial_model, hessian_type=hessian_type, penalty=penalty
        )

    def _prior(self, initial_model, theta0):
        p_diag, p_full = self._initial_precision(initial_model, len(theta0))
        return QuadraticPrior.sequential(theta0, p_diag, p_full, self.param_reg, self.param_delta,
                                         self.forgetting_target, self.reference)
