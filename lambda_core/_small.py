"""Damped Newton in plain Python for tiny sparse problems: one entity's mini-batch in the Beam job.

A per-entity mini-batch is often a couple of examples over a handful of coefficients. There every
numpy call (~1 us each, dozens per Newton step) and the solver's bookkeeping cost far more than the
arithmetic, which is a few hundred floating-point operations. ``newton_small`` runs the iteration of
``NewtonSolver.solve`` (``_newton.py``) on a diagonal prior -- same start, same inner solves (Cholesky
with the same damping fallback; the low-rank Woodbury step under the same accuracy rule), same Armijo
backtracking, same stopping rules and failure cases -- on lists of floats and sparse rows, with the
loss family's ``terms_small`` (the plain-Python form of its ``terms``). Results agree with the
general solver up to floating-point rounding, which the tests check to 1e-12 on random problems.

Only the active columns (those with a non-zero in the data) are passed in; the caller solves the
others in closed form, as the general trainer does.
"""

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ._loss import LossFamily
from ._newton import (_ARMIJO, _LOW_RANK_MAX_RATIO, _MAX_HALVINGS, CONVERGED, FAILED, ITERATION_LIMIT,
                      line_search_exhausted)

_sqrt, _isfinite = math.sqrt, math.isfinite

# One example's non-zero entries as (column, value) pairs.
Row = Sequence[Tuple[int, float]]


class SmallSolution(NamedTuple):
    """What ``newton_small`` found: coefficients of the active columns, the objective and its data part,
    the per-example second derivatives at the solution (for the Hessian), the solver's bookkeeping,
    and the gradient at the solution."""

    theta: List[float]
    loss: float
    data_loss: float
    d2: List[float]
    warnflag: int
    nit: int
    funcalls: int
    task: str
    grad: List[float] = []


def cholesky_solve(H: List[List[float]], b: Sequence[float]) -> Optional[List[float]]:
    """Solve ``H x = b`` for a symmetric matrix by Cholesky; None if H is not numerically positive
    definite (a pivot <= 0 or NaN, as LAPACK's dpotrf reports) or the solution is not finite."""
    k = len(b)
    L: List[List[float]] = []
    for j in range(k):
        Hj = H[j]
        row = [0.0] * j
        for c in range(j):
            Lc = L[c]
            s = Hj[c]
            for m in range(c):
                s -= row[m] * Lc[m]
            row[c] = s / Lc[c]
        pivot = Hj[j]
        for m in range(j):
            pivot -= row[m] * row[m]
        if not pivot > 0.0:
            return None
        row.append(_sqrt(pivot))
        L.append(row)
    y = [0.0] * k
    for i in range(k):
        Li = L[i]
        s = b[i]
        for m in range(i):
            s -= Li[m] * y[m]
        y[i] = s / Li[i]
    x = [0.0] * k
    for i in range(k - 1, -1, -1):
        s = y[i]
        for m in range(i + 1, k):
            s -= L[m][i] * x[m]
        x[i] = s / L[i][i]
    for v in x:
        if not _isfinite(v):
            return None
    return x


def newton_direction(H: List[List[float]], g: Sequence[float]) -> Optional[List[float]]:
    """The Newton step ``-H^{-1} g``, adding growing damping when H is not positive definite
    (the same fallback as the general trainer's ``_newton_direction``)."""
    neg_g = [-v for v in g]
    step = cholesky_solve(H, neg_g)
    if step is not None:
        return step
    k = len(g)
    scale = max((abs(H[i][i]) for i in range(k)), default=1.0)
    damping = (scale if scale > 0 and _isfinite(scale) else 1.0) * 1e-12
    for _ in range(10):
        damped = [row[:] for row in H]
        for i in range(k):
            damped[i][i] += damping
        step = cholesky_solve(damped, neg_g)
        if step is not None:
            return step
        damping *= 100.0
    return None


def _low_rank_gram(rows: Sequence[Row], r_diag: Sequence[float]) -> List[List[float]]:
    """``X R^{-1} X'`` (n x n, lower triangle), fixed for the whole solve: the low-rank step only
    rescales it."""
    weighted = [{c: v / r_diag[c] for c, v in row} for row in rows]
    gram = []
    for i, row in enumerate(rows):
        line = []
        for j in range(i + 1):
            other = weighted[j]
            acc = 0.0
            for c, v in row:
                x = other.get(c)
                if x is not None:
                    acc += v * x
            line.append(acc)
        gram.append(line)
    return gram


def low_rank_direction(rows: Sequence[Row], gram: List[List[float]], d2: Sequence[float],
                       r_diag: Sequence[float], g: Sequence[float]) -> Optional[Tuple[List[float], float]]:
    """The Newton step ``-H^{-1} g`` and the decrement ``g' H^{-1} g`` for ``H = R + X' diag(d2) X``,
    ``R = diag(r) > 0``, when X has fewer rows than columns: through the n x n system of the Woodbury
    identity instead of the k x k one,
    ``H^{-1} = R^{-1} - R^{-1} X' S (I + S X R^{-1} X' S)^{-1} S X R^{-1}`` with ``S = diag(sqrt(d2))``
    and ``gram = X R^{-1} X'`` (lower triangle).

    ``I + S X R^{-1} X' S`` has every eigenvalue >= 1, so its Cholesky factor is well conditioned;
    one and two examples (most mini-batches) are factored in closed form. None when something is not
    finite or a second derivative is negative: the caller then takes the k x k path, which handles
    those exactly as the general trainer does.
    """
    u = [gi / ri for gi, ri in zip(g, r_diag)]
    roots, rhs = [], []
    for row, di in zip(rows, d2):
        if not di >= 0.0:
            return None
        root = _sqrt(di)
        roots.append(root)
        acc = 0.0
        for c, v in row:
            acc += v * u[c]
        rhs.append(root * acc)
    n = len(rows)
    if n == 1:
        pivot = 1.0 + roots[0] * roots[0] * gram[0][0]
        if not pivot > 0.0:
            return None
        l00 = _sqrt(pivot)
        z: Sequence[float] = (rhs[0] / l00 / l00,)
    elif n == 2:
        r0, r1 = roots
        pivot = 1.0 + r0 * r0 * gram[0][0]
        if not pivot > 0.0:
            return None
        l00 = _sqrt(pivot)
        l10 = r1 * r0 * gram[1][0] / l00
        pivot = 1.0 + r1 * r1 * gram[1][1] - l10 * l10
        if not pivot > 0.0:
            return None
        l11 = _sqrt(pivot)
        y0 = rhs[0] / l00
        z1 = (rhs[1] - l10 * y0) / l11 / l11
        z = ((y0 - l10 * z1) / l00, z1)
    else:
        M = [[0.0] * n for _ in range(n)]
        for i in range(n):
            line, ri, Mi = gram[i], roots[i], M[i]
            for j in range(i):
                Mi[j] = M[j][i] = ri * roots[j] * line[j]
            Mi[i] = 1.0 + ri * ri * line[i]
        z = cholesky_solve(M, rhs)
        if z is None:
            return None
    # u becomes H^{-1} g = R^{-1} g - R^{-1} X' S z, the step's negative.
    for row, root, zi in zip(rows, roots, z):
        rz = root * zi
        for c, v in row:
            u[c] -= v * rz / r_diag[c]
    decrement = 0.0
    for gi, ui in zip(g, u):
        decrement += gi * ui
    if not _isfinite(decrement + sum(u)):
        return None
    return [-v for v in u], decrement


def newton_small(rows: Sequence[Row], y: Sequence[float], w: Sequence[float], offsets: Sequence[float],
                 center: Sequence[float], precision: Sequence[float], ridge: Sequence[float], scale: float,
                 family: LossFamily, anchor: Optional[Sequence[float]] = None,
                 max_iterations: int = 100, tolerance: float = 1e-12) -> SmallSolution:
    """Minimise ``sum_i w_i l(y_i, x_i.t + o_i) + 1/2 sum_j ridge_j (t_j - anchor_j)^2
    + scale/2 (t-center)' diag(precision) (t-center)`` (``QuadraticPrior`` on lists; anchor None is 0).

    ``rows`` are the examples as lists of ``(column, value)`` pairs over the active columns ``0..k-1``
    (intercept included, zero values left out); ``y`` the family's labels (``family.small_labels``).
    Iteration, line search and stopping rules are those of ``NewtonSolver.solve``; on failure
    ``theta`` is ``center`` and ``warnflag`` is ``FAILED``.
    """
    k, n = len(center), len(rows)
    terms = family.terms_small
    r_diag = [r + scale * p for r, p in zip(ridge, precision)]
    # Fewer examples than columns (the usual mini-batch): solve Newton systems in the n x n space.
    # That step is a difference of two terms each up to H_cc / r_c times larger than itself, so it
    # loses about log10 of that ratio in digits: only use it while the data's curvature on every
    # column stays within _LOW_RANK_MAX_RATIO of the prior's (the same rule as
    # ``_newton.low_rank_is_accurate``: with the family's curvature bound when it has one, else at
    # each step with the actual curvature). Otherwise the k x k Cholesky path, backward stable
    # like the general solver's LAPACK solve.
    positive_prior = all(r > 0.0 for r in r_diag)
    gram = None
    bound = family.curvature_bound
    squares: Optional[List[List[Tuple[int, float]]]] = None
    if n < k and positive_prior:
        if bound is None:
            squares = [[(c, v * v) for c, v in row] for row in rows]
            gram = _low_rank_gram(rows, r_diag)
        else:
            total = [0.0] * k
            for row, wi in zip(rows, w):
                for c, v in row:
                    total[c] += wi * (v * v)
            if all(bound * b <= _LOW_RANK_MAX_RATIO * r for b, r in zip(total, r_diag)):
                gram = _low_rank_gram(rows, r_diag)
    data_rows = list(zip(rows, offsets))
    # The prior's gradient r_j (t_j - a_j) + scale p_j (t_j - c_j) as (r_j + scale p_j) t_j - b_j.
    if anchor is None:
        prior_cols = [(ci, pi, ri, scale * pi * ci, 0.0, rj)
                      for ci, pi, ri, rj in zip(center, precision, r_diag, ridge)]
    else:
        prior_cols = [(ci, pi, ri, scale * pi * ci + rj * aj, aj, rj)
                      for ci, pi, ri, rj, aj in zip(center, precision, r_diag, ridge, anchor)]

    def evaluate(t):
        margins = []
        for row, o in data_rows:
            m = 0.0
            for c, v in row:
                m += v * t[c]
            margins.append(m + o)
        data_f, d1, d2 = terms(margins, y, w)
        rr = dp = 0.0
        g = []
        for ti, (ci, pi, ri, bi, ai, rj) in zip(t, prior_cols):
            dev = ti - ci
            adev = ti - ai
            rr += rj * (adev * adev)
            dp += dev * (pi * dev)
            g.append(ri * ti - bi)
        f = data_f + 0.5 * rr + 0.5 * scale * dp
        for row, di in zip(rows, d1):
            for c, v in row:
                g[c] += v * di
        return f, data_f, d2, g

    def low_rank_ok(d2):
        if squares is None:
            return True
        total = [0.0] * k
        for row, di in zip(squares, d2):
            for c, v in row:
                total[c] += di * v
        return all(b <= _LOW_RANK_MAX_RATIO * r for b, r in zip(total, r_diag))

    theta = list(center)
    nit = 0
    warnflag, task = ITERATION_LIMIT, "ITERATION LIMIT REACHED"
    f, data_f, d2, g = evaluate(theta)
    funcalls = 1
    while True:
        if not _isfinite(f + sum(g)):
            warnflag, task = FAILED, "NON-FINITE LOSS OR GRADIENT"
            break
        if nit >= max_iterations:
            break
        if positive_prior:  # NewtonSolver.converged_by_bound: the decrement is at most g' R^-1 g
            most = 0.0
            for gi, ri in zip(g, r_diag):
                most += gi * (gi / ri)
            if most <= tolerance * max(1.0, abs(f)):
                warnflag, task = CONVERGED, "CONVERGENCE: NEWTON DECREMENT BELOW TOLERANCE"
                break
        found = low_rank_direction(rows, gram, d2, r_diag, g) if gram is not None and low_rank_ok(d2) else None
        if found is not None:
            step, decrement = found
        else:
            H = [[0.0] * k for _ in range(k)]
            for row, di in zip(rows, d2):
                for a, va in row:
                    dva = di * va
                    Ha = H[a]
                    for b, vb in row:
                        Ha[b] += dva * vb
            for i in range(k):
                H[i][i] += r_diag[i]
            step = newton_direction(H, g)
            if step is None:
                warnflag, task = FAILED, "SINGULAR HESSIAN"
                break
            decrement = 0.0
            for gi, si in zip(g, step):
                decrement -= gi * si
        if decrement <= tolerance * max(1.0, abs(f)):
            warnflag, task = CONVERGED, "CONVERGENCE: NEWTON DECREMENT BELOW TOLERANCE"
            break
        nit += 1
        # Armijo backtracking; the full step (t = 1) is taken almost always.
        trial = [a + s for a, s in zip(theta, step)]
        evaluated = evaluate(trial)
        funcalls += 1
        if not evaluated[0] <= f - _ARMIJO * decrement:
            t = 1.0
            for _ in range(_MAX_HALVINGS - 1):
                t *= 0.5
                trial = [a + t * s for a, s in zip(theta, step)]
                evaluated = evaluate(trial)
                funcalls += 1
                if evaluated[0] <= f - _ARMIJO * t * decrement:
                    break
            else:
                warnflag, task = line_search_exhausted(decrement, f)
                break
        theta = trial
        f, data_f, d2, g = evaluated
    if warnflag == FAILED:
        return SmallSolution(list(center), math.inf, math.inf, d2, FAILED, nit, funcalls, task, g)
    return SmallSolution(theta, f, data_f, d2, warnflag, nit, funcalls, task, g)
