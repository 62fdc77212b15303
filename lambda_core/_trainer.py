"""Shared base of the trainers: a convex objective = data loss + quadratic prior, solved by Newton.

Every trainer here minimises

    f(theta) = sum_i w_i * loss(y_i, x_i . theta + o_i)
               + ridge/2 * |theta|^2 + scale/2 * (theta - theta0)' P (theta - theta0)

and differs only in ``loss`` (logistic or square) and in how it sets ``ridge``, ``scale`` and the
prior precision ``P``. The objective is smooth and convex, with a closed-form Hessian, so damped
Newton steps on dense small matrices reach the optimum in a handful of iterations: far fewer
function calls than L-BFGS and no per-call sparse-matrix construction.
"""

import math
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Tuple

import numpy as np
from scipy import sparse
from scipy.linalg.lapack import dposv as _dposv

from ._indexed import HessianType, IndexedDataset, IndexedModel

# Below this many matrix entries (or above this density) the active design matrix is made dense.
_DENSE_MAX_ENTRIES = 60_000
_DENSE_MIN_DENSITY = 0.25
# A dense problem this wide (k columns, at most k/4 rows) takes Newton-CG steps too: forming and
# factoring the k x k Hessian costs O(k^3) per step, while the Jacobi-preconditioned Hessian is the
# identity plus a rank-n term, so CG needs about n + 1 products of O(n k) each.
_WIDE_MIN_COLUMNS = 256
_ARMIJO = 1e-4
_MAX_HALVINGS = 60

CONVERGED, ITERATION_LIMIT, FAILED = 0, 1, 2


def line_search_exhausted(decrement: float, loss: float) -> Tuple[int, str]:
    """(warnflag, task) when backtracking finds no decrease any more: that is the optimum to machine
    precision if the predicted decrease is negligible, else the line search failed."""
    if decrement <= 1e-6 * max(1.0, abs(loss)):
        return CONVERGED, "CONVERGENCE: NO FURTHER DECREASE AT MACHINE PRECISION"
    return FAILED, "ABNORMAL_TERMINATION_IN_LNSRCH"


class _DesignMatrix:
    """The training matrix restricted to the columns the optimiser works on, in the cheapest form.

    Small or dense problems use a dense array and exact Newton steps (BLAS). Wide sparse ones keep
    CSR and are solved matrix-free (Newton-CG), because forming ``X' D X`` there costs more than
    the handful of Hessian-vector products a well-conditioned step needs.
    """

    def __init__(self, X, columns: Optional[np.ndarray], allow_sparse: bool = True):
        if sparse.issparse(X):
            if columns is not None:
                X = X.tocsc()[:, columns]
            n, k = X.shape
            if not allow_sparse or n * k <= _DENSE_MAX_ENTRIES or X.nnz >= _DENSE_MIN_DENSITY * n * k:
                X = X.toarray()
            else:
                X = X.tocsr()
        elif columns is not None:
            X = X[:, columns]
        self.X = X
        self.dense = isinstance(X, np.ndarray)
        if not self.dense:
            self._XT = X.T.tocsr()

    def dot(self, v: np.ndarray) -> np.ndarray:
        return self.X @ v

    def rdot(self, r: np.ndarray) -> np.ndarray:
        """X' r."""
        return (r @ self.X) if self.dense else (self._XT @ r)

    def weighted_gram(self, d2: np.ndarray) -> np.ndarray:
        """X' diag(d2) X as a dense matrix."""
        if self.dense:
            return self.X.T @ (self.X * d2[:, None])
        scaled = sparse.csr_matrix(
            (self.X.data * np.repeat(d2, np.diff(self.X.indptr)), self.X.indices, self.X.indptr), shape=self.X.shape
        )
        return (self._XT @ scaled).toarray()

    def squared_column_dot(self, d2: np.ndarray) -> np.ndarray:
        """diag(X' diag(d2) X), without forming the Gram matrix."""
        if self.dense:
            return d2 @ (self.X * self.X)
        X = self.X
        squared = sparse.csr_matrix((X.data * X.data, X.indices, X.indptr), shape=X.shape)
        return np.asarray(squared.T @ d2).reshape(-1)


class NewtonTrainer(ABC):
    """Base class of the trainers: holds the data and the prior, and runs the Newton solver.

    Subclasses set the loss with ``_data_terms``/``_data_loss`` and the prior with
    ``_prior_parameters``; the solver, the Hessian bookkeeping and the metadata are shared.
    """

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
        self._y = self._labels(training_data.y)
        self._ridge, self._scale, self._p_diag, self._p_full = self._prior_parameters(initial_model, d)
        self._theta0 = theta0

    # ----- what subclasses define -------------------------------------------------------------
    def _labels(self, y: np.ndarray) -> np.ndarray:
        return y

    def _prior_parameters(self, initial_model: IndexedModel, d: int):
        """(ridge, scale, precision diagonal or None, full precision or None)."""
        return self.param_reg, 0.0, np.zeros(d), None

    @abstractmethod
    def _data_terms(self, margin: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
        """Weighted loss, its first and second derivative per example, at these margins."""

    @abstractmethod
    def _data_loss(self, margin: np.ndarray) -> float:
        """Weighted loss at these margins (the line search only needs the value)."""

    # ----- public objective --------------------------------------------------------------------
    def _prior_value(self, theta: np.ndarray) -> float:
        value = 0.5 * self._ridge * float(theta @ theta)
        if self._scale:
            dev = theta - self._theta0
            pdev = dev * self._p_diag if self._p_full is None else self._p_full @ dev
            value += 0.5 * self._scale * float(dev @ pdev)
        return value

    def _prior_gradient(self, theta: np.ndarray) -> np.ndarray:
        grad = self._ridge * theta
        if self._scale:
            dev = theta - self._theta0
            grad = grad + self._scale * (dev * self._p_diag if self._p_full is None else self._p_full @ dev)
        return grad

    def _margin(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(self.data.X @ theta).reshape(-1) + self.data.offsets

    def loss(self, theta: np.ndarray) -> float:
        """The objective at ``theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        return self._data_loss(self._margin(theta)) + self._prior_value(theta)

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """The gradient of the objective at ``theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        _, d1, _ = self._data_terms(self._margin(theta))
        X = self.data.X
        data_grad = np.asarray(X.T @ d1).reshape(-1)
        return data_grad + self._prior_gradient(theta)

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """The full Hessian of the objective at ``theta`` (dense)."""
        theta = np.asarray(theta, dtype=np.float64)
        _, _, d2 = self._data_terms(self._margin(theta))
        return _DesignMatrix(self.data.X, None).weighted_gram(d2) + self._prior_matrix(np.arange(len(theta)))

    def _prior_matrix(self, cols: np.ndarray) -> np.ndarray:
        if self._p_full is not None:
            R = self._scale * self._p_full[np.ix_(cols, cols)]
            R[np.diag_indices_from(R)] += self._ridge
            return R
        return np.diag(self._ridge + self._scale * self._p_diag[cols])

    # ----- training ----------------------------------------------------------------------------
    def train(self, max_iterations: int = 100, tolerance: float = 1e-12) -> Tuple[IndexedModel, float, Dict[str, Any]]:
        """Minimise the objective; return ``(model, loss, metadata)``.

        ``metadata`` has ``warnflag`` (0 converged, 1 iteration limit, 2 failure), ``nit``,
        ``funcalls``, ``task`` and ``grad``. On failure the initial model is returned unchanged.
        ``tolerance`` bounds the Newton decrement relative to ``max(1, |loss|)``.
        """
        theta, diag_or_full, loss, meta = self._solve(max_iterations, tolerance)
        if meta["warnflag"] == FAILED:
            return self.initial_model, loss, meta
        if self.hessian_type is HessianType.IDENTITY:
            return IndexedModel.with_diagonal_hessian(theta, np.ones(len(theta))), loss, meta
        if self.hessian_type is HessianType.DIAGONAL:
            return IndexedModel.with_diagonal_hessian(theta, diag_or_full), loss, meta
        hessian = None if self.hessian_type is HessianType.NONE else sparse.csc_matrix(diag_or_full)
        return IndexedModel(theta, hessian), loss, meta

    def _solve(self, max_iterations: int, tolerance: float):
        """Run Newton; return (theta, Hessian diagonal or full matrix per hessian_type, loss, metadata)."""
        X = self.data.X
        n, d = X.shape
        diagonal_prior = self._p_full is None
        used = None
        if sparse.issparse(X):
            if X.format not in ("csr", "csc"):
                X = X.tocsr()
            if diagonal_prior:
                # Which columns the data uses, read off the sparse structure (cheaper than a dense scan).
                used = np.diff(X.indptr) > 0 if X.format == "csc" else np.bincount(X.indices, minlength=d) > 0
            if n * d <= _DENSE_MAX_ENTRIES:
                X = X.toarray()
        elif diagonal_prior:
            used = np.any(X, axis=0)
        if diagonal_prior:
            # Columns absent from the data decouple under a diagonal prior: solve only the rest.
            if used.all():
                active, columns = np.arange(d), None
            else:
                active = np.flatnonzero(used)
                columns = active
            p_act = self._p_diag if columns is None else self._p_diag[active]
            r_diag = self._ridge + self._scale * p_act
        else:
            active, columns = np.arange(d), None
            P = self._p_full
            r_full = self._prior_matrix(active)
        design = _DesignMatrix(X, columns, allow_sparse=diagonal_prior)
        offsets = self.data.offsets
        center = self._theta0 if columns is None else self._theta0[active]
        ridge, scale = self._ridge, self._scale
        k = len(active)

        def evaluate(t):
            margin = design.dot(t) + offsets
            data_f, d1, d2 = self._data_terms(margin)
            dev = t - center
            pdev = p_act * dev if diagonal_prior else P @ dev
            f = data_f + 0.5 * ridge * (t @ t) + 0.5 * scale * (dev @ pdev)
            return f, data_f, d1, d2, ridge * t + scale * pdev

        wide = diagonal_prior and design.dense and k >= _WIDE_MIN_COLUMNS and 4 * n <= k
        theta = center.copy()
        nit = 0
        warnflag, task = ITERATION_LIMIT, "ITERATION LIMIT REACHED"
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            f, data_f, d1, d2, prior_g = evaluate(theta)
            funcalls = 1
            g = design.rdot(d1) + prior_g
            g_norm0 = float(np.sqrt(g @ g))
            while True:
                if not math.isfinite(f + float(g.sum())):  # one check covers every entry
                    warnflag, task = FAILED, "NON-FINITE LOSS OR GRADIENT"
                    break
                if nit >= max_iterations:
                    break
                if design.dense and not wide:
                    H = design.weighted_gram(d2)
                    if diagonal_prior:
                        H.flat[:: k + 1] += r_diag
                    else:
                        H += r_full
                    step = _newton_direction(H, g)
                else:
                    step = _newton_cg_direction(design, d2, r_diag, g, g_norm0)
                if step is None:
                    warnflag, task = FAILED, "SINGULAR HESSIAN"
                    break
                decrement = -float(g @ step)
                if decrement <= tolerance * max(1.0, abs(f)):
                    warnflag, task = CONVERGED, "CONVERGENCE: NEWTON DECREMENT BELOW TOLERANCE"
                    break
                nit += 1
                t = 1.0
                for _ in range(_MAX_HALVINGS):
                    trial = theta + t * step if t != 1.0 else theta + step
                    evaluated = evaluate(trial)
                    funcalls += 1
                    if evaluated[0] <= f - _ARMIJO * t * decrement:
                        break
                    t *= 0.5
                else:
                    warnflag, task = line_search_exhausted(decrement, f)
                    break
                theta = trial
                f, data_f, d1, d2, prior_g = evaluated
                g = design.rdot(d1) + prior_g

            if warnflag == FAILED:
                loss0 = self.loss(self._theta0)
                meta = {"warnflag": FAILED, "nit": nit, "funcalls": funcalls, "task": task, "grad": np.zeros(d)}
                return self._theta0, None, loss0 if np.isfinite(loss0) else float("inf"), meta

            if columns is None:
                full_theta, full_grad, loss = theta, g, f
            else:
                full_theta = self._fill_inactive(theta, active)
                full_grad = np.zeros(d)
                full_grad[active] = g
                loss = data_f + self._prior_value(full_theta)
            meta = {"warnflag": warnflag, "nit": nit, "funcalls": funcalls, "task": task, "grad": full_grad}
            return full_theta, self._final_hessian(design, d2, active, columns), float(loss), meta

    def _fill_inactive(self, theta_active: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Columns absent from the data have a closed-form optimum under a diagonal prior."""
        d = len(self._theta0)
        if len(active) == d:
            return theta_active
        numer = self._scale * self._p_diag * self._theta0
        denom = self._ridge + self._scale * self._p_diag
        # With no prior at all the coordinate is free: keep its initial value, as L-BFGS would.
        safe = denom > 0
        full = np.where(safe, numer / np.where(safe, denom, 1.0), self._theta0)
        full[active] = theta_active
        return full

    def _final_hessian(self, design: "_DesignMatrix", d2: np.ndarray, active: np.ndarray, columns):
        """The Hessian at the solution, as a diagonal vector or a dense matrix per ``hessian_type``."""
        if self.hessian_type in (HessianType.NONE, HessianType.IDENTITY):
            return None
        if self.hessian_type is HessianType.DIAGONAL:
            prior_diag = self._ridge + self._scale * (self._p_diag if self._p_full is None else np.diagonal(self._p_full))
            if columns is None:
                return prior_diag + design.squared_column_dot(d2)
            prior_diag[active] += design.squared_column_dot(d2)
            return prior_diag
        d = len(self._theta0)
        H = self._prior_matrix(np.arange(d))
        H[np.ix_(active, active)] += design.weighted_gram(d2)
        return H


def _newton_cg_direction(design: _DesignMatrix, d2: np.ndarray, r_diag: np.ndarray, g: np.ndarray, g_norm0: float):
    """Approximate Newton step by Jacobi-preconditioned conjugate gradients on Hessian-vector products.

    The forcing term tightens as the gradient shrinks, so early steps are cheap and the last ones
    are as accurate as an exact solve.
    """
    g_norm = float(np.sqrt(g @ g))
    if g_norm == 0.0:
        return np.zeros_like(g)
    forcing = min(0.1, g_norm / max(g_norm0, 1e-300), np.sqrt(g_norm))
    target = max(forcing * g_norm, 1e-14 * g_norm0)
    precond = 1.0 / (r_diag + design.squared_column_dot(d2))
    if not np.isfinite(precond).all():
        return None
    x = np.zeros_like(g)
    r = -g
    z = precond * r
    p = z.copy()
    rz = float(r @ z)
    for _ in range(max(20, 2 * len(g))):
        Hp = design.rdot(d2 * design.dot(p)) + r_diag * p
        curvature = float(p @ Hp)
        if not curvature > 0.0:
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * Hp
        if float(np.sqrt(r @ r)) <= target:
            break
        z = precond * r
        rz_next = float(r @ z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    if not np.isfinite(x).all() or float(g @ x) >= 0.0:
        # No usable curvature information: fall back to the preconditioned gradient.
        return -precond * g
    return x


def _newton_direction(H: np.ndarray, g: np.ndarray) -> Optional[np.ndarray]:
    """Solve H s = -g by Cholesky; add growing damping if H is not numerically positive definite."""
    _, step, info = _dposv(H, -g, overwrite_a=False, overwrite_b=True)
    if info == 0 and np.isfinite(step).all():
        return step
    scale = float(np.max(np.abs(np.diagonal(H)))) if H.size else 1.0
    damping = (scale if scale > 0 and np.isfinite(scale) else 1.0) * 1e-12
    eye = np.eye(len(g))
    for _ in range(10):
        _, step, info = _dposv(H + damping * eye, -g)
        if info == 0 and np.isfinite(step).all():
            return step
        damping *= 100.0
    return None
