"""The one Newton solver: damped Newton steps with Armijo backtracking on a loss family plus a prior.

    f(theta) = sum_i w_i l(y_i, x_i . theta + o_i) + Q(theta)

with ``l`` a ``LossFamily`` and ``Q`` a ``QuadraticPrior``. The objective is smooth and convex with a
closed-form Hessian, so Newton reaches the optimum in a handful of steps: far fewer function calls
than L-BFGS, and no per-call sparse-matrix construction.

``NewtonSolver.solve`` is a template of named steps -- ``setup`` (the columns the data touches; under
a diagonal prior the others decouple and are solved in closed form), ``evaluate`` (value, gradient
and curvature terms), ``inner_solve`` (the Newton direction), ``line_search``, ``check_convergence``
and ``finalize`` (the Hessian kept per ``HessianType``). Only the inner solve varies, and one rule,
``choose_inner_solve``, picks it at every step:

* ``CholeskySolve``: form ``X' D X + R`` and factor it (LAPACK), with growing damping if it is not
  numerically positive definite. Any prior; the default.
* ``WoodburySolve``: fewer examples than columns, dense data, diagonal prior: solve in the n x n
  space of the examples instead of the k x k one. It loses about log10(curvature / prior) digits,
  so it is only used while the data's curvature on every column is within ``_LOW_RANK_MAX_RATIO``
  of the prior's.
* ``ConjugateGradientSolve``: sparse data (or dense data too wide to factor) and a diagonal prior:
  matrix-free Jacobi-preconditioned CG on Hessian-vector products.

The plain-Python solver for tiny problems (``_small.py``) runs the same iteration on lists; ``solve``
hands a problem to it under the same rule as the job's update (``small_applies``: a diagonal prior,
positive on every active column, and at most ``SMALL_MAX_ENTRIES_FROM_ARRAYS`` examples x active
columns, lower than the job's ``SMALL_MAX_ENTRIES`` because the matrix must first become lists), where
numpy's per-call overhead would cost more than the arithmetic.
"""

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
from scipy import sparse
from scipy.linalg.lapack import dposv as _dposv

try:  # scipy's own CSR kernels, called without ``X @ v``'s ~5 us of Python dispatch per product
    from scipy.sparse._sparsetools import (csr_matvec as _csr_matvec, csr_tocsc as _csr_tocsc,
                                           csr_todense as _csr_todense)
except ImportError:  # pragma: no cover - a scipy that moved them: the public methods do the same
    _csr_matvec = _csr_tocsc = _csr_todense = None

from ._indexed import HessianType
from ._loss import LossFamily
from ._prior import QuadraticPrior

# Below this many matrix entries (or above this density) the active design matrix is made dense.
_DENSE_MAX_ENTRIES = 60_000
_DENSE_MIN_DENSITY = 0.25
# A dense problem this wide (k columns) whose low-rank step is not accurate takes Newton-CG steps:
# forming and factoring the k x k Hessian costs O(k^3) per step, while the Jacobi-preconditioned
# Hessian is the identity plus a rank-n term, so CG needs about n + 1 products of O(n k) each.
_WIDE_MIN_COLUMNS = 256
# The low-rank Newton step keeps ~16 - log10(ratio) digits: 1e4 leaves ~12.
_LOW_RANK_MAX_RATIO = 1e4
_ARMIJO = 1e-4
_MAX_HALVINGS = 60
# Up to about this many (examples x active columns), plain Python beats numpy's per-call overhead:
# for the job's update, whose rows arrive as lists (measured with benchmarks/bench_small.py), and
# for the trainer classes, which first turn their matrix into lists (measured on random problems of
# 3 to 48 entries: faster up to ~24, slower from ~36). See the README.
SMALL_MAX_ENTRIES = 100
SMALL_MAX_ENTRIES_FROM_ARRAYS = 30

CONVERGED, ITERATION_LIMIT, FAILED = 0, 1, 2


def line_search_exhausted(decrement: float, loss: float) -> Tuple[int, str]:
    """(warnflag, task) when backtracking finds no decrease any more: that is the optimum to machine
    precision if the predicted decrease is negligible, else the line search failed."""
    if decrement <= 1e-6 * max(1.0, abs(loss)):
        return CONVERGED, "CONVERGENCE: NO FURTHER DECREASE AT MACHINE PRECISION"
    return FAILED, "ABNORMAL_TERMINATION_IN_LNSRCH"


class DesignMatrix:
    """The training matrix restricted to the columns the optimiser works on, in the cheapest form.

    Small or dense problems use a dense array (BLAS). Wide sparse ones keep CSR, because forming
    ``X' D X`` there costs more than the handful of Hessian-vector products a step needs; their
    products run on the raw CSR arrays of ``X`` and of ``X'`` (scipy's matrix objects around them
    cost more to build than a whole Newton step's products on the benchmark's 1000 x 200 problem).
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
                if not X.has_canonical_format:  # duplicates summed: squared, they are (a + b)^2, not a^2 + b^2
                    X = X.copy()
                    X.sum_duplicates()
        elif columns is not None:
            X = X[:, columns]
        self.X = X
        self.shape = X.shape
        self.dense = isinstance(X, np.ndarray)
        self._squared = self._XT = None
        if not self.dense:
            self._csr = (X.indptr, X.indices, X.data.astype(np.float64, copy=False))
            self._csr_t = _transposed(self.shape, self._csr)

    def dot(self, v: np.ndarray) -> np.ndarray:
        if self.dense:
            return self.X @ v
        return _sparse_product(self.shape, self._csr, v)

    def rdot(self, r: np.ndarray) -> np.ndarray:
        """X' r."""
        if self.dense:
            return r @ self.X
        return _sparse_product(self.shape[::-1], self._csr_t, r)

    def weighted_gram(self, d2: np.ndarray) -> np.ndarray:
        """X' diag(d2) X as a dense matrix."""
        if self.dense:
            return self.X.T @ (self.X * d2[:, None])
        if self._XT is None:
            self._XT = _csr_object(self.shape[::-1], self._csr_t)
        indptr, indices, data = self._csr
        scaled = _csr_object(self.shape, (indptr, indices, data * np.repeat(d2, np.diff(indptr))))
        return (self._XT @ scaled).toarray()

    def squared_column_dot(self, d2: np.ndarray) -> np.ndarray:
        """diag(X' diag(d2) X), without forming the Gram matrix."""
        if self.dense:
            if self._squared is None:
                self._squared = self.X * self.X
            return d2 @ self._squared
        if self._squared is None:  # X' with its entries squared
            indptr, indices, data = self._csr_t
            self._squared = (indptr, indices, data * data)
        return _sparse_product(self.shape[::-1], self._squared, d2)


def _transposed(shape: Tuple[int, int], csr) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR arrays of the transpose of the (n x k) CSR matrix whose arrays are ``csr``."""
    indptr, indices, data = csr
    if _csr_tocsc is None:
        XT = _csr_object(shape, csr).T.tocsr()
        return XT.indptr, XT.indices, XT.data.astype(np.float64, copy=False)
    n, k = shape
    t_indptr = np.empty(k + 1, dtype=indptr.dtype)
    t_indices = np.empty(len(indices), dtype=indices.dtype)
    t_data = np.empty(len(data))
    _csr_tocsc(n, k, indptr, indices, data, t_indptr, t_indices, t_data)
    return t_indptr, t_indices, t_data


def _csr_object(shape: Tuple[int, int], arrays) -> sparse.csr_matrix:
    """A scipy CSR matrix around raw (indptr, indices, data) arrays."""
    indptr, indices, data = arrays
    return sparse.csr_matrix((data, indices, indptr), shape=shape)


def _to_dense(X) -> np.ndarray:
    """``X.toarray()`` of a CSR matrix through scipy's kernel (duplicates summed, as there)."""
    if _csr_todense is None or X.format != "csr":
        return X.toarray()
    n, k = X.shape
    out = np.zeros((n, k))
    _csr_todense(n, k, X.indptr, X.indices, X.data.astype(np.float64, copy=False), out)
    return out


def _sparse_product(shape: Tuple[int, int], arrays, v: np.ndarray) -> np.ndarray:
    """``X @ v`` for the ``shape`` CSR matrix whose (indptr, indices, data) are ``arrays``."""
    n, k = shape
    if _csr_matvec is None:
        return _csr_object(shape, arrays) @ v
    out = np.zeros(n)
    _csr_matvec(n, k, arrays[0], arrays[1], arrays[2], np.ascontiguousarray(v, dtype=np.float64), out)
    return out


class Step(NamedTuple):
    """A Newton direction and the decrement ``-g . direction``."""

    direction: np.ndarray
    decrement: float


class InnerSolve:
    """How a Newton step solves ``H s = -g``; None when it cannot (a singular Hessian)."""

    name = ""

    def direction(self, solver: "NewtonSolver", d2: np.ndarray, g: np.ndarray) -> Optional[Step]:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CholeskySolve(InnerSolve):
    """Form the k x k Hessian and solve by Cholesky (LAPACK ``dposv``), damping it if needed."""

    name = "cholesky"

    def direction(self, solver, d2, g):
        H = solver.design.weighted_gram(d2)
        if solver.prior_diag is not None:
            H.flat[:: len(g) + 1] += solver.prior_diag
        else:
            H += solver.prior_matrix
        step = cholesky_direction(H, g)
        return None if step is None else Step(step, -float(g @ step))


class WoodburySolve(InnerSolve):
    """The exact Newton step through the n x n system of the Woodbury identity (n < k, diagonal R):
    ``H^-1 = R^-1 - R^-1 X' S (I + S X R^-1 X' S)^-1 S X R^-1`` with ``S = diag(sqrt(d2))``."""

    name = "woodbury"

    def direction(self, solver, d2, g):
        design, r = solver.design, solver.prior_diag
        if solver._xr is None:
            solver._xr = design.X / r
            solver._gram = solver._xr @ design.X.T
        s = np.sqrt(d2)
        M = solver._gram * s[:, None] * s[None, :]
        M.flat[:: len(s) + 1] += 1.0
        u = g / r
        # LAPACK's dposv is dpotrf then dpotrs, as cho_factor then cho_solve, without their Python wrappers.
        _, z, info = _dposv(M, s * (design.X @ u), lower=1, overwrite_a=True, overwrite_b=True)
        if info != 0:
            return CHOLESKY.direction(solver, d2, g)
        u -= (s * z) @ solver._xr
        decrement = float(g @ u)
        if not math.isfinite(decrement + float(u.sum())):
            return CHOLESKY.direction(solver, d2, g)  # the k x k path handles it as it always does
        return Step(-u, decrement)


class ConjugateGradientSolve(InnerSolve):
    """Approximate Newton step by Jacobi-preconditioned conjugate gradients on Hessian-vector products.

    The forcing term tightens as the gradient shrinks, so early steps are cheap and the last ones
    are as accurate as an exact solve.
    """

    name = "cg"

    def direction(self, solver, d2, g):
        design, r_diag = solver.design, solver.prior_diag
        if solver.g_norm0 is None:  # the initial gradient's norm, computed only when CG is used
            solver.g_norm0 = float(np.sqrt(solver.g0 @ solver.g0))
        g_norm, g_norm0 = float(np.sqrt(g @ g)), solver.g_norm0
        if g_norm == 0.0:
            return Step(np.zeros_like(g), 0.0)
        forcing = min(0.1, g_norm / max(g_norm0, 1e-300), np.sqrt(g_norm))
        target = max(forcing * g_norm, 1e-14 * g_norm0)
        target_sq = target * target
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
            if float(r @ r) <= target_sq:
                break
            z = precond * r
            rz_next = float(r @ z)
            p = z + (rz_next / rz) * p
            rz = rz_next
        if not np.isfinite(x).all() or float(g @ x) >= 0.0:
            # No usable curvature information: fall back to the preconditioned gradient.
            x = -precond * g
        return Step(x, -float(g @ x))


CHOLESKY, WOODBURY, CG = CholeskySolve(), WoodburySolve(), ConjugateGradientSolve()


def choose_inner_solve(design: DesignMatrix, prior_diag: Optional[np.ndarray], d2: np.ndarray,
                       curvature_bound: Optional[float], w: np.ndarray) -> InnerSolve:
    """The one rule that picks the inner solve of a Newton step (see the module docstring)."""
    if prior_diag is None:
        return CHOLESKY
    if not design.dense:
        return CG
    n, k = design.shape
    if n < k:
        if low_rank_is_accurate(design, prior_diag, d2 if curvature_bound is None else curvature_bound * w):
            return WOODBURY
        if k >= _WIDE_MIN_COLUMNS:
            return CG
    return CHOLESKY


def low_rank_is_accurate(design: DesignMatrix, prior_diag: np.ndarray, curvature: np.ndarray) -> bool:
    """Whether the data's curvature stays within ``_LOW_RANK_MAX_RATIO`` of a positive prior's."""
    if not (prior_diag > 0).all():
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        return bool((design.squared_column_dot(curvature) <= _LOW_RANK_MAX_RATIO * prior_diag).all())


def cholesky_direction(H: np.ndarray, g: np.ndarray) -> Optional[np.ndarray]:
    """Solve H s = -g by Cholesky; add growing damping if H is not numerically positive definite."""
    _, step, info = _dposv(H, -g, overwrite_a=False, overwrite_b=True)
    if info == 0 and math.isfinite(float(step.sum())):  # a sum is finite iff every entry is (or overflows)
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


class Solution(NamedTuple):
    """What the solver found: ``theta`` (all columns), the Hessian per ``hessian_type`` (a diagonal
    vector, a dense matrix or None), the objective, and metadata (``warnflag``, ``nit``,
    ``funcalls``, ``task``, ``grad``, ``inner_solves``). On failure ``theta`` is the prior's center
    and ``hessian`` None."""

    theta: np.ndarray
    hessian: Any
    loss: float
    meta: Dict[str, Any]


class NewtonSolver:
    """Minimise ``family`` loss on ``(X, y, w, offsets)`` plus ``prior``; see the module docstring.

    ``y`` are the family's labels (``family.labels`` of the raw ones). ``solve`` may be called once.
    ``plain_python=False`` keeps a tiny problem in numpy (the reference the plain-Python solver is
    tested against); None lets ``small_applies`` decide.
    """

    def __init__(self, family: LossFamily, X, y: np.ndarray, w: np.ndarray, offsets: np.ndarray,
                 prior: QuadraticPrior, hessian_type: HessianType = HessianType.NONE,
                 plain_python: Optional[bool] = None):
        self.family, self.X, self.y, self.w, self.offsets = family, X, y, w, offsets
        self.prior = prior
        self.hessian_type = hessian_type
        self.plain_python = plain_python
        self._xr = self._gram = None

    # ----- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        """The active columns, the design matrix on them and the prior restricted to them."""
        X = self.X
        n, d = X.shape
        diagonal_prior = self.prior.diagonal_only
        used = None
        if sparse.issparse(X):
            if X.format not in ("csr", "csc"):
                X = X.tocsr()
            if diagonal_prior:
                # Which columns the data uses, read off the sparse structure (cheaper than a dense scan).
                used = np.diff(X.indptr) > 0 if X.format == "csc" else np.bincount(X.indices, minlength=d) > 0
            if n * d <= _DENSE_MAX_ENTRIES:
                X = _to_dense(X)
        elif diagonal_prior:
            used = np.any(X, axis=0)
        self.columns = None
        self.active_prior = self.prior
        if diagonal_prior and not used.all():
            # Columns absent from the data decouple under a diagonal prior: solve only the rest.
            self.columns = np.flatnonzero(used)
            self.active_prior = self.prior.restricted(self.columns)
        if diagonal_prior:
            self.prior_diag, self.prior_matrix = self.active_prior.hessian_diagonal(), None
        else:
            self.prior_diag, self.prior_matrix = None, self.prior.hessian_matrix()
        self.design = DesignMatrix(X, self.columns, allow_sparse=diagonal_prior)
        diag = self.prior_diag
        self._positive_prior = diag is not None and (diag.size == 0 or bool(diag.min() > 0))

    # ----- the objective -----------------------------------------------------------------------
    def evaluate(self, t: np.ndarray):
        """(objective, data loss, first and second derivatives per example, prior gradient) at ``t``."""
        margin = self.design.dot(t) + self.offsets
        data_f, d1, d2 = self.family.terms(margin, self.y, self.w)
        prior_f, prior_g = self.active_prior.value_and_gradient(t)
        return data_f + prior_f, data_f, d1, d2, prior_g

    def inner_solve(self, d2: np.ndarray, g: np.ndarray) -> Optional[Step]:
        """The Newton direction by the inner solve ``choose_inner_solve`` picks."""
        inner = choose_inner_solve(self.design, self.prior_diag, d2, self.family.curvature_bound, self.w)
        self.inner_solves[inner.name] = self.inner_solves.get(inner.name, 0) + 1
        return inner.direction(self, d2, g)

    def line_search(self, theta: np.ndarray, step: Step, f: float):
        """Armijo backtracking from the full step: (trial theta, its evaluation) or None if exhausted."""
        t = 1.0
        for _ in range(_MAX_HALVINGS):
            trial = theta + t * step.direction if t != 1.0 else theta + step.direction
            evaluated = self.evaluate(trial)
            self.funcalls += 1
            if evaluated[0] <= f - _ARMIJO * t * step.decrement:
                return trial, evaluated
            t *= 0.5
        return None

    @staticmethod
    def check_convergence(step: Step, f: float, tolerance: float) -> bool:
        """The Newton decrement relative to ``max(1, |f|)`` is below ``tolerance``."""
        return step.decrement <= tolerance * max(1.0, abs(f))

    def converged_by_bound(self, g: np.ndarray, f: float, tolerance: float) -> bool:
        """``check_convergence`` without an inner solve, when it is sure: under a positive diagonal
        prior ``H >= R``, so the decrement ``g' H^-1 g`` is at most ``g' R^-1 g``. Once Newton has
        converged that bound is tiny too, and the last (most accurate, so dearest) solve is skipped;
        the result is the same, as that solve would only have confirmed convergence."""
        if not self._positive_prior:
            return False
        return float(g @ (g / self.prior_diag)) <= tolerance * max(1.0, abs(f))

    def small_applies(self) -> bool:
        """Whether the plain-Python solver takes this problem (see the module docstring)."""
        n, k = self.design.shape
        return self._positive_prior and self.design.dense and n * k <= SMALL_MAX_ENTRIES_FROM_ARRAYS

    def solve_small(self, max_iterations: int, tolerance: float) -> Solution:
        """``solve`` by ``newton_small`` on the rows of the (dense, small) active design matrix."""
        from ._small import newton_small  # _small imports this module's constants

        X = self.design.X
        n, k = X.shape
        # Rows as (column, value) pairs, from one nonzero scan (row-major, so each row's pairs are consecutive).
        where, cols = np.nonzero(X)
        pairs = list(zip(cols.tolist(), X[where, cols].tolist()))
        ends = np.cumsum(np.bincount(where, minlength=n)).tolist()
        rows, start = [], 0
        for end in ends:
            rows.append(pairs[start:end])
            start = end
        prior = self.active_prior
        ridge = prior.ridge.tolist() if np.ndim(prior.ridge) else [float(prior.ridge)] * k
        found = newton_small(rows, self.y.tolist(), self.w.tolist(), self.offsets.tolist(), prior.center.tolist(),
                             prior.precision.tolist(), ridge, prior.scale, self.family,
                             None if prior.anchor is None else prior.anchor.tolist(), max_iterations, tolerance)
        self.nit, self.funcalls, self.inner_solves = found.nit, found.funcalls, {"plain-python": found.nit}
        return self.finalize(np.array(found.theta), found.loss, found.data_loss, np.array(found.d2),
                             np.array(found.grad), found.warnflag, found.task)

    # ----- the loop ----------------------------------------------------------------------------
    def solve(self, max_iterations: int = 100, tolerance: float = 1e-12) -> Solution:
        """Run Newton from the prior's center; see ``Solution``."""
        self.setup()
        if self.plain_python is not False and self.small_applies():
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self.solve_small(max_iterations, tolerance)
        center = self.prior.center if self.columns is None else self.prior.center[self.columns]
        theta = center.copy()
        self.nit, self.funcalls, self.inner_solves = 0, 1, {}
        warnflag, task = ITERATION_LIMIT, "ITERATION LIMIT REACHED"
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            f, data_f, d1, d2, prior_g = self.evaluate(theta)
            g = self.design.rdot(d1) + prior_g
            self.g0, self.g_norm0 = g, None
            while True:
                if not math.isfinite(f + float(g.sum())):  # one check covers every entry
                    warnflag, task = FAILED, "NON-FINITE LOSS OR GRADIENT"
                    break
                if self.nit >= max_iterations:
                    break
                if self.converged_by_bound(g, f, tolerance):
                    warnflag, task = CONVERGED, "CONVERGENCE: NEWTON DECREMENT BELOW TOLERANCE"
                    break
                step = self.inner_solve(d2, g)
                if step is None:
                    warnflag, task = FAILED, "SINGULAR HESSIAN"
                    break
                if self.check_convergence(step, f, tolerance):
                    warnflag, task = CONVERGED, "CONVERGENCE: NEWTON DECREMENT BELOW TOLERANCE"
                    break
                self.nit += 1
                found = self.line_search(theta, step, f)
                if found is None:
                    warnflag, task = line_search_exhausted(step.decrement, f)
                    break
                theta, (f, data_f, d1, d2, prior_g) = found
                g = self.design.rdot(d1) + prior_g
            return self.finalize(theta, f, data_f, d2, g, warnflag, task)

    def finalize(self, theta, f, data_f, d2, g, warnflag, task) -> Solution:
        """Fill in the decoupled columns and the Hessian per ``hessian_type``."""
        d = self.X.shape[1]
        meta = {"warnflag": warnflag, "nit": self.nit, "funcalls": self.funcalls, "task": task,
                "inner_solves": self.inner_solves}
        if warnflag == FAILED:
            center = self.prior.center
            loss0 = self.family.value(np.asarray(self.X @ center).reshape(-1) + self.offsets, self.y, self.w) + \
                self.prior.value(center)
            meta["grad"] = np.zeros(d)
            return Solution(center, None, loss0 if np.isfinite(loss0) else float("inf"), meta)
        if self.columns is None:
            meta["grad"] = g
            return Solution(theta, self._final_hessian(d2), float(f), meta)
        full_theta = self.prior.minimiser()
        full_theta[self.columns] = theta
        full_grad = np.zeros(d)
        full_grad[self.columns] = g
        meta["grad"] = full_grad
        return Solution(full_theta, self._final_hessian(d2), float(data_f + self.prior.value(full_theta)), meta)

    def _final_hessian(self, d2: np.ndarray):
        if self.hessian_type in (HessianType.NONE, HessianType.IDENTITY):
            return None
        cols = self.columns
        if self.hessian_type is HessianType.DIAGONAL:
            if cols is None:  # setup's prior_diag (of a diagonal prior) is then the whole prior's diagonal
                diag = self.prior.hessian_diagonal() if self.prior_diag is None else self.prior_diag
                return diag + self.design.squared_column_dot(d2)
            diag = self.prior.hessian_diagonal()
            diag[cols] += self.design.squared_column_dot(d2)
            return diag
        H = self.prior.hessian_matrix()
        if cols is None:
            H += self.design.weighted_gram(d2)
        else:
            H[np.ix_(cols, cols)] += self.design.weighted_gram(d2)
        return H
