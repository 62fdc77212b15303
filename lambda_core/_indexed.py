"""Index-domain data and models: what the trainers work on."""

import enum
from typing import Optional, Union

import numpy as np
from scipy import sparse

Matrix = Union[np.ndarray, sparse.spmatrix]


class HessianType(enum.Enum):
    """How the trainer returns the Hessian (the coefficients' precision) after training.

    FULL: the whole matrix. DIAGONAL: only its diagonal (what the Beam job stores).
    IDENTITY: always I. NONE: no Hessian.
    """

    FULL = 0
    DIAGONAL = 1
    IDENTITY = 2
    NONE = 4


class IndexedDataset:
    """Examples in the index domain: design matrix ``X`` (scipy sparse or ndarray, one row per
    example, column 0 the intercept), raw labels ``y``, sample weights ``w`` and fixed-effect
    ``offsets``."""

    def __init__(self, X: Matrix, y, w, offsets):
        if not sparse.issparse(X):
            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2:
                raise ValueError(f"X must be a 2-D matrix, got shape {X.shape}.")
        self.X = X
        self.y = np.asarray(y, dtype=np.float64).reshape(-1)
        self.w = np.asarray(w, dtype=np.float64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.float64).reshape(-1)
        n = X.shape[0]
        for field in ("y", "w", "offsets"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"IndexedDataset.{field} has {len(getattr(self, field))} entries but X has {n} rows.")

    @property
    def num_rows(self) -> int:
        """Number of examples."""
        return self.X.shape[0]

    @property
    def num_cols(self) -> int:
        """Number of columns (features, the intercept included)."""
        return self.X.shape[1]

    num_examples = num_rows
    num_features = num_cols

    def __repr__(self) -> str:
        return f"IndexedDataset({self.num_rows} examples x {self.num_cols} features)"


class IndexedModel:
    """Coefficients ``theta`` and their precision ``hessian`` (None, a 1-D diagonal, a dense matrix
    or a scipy sparse matrix)."""

    def __init__(self, theta, hessian: Optional[Matrix] = None):
        self.theta = None if theta is None else np.asarray(theta, dtype=np.float64)
        self.hessian = hessian
        if self.theta is not None and hessian is not None:
            d = len(self.theta)
            shape = hessian.shape if hessian.ndim == 2 else (len(hessian), len(hessian))
            if shape != (d, d):
                raise ValueError(f"Hessian of shape {shape} does not match {d} coefficients.")

    @classmethod
    def with_diagonal_hessian(cls, theta: np.ndarray, diagonal: np.ndarray) -> "IndexedModel":
        """A model whose Hessian is diagonal; the sparse matrix is only built if someone reads it."""
        model = cls(theta)
        model._diagonal = diagonal
        return model

    @property
    def hessian(self):
        """The precision matrix (None, a 1-D diagonal, a dense matrix or a scipy sparse matrix)."""
        if self._hessian is None and self._diagonal is not None:
            self._hessian = diagonal_matrix(self._diagonal)
        return self._hessian

    @hessian.setter
    def hessian(self, value):
        self._hessian = value
        self._diagonal = None

    def hessian_diagonal(self) -> Optional[np.ndarray]:
        """The diagonal of the Hessian as a 1-D array (None when there is no Hessian)."""
        if self._diagonal is not None:
            return self._diagonal
        return hessian_diagonal(self._hessian)

    def __repr__(self) -> str:
        kind = "none" if self.hessian is None else type(self.hessian).__name__
        return f"IndexedModel({0 if self.theta is None else len(self.theta)} coefficients, hessian={kind})"


def hessian_diagonal(hessian) -> Optional[np.ndarray]:
    """Diagonal of a Hessian in any accepted representation."""
    if hessian is None:
        return None
    if isinstance(hessian, np.ndarray) and hessian.ndim == 1:
        return hessian.astype(np.float64, copy=False)
    return np.asarray(hessian.diagonal(), dtype=np.float64)


def model_precision(model: "IndexedModel", d: int, default_precision: float):
    """``as_precision`` of a model's Hessian, using its stored diagonal when it has one."""
    if model._diagonal is not None:
        return np.asarray(model._diagonal, dtype=np.float64), None
    return as_precision(model._hessian, d, default_precision)


def as_precision(hessian, d: int, default_precision: float):
    """Normalise a Hessian to ``(diagonal_vector, None)`` or ``(None, dense_matrix)``.

    ``None`` means ``default_precision * I``. Sparse or dense matrices with nothing off the
    diagonal are returned as their diagonal, so diagonal priors take the fast path.
    """
    if hessian is None:
        return np.full(d, float(default_precision)), None
    if isinstance(hessian, np.ndarray):
        if hessian.ndim == 1:
            return hessian.astype(np.float64, copy=True), None
        diag = np.diagonal(hessian).astype(np.float64)
        if np.count_nonzero(hessian) == np.count_nonzero(diag):
            return diag, None
        return None, np.asarray(hessian, dtype=np.float64)
    if sparse.issparse(hessian):
        diag = np.asarray(hessian.diagonal(), dtype=np.float64)
        # Every stored non-zero lies on the diagonal iff both counts agree.
        if np.count_nonzero(hessian.data) == np.count_nonzero(diag):
            return diag, None
        return None, np.asarray(hessian.toarray(), dtype=np.float64)
    raise TypeError(f"Unsupported Hessian type {type(hessian).__name__}: use None, an ndarray or a scipy sparse matrix.")


def diagonal_matrix(diagonal: np.ndarray) -> sparse.dia_matrix:
    """A scipy sparse diagonal matrix, built without the cost of ``sparse.diags``."""
    d = len(diagonal)
    return sparse.dia_matrix((np.asarray(diagonal, dtype=np.float64)[np.newaxis, :], np.zeros(1, dtype=np.int32)), shape=(d, d))
