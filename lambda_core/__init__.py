"""lambda_core: the numerical core of Lambda Learner on Beam (numpy/scipy only, no Beam).

The public API is the one lambda-learner 0.1.0 documents in its tutorial, re-exported from private
modules; see the README for where we deliberately differ (sample weights, raw regression labels,
Thompson sampling with the inverse Hessian).
"""

from ._conversion import (
    index_domain_coeffs_to_nt_domain_coeffs,
    nt_domain_coeffs_to_index_domain_coeffs,
    nt_domain_data_to_index_domain_data,
)
from ._index_map import INTERCEPT, IndexMap
from ._indexed import HessianType, IndexedDataset, IndexedModel
from ._logistic import TrainerLogisticLossWithL2
from ._metrics import auc, evaluate, log_loss, rmse
from ._ntv import Feature, TrainingRecord
from ._scoring import sample_coefficients, score_linear_model
from ._small import SmallSolution, newton_small
from ._sequential_bayesian import TrainerSequentialBayesianLogisticLossWithL2
from ._square import TrainerSquareLossWithL2

__all__ = [
    "Feature",
    "TrainingRecord",
    "IndexMap",
    "INTERCEPT",
    "IndexedDataset",
    "IndexedModel",
    "HessianType",
    "nt_domain_data_to_index_domain_data",
    "nt_domain_coeffs_to_index_domain_coeffs",
    "index_domain_coeffs_to_nt_domain_coeffs",
    "TrainerSquareLossWithL2",
    "TrainerLogisticLossWithL2",
    "TrainerSequentialBayesianLogisticLossWithL2",
    "newton_small",
    "SmallSolution",
    "score_linear_model",
    "sample_coefficients",
    "evaluate",
    "auc",
    "rmse",
    "log_loss",
]
