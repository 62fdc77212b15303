"""Scoring, with optional Thompson sampling from the coefficients' posterior."""

from typing import Optional, Union

import numpy as np
from scipy.linalg import solve_triangular

from ._indexed import IndexedDataset, IndexedModel, model_precision

RandomState = Union[None, int, np.random.Generator]


def sample_coefficients(model: IndexedModel, exploration_threshold: float, rng: RandomState = None) -> np.ndarray:
    """Draw ``theta ~ N(mean, exploration_threshold * H^-1)``.

    A diagonal Hessian gives independent coordinates with variance ``c / H_ii``; a full one is
    inverted through its Cholesky factor. ``rng`` is a ``numpy.random.Generator``, a seed, or None
    for numpy's global random state.
    """
    if exploration_threshold < 0 or not np.isfinite(exploration_threshold):
        raise ValueError(f"exploration_threshold must be a finite number >= 0, got {exploration_threshold}.")
    if model.hessian_diagonal() is None:
        raise ValueError("Thompson sampling needs the model's Hessian; train with a HessianType other than NONE.")
    d = len(model.theta)
    normal = np.random.standard_normal if rng is None else np.random.default_rng(rng).standard_normal
    z = normal(d)
    diag, full = model_precision(model, d, 0.0)
    if full is None:
        if np.any(diag <= 0):
            raise ValueError("Thompson sampling needs a positive Hessian diagonal.")
        return model.theta + np.sqrt(exploration_threshold / diag) * z
    # H = L L'  =>  L'^{-1} z has covariance H^{-1}.
    L = np.linalg.cholesky(full)
    return model.theta + np.sqrt(exploration_threshold) * solve_triangular(L.T, z, lower=False)


def score_linear_model(
    model: IndexedModel, test_data: IndexedDataset, exploration_threshold: float = 0, rng: RandomState = None
) -> np.ndarray:
    """Scores (margins) ``X theta + offsets`` for every example.

    With ``exploration_threshold = c > 0`` the coefficients are one Thompson draw from
    ``N(theta, c H^-1)``: the more data the model has seen, the less it explores. (lambda-learner
    0.1.0 draws with covariance ``c diag(H)``, which explores more as the model grows surer.)
    """
    theta = model.theta if exploration_threshold == 0 else sample_coefficients(model, exploration_threshold, rng)
    X = test_data.X
    scores = X @ theta
    return np.asarray(scores).reshape(-1) + test_data.offsets
