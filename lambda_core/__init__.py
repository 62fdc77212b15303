"""lambda_core: the numerical core of Lambda Learner on Beam (numpy/scipy only, no Beam).

The public API is the one lambda-learner 0.1.0 documents in its tutorial, re-exported from private
modules; see the README for where we deliberately differ (sample weights, raw regression labels,
Thompson sampling with the inverse Hessian). Around it: the loss families (``_loss.py`` and one
module each), the prior (``_prior.py``), the Newton solver (``_newton.py``, ``_small.py``), one
entity's incremental update (``_update.py``) and the registry of job trainers (``_registry.py``).
"""

from ._conversion import (
    index_domain_coeffs_to_nt_domain_coeffs,
    nt_domain_coeffs_to_index_domain_coeffs,
    nt_domain_data_to_index_domain_data,
)
from ._index_map import INTERCEPT, IndexMap
from ._indexed import HessianType, IndexedDataset, IndexedModel
from ._logistic import LOGISTIC, LogisticLoss, TrainerLogisticLossWithL2
from ._loss import BINARY, COUNT, REAL, LabelRule, LossFamily
from ._metrics import auc, evaluate, log_loss, rmse
from ._newton import SMALL_MAX_ENTRIES, NewtonSolver, choose_inner_solve
from ._ntv import Feature, TrainingRecord
from ._poisson import POISSON, PoissonLoss, TrainerSequentialBayesianPoissonLossWithL2
from ._prior import DEFAULT_FORGETTING_TARGET, FORGETTING_TARGETS, QuadraticPrior, forgetting_factor
from ._registry import DEFAULT_TRAINER, MEMORYLESS_TRAINERS, TRAINERS, TrainerSpec, photon_model_class, trainer_spec
from ._scoring import sample_coefficients, score_linear_model
from ._sequential_bayesian import TrainerSequentialBayesianLogisticLossWithL2
from ._small import SmallSolution, newton_small
from ._square import GAUSSIAN, SquareLoss, TrainerSequentialBayesianSquareLossWithL2, TrainerSquareLossWithL2
from ._update import EntityUpdate, expand_prior, margins, update_entity

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
    "TrainerSequentialBayesianSquareLossWithL2",
    "TrainerSequentialBayesianPoissonLossWithL2",
    "LossFamily",
    "LabelRule",
    "BINARY",
    "REAL",
    "COUNT",
    "LogisticLoss",
    "SquareLoss",
    "PoissonLoss",
    "LOGISTIC",
    "GAUSSIAN",
    "POISSON",
    "QuadraticPrior",
    "forgetting_factor",
    "FORGETTING_TARGETS",
    "DEFAULT_FORGETTING_TARGET",
    "NewtonSolver",
    "choose_inner_solve",
    "newton_small",
    "SmallSolution",
    "update_entity",
    "margins",
    "expand_prior",
    "EntityUpdate",
    "SMALL_MAX_ENTRIES",
    "TrainerSpec",
    "TRAINERS",
    "DEFAULT_TRAINER",
    "MEMORYLESS_TRAINERS",
    "trainer_spec",
    "photon_model_class",
    "score_linear_model",
    "sample_coefficients",
    "evaluate",
    "auc",
    "rmse",
    "log_loss",
]
