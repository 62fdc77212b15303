"""One entity's incremental update on sparse rows: what the Beam job applies per mini-batch.

``update_entity`` takes the entity's current posterior (means, precisions), the mini-batch as sparse
rows over the entity's columns, a loss family and the forgetting factor, and returns the new
posterior. It chooses between two implementations of the same Newton iteration
(``_newton.SMALL_MAX_ENTRIES`` is the rule, the same as the trainers'): the plain-Python solver of
``_small.py`` for tiny problems with a diagonal prior, where numpy's per-call overhead would
dominate, and ``NewtonSolver`` for everything else. Both see the same ``QuadraticPrior``; the tests
hold them equal to 1e-12.
"""

import math
import time
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse

from ._indexed import HessianType
from ._loss import LossFamily
from . import _newton
from ._newton import FAILED, NewtonSolver
from ._prior import QuadraticPrior, forgetting_pull
from ._small import Row, newton_small

_isfinite = math.isfinite
_DENSE_ENTRIES = 60_000  # below this many matrix entries a mini-batch's design matrix is dense


class EntityUpdate(NamedTuple):
    """The new posterior of one entity, or why there is none.

    ``theta`` over all ``d`` columns; ``precisions`` the Hessian diagonal (None for
    ``HessianType.NONE``); ``matrix`` the full Hessian for ``HessianType.FULL``; ``failure`` a
    sentence when training failed (then ``theta`` is the prior mean and nothing else is set);
    ``model_scores`` the margins of the mini-batch under the prior mean (progressive validation).
    """

    theta: np.ndarray
    precisions: Optional[np.ndarray]
    matrix: Optional[np.ndarray]
    loss: Optional[float]
    converged: bool
    failure: Optional[str]
    model_scores: np.ndarray
    seconds: float


def expand_prior(mean: np.ndarray, precisions: Optional[np.ndarray], matrix: Optional[np.ndarray], d: int,
                 penalty: float):
    """The prior over ``d >= len(mean)`` columns: new coefficients have mean 0 and precision ``penalty``;
    no precisions means ``penalty`` for every coefficient."""
    d_old = len(mean)
    theta0 = np.zeros(d)
    theta0[:d_old] = mean
    if matrix is not None:
        full = np.diag(np.full(d, float(penalty)))
        full[:d_old, :d_old] = matrix
        return theta0, None, full
    p = np.full(d, float(penalty))
    if precisions is not None:
        p[:d_old] = precisions
    return theta0, p, None


def rows_matrix(rows: Sequence[Row], d: int):
    """The design matrix of sparse rows: dense when small (cheaper to build and solve), CSR otherwise.
    Columns are unique within a row, so plain assignment is exact."""
    n = len(rows)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    flat = [pair for row in rows for pair in row]
    cols = np.array([c for c, _ in flat], dtype=np.int64)
    vals = np.array([v for _, v in flat], dtype=np.float64)
    if n * d <= _DENSE_ENTRIES:
        X = np.zeros((n, d))
        X[np.repeat(np.arange(n), np.diff(indptr)), cols] = vals
        return X
    return sparse.csr_matrix((vals, cols, indptr), shape=(n, d))


def margins(rows: Sequence[Row], theta: Sequence[float], offsets: Sequence[float]) -> np.ndarray:
    """``x . theta + offset`` of each sparse row; columns beyond ``theta`` (features the model has
    not seen) count as 0. The score a model gives examples it does not train on."""
    coefficients = list(theta)
    d = len(coefficients)
    return np.array([sum(v * coefficients[c] for c, v in row if c < d) + o for row, o in zip(rows, offsets)])


def update_entity(rows: Sequence[Row], labels: Sequence[float], weights: Sequence[float],
                  offsets: Sequence[float], mean: np.ndarray, precisions: Optional[np.ndarray],
                  matrix: Optional[np.ndarray], d: int, *, family: LossFamily, penalty: float, delta: float,
                  hessian_type: HessianType, target: str = "zero",
                  reference: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                  small: Optional[bool] = None) -> EntityUpdate:
    """One sequential Bayesian update: the posterior ``(mean, precisions | matrix)`` forgotten by
    ``delta`` towards ``target`` (``QuadraticPrior.sequential``) is the prior, the mini-batch
    ``rows`` (lists of ``(column, value)`` pairs over ``d`` columns, zeros left out) the data.

    Raises the family's ``ValueError`` for labels it rejects. ``small`` forces (True: where it
    applies, else None is returned) or forbids (False) the plain-Python solver; None lets the rule
    choose.
    """
    # Without a penalty the optimum may be a ray or a subspace (separable or under-determined data), or
    # so flat that rounding moves it: any two solvers legitimately disagree there, so the small path
    # only meets problems with a positive prior everywhere.
    if small is not False and matrix is None and penalty > 0:
        result = _update_small(rows, labels, weights, offsets, mean, precisions, d, family, penalty, delta,
                               hessian_type, target, reference)
        if result is not None:
            return result
    if small:
        return None
    return _update_general(rows, labels, weights, offsets, mean, precisions, matrix, d, family, penalty, delta,
                           hessian_type, target, reference)


def _all_finite(values) -> bool:
    """Whether every value is finite: one numpy pass for an array, one Python pass for a list (a
    solution of the plain-Python path, where numpy's per-call cost exceeds the work)."""
    if isinstance(values, np.ndarray):
        return bool(np.isfinite(values).all())
    # A sum of finite numbers is finite unless it overflows: only then look at each.
    return _isfinite(sum(values)) or all(map(_isfinite, values))


def _check(theta, hessian):
    """(why a finished training must not be kept or None, precisions, matrix): non-finite
    coefficients, or a Hessian (``hessian()`` -> (diagonal or None, matrix or None), only asked for
    after the first check) that is not positive and finite. ``theta`` and the diagonal are arrays or
    lists; the precisions returned are an array."""
    if not _all_finite(theta):
        return "training produced non-finite coefficients", None, None
    precisions, matrix = hessian()
    if precisions is not None:
        if isinstance(precisions, np.ndarray):
            positive = bool((precisions > 0).all())
        else:
            positive = min(precisions, default=1.0) > 0
        if not (_all_finite(precisions) and positive):
            return "training produced a Hessian that is not positive and finite", None, None
        precisions = np.asarray(precisions, dtype=np.float64)
    return None, precisions, matrix


def _result(theta, loss, warnflag, task, hessian, scores, seconds) -> EntityUpdate:
    if warnflag == FAILED:
        return EntityUpdate(np.asarray(theta, dtype=np.float64), None, None, None, False, f"training failed ({task})",
                            scores, seconds)
    failure, precisions, matrix = _check(theta, hessian)
    theta = np.asarray(theta, dtype=np.float64)
    if failure is not None:
        return EntityUpdate(theta, None, None, None, False, failure, scores, seconds)
    return EntityUpdate(theta, precisions, matrix, float(loss), warnflag == 0, None, scores, seconds)


def _update_small(rows, labels, weights, offsets, mean, precisions, d, family, penalty, delta, hessian_type,
                  target, reference) -> Optional[EntityUpdate]:
    """The plain-Python path; None when it does not apply (too big, labels the family rejects).

    Its arrays have a few dozen entries at most, so everything around the solver is on lists too:
    numpy's ~1 us per call would cost more than the arithmetic."""
    limit = _newton.SMALL_MAX_ENTRIES
    if len(rows) > limit:
        return None
    used = set()
    for row in rows:
        used.update(c for c, _ in row)
    k = len(used)
    if k * len(rows) > limit:
        return None
    y = family.small_labels(labels)
    if y is None:
        return None
    d_old = len(mean)
    theta0 = mean.tolist()
    scores = []
    for row, o in zip(rows, offsets):
        s = 0.0
        for c, v in row:
            if c < d_old:
                s += v * theta0[c]
        scores.append(s + o)
    theta0 += [0.0] * (d - d_old)
    precision = [penalty] * d_old if precisions is None else precisions.tolist()
    precision += [penalty] * (d - d_old)
    # The prior of ``QuadraticPrior.sequential`` on lists: its forgetting rule (arrays only for target
    # "initial" with a reference). For target "variance" the anchor is theta0 itself, which is only
    # read from here on.
    ridge, anchor = forgetting_pull(theta0, penalty, delta, target, reference)
    ridge = ridge.tolist() if isinstance(ridge, np.ndarray) else [float(ridge)] * d
    if isinstance(anchor, np.ndarray):
        anchor = anchor.tolist()
    scale = float(delta)
    if k == d:
        active, local_rows = range(d), rows
    else:
        active = sorted(used)
        local = {g: i for i, g in enumerate(active)}
        local_rows = [[(local[c], v) for c, v in row] for row in rows]
    started = time.perf_counter()
    solution = newton_small(local_rows, y, weights, offsets, [theta0[g] for g in active],
                            [precision[g] for g in active], [ridge[g] for g in active], scale, family,
                            None if anchor is None else [anchor[g] for g in active])
    seconds = time.perf_counter() - started
    scores = np.array(scores)
    if solution.warnflag == FAILED:
        return _result(np.array(theta0), None, FAILED, solution.task, None, scores, seconds)
    if k == d:
        theta, loss = solution.theta, solution.loss
    else:
        # Columns the mini-batch does not touch decouple under a diagonal prior: each takes its
        # closed-form optimum and adds its prior term (``QuadraticPrior.minimiser`` and ``value`` on
        # lists; tests/test_fast_paths.py holds the result to the general path's, which uses those).
        theta = []
        rr = dp = 0.0
        for j, (c, p, r) in enumerate(zip(theta0, precision, ridge)):
            if j in used:
                theta.append(0.0)
                continue
            sp = scale * p
            a = 0.0 if anchor is None else anchor[j]
            denom = r + sp
            m = ((sp * c if anchor is None else sp * c + r * a) / denom) if denom > 0 else c
            rr += r * ((m - a) * (m - a))
            dp += (m - c) * (p * (m - c))
            theta.append(m)
        for g, t in zip(active, solution.theta):
            theta[g] = t
        loss = solution.loss + (0.5 * rr + 0.5 * scale * dp)

    def hessian():
        if hessian_type is HessianType.NONE:
            return None, None
        if hessian_type is HessianType.IDENTITY:
            return np.ones(d), None
        diagonal = [r + scale * p for r, p in zip(ridge, precision)]
        if hessian_type is HessianType.DIAGONAL:
            squared = [0.0] * k
            for row, d2 in zip(local_rows, solution.d2):
                for c, v in row:
                    squared[c] += d2 * (v * v)
            for i, g in enumerate(active):
                diagonal[g] += squared[i]
            return diagonal, None
        gram = np.zeros((k, k))
        for row, d2 in zip(local_rows, solution.d2):
            dense = np.zeros(k)
            for c, v in row:
                dense[c] = v
            gram += np.outer(dense, dense * d2)
        full_matrix = np.diag(diagonal)
        full_matrix[np.ix_(list(active), list(active))] += gram
        return np.diagonal(full_matrix).copy(), full_matrix

    return _result(theta, loss, solution.warnflag, solution.task, hessian, scores, seconds)


def _update_general(rows, labels, weights, offsets, mean, precisions, matrix, d, family, penalty, delta,
                    hessian_type, target, reference) -> EntityUpdate:
    """Through ``NewtonSolver``, for any size and any prior."""
    theta0, p, full = expand_prior(mean, precisions, matrix, d, penalty)
    X = rows_matrix(rows, d)
    y = family.labels(np.asarray(labels, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.float64)
    scores = np.asarray(X @ theta0).reshape(-1) + o
    prior = QuadraticPrior.sequential(theta0, p, full, penalty, delta, target, reference)
    started = time.perf_counter()
    # The numpy iteration throughout: this path is the reference the plain-Python one is tested against.
    theta, hess, loss, meta = NewtonSolver(family, X, y, w, o, prior, hessian_type, plain_python=False).solve()
    seconds = time.perf_counter() - started

    def hessian():
        if hessian_type is HessianType.FULL:
            return np.diagonal(hess).copy(), hess
        if hessian_type is HessianType.IDENTITY:
            return np.ones(d), None
        return hess, None

    return _result(theta, loss, meta["warnflag"], meta["task"], hessian, scores, seconds)
