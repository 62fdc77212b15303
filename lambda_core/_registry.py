"""The trainer registry: every trainer the job offers, by the name ``--trainer`` takes.

An entry says which loss family the trainer uses (and so which labels it accepts), which core
trainer class implements it for the library API, and what Photon-ML calls its models
(``modelClass``; ``lossFunction`` is written empty, as Photon does). Adding a trainer is one module
(its ``LossFamily`` and trainer class, e.g. ``_poisson.py``) and one ``TrainerSpec`` here.

Every job trainer is sequential Bayesian: the posterior of one mini-batch is the prior of the next.
lambda-learner's memoryless trainers stay in the library; the job refuses their names with a
sentence naming the incremental trainer to use instead.
"""

from typing import Dict, NamedTuple

from ._loss import LabelRule, LossFamily
from ._logistic import LOGISTIC
from ._poisson import POISSON, TrainerSequentialBayesianPoissonLossWithL2
from ._sequential_bayesian import TrainerSequentialBayesianLogisticLossWithL2
from ._square import GAUSSIAN, TrainerSequentialBayesianSquareLossWithL2

_PHOTON = "com.linkedin.photon.ml.supervised."


class TrainerSpec(NamedTuple):
    """One job trainer: its name, loss family, core trainer class and Photon model class."""

    name: str
    family: LossFamily
    trainer_class: type
    model_class: str
    loss_function: str = ""

    @property
    def label_rule(self) -> LabelRule:
        """The labels this trainer accepts (its family's rule)."""
        return self.family.label_rule


TRAINERS: Dict[str, TrainerSpec] = {spec.name: spec for spec in (
    TrainerSpec("sequential_bayesian_logistic", LOGISTIC, TrainerSequentialBayesianLogisticLossWithL2,
                _PHOTON + "classification.LogisticRegressionModel"),
    TrainerSpec("sequential_bayesian_linear", GAUSSIAN, TrainerSequentialBayesianSquareLossWithL2,
                _PHOTON + "regression.LinearRegressionModel"),
    TrainerSpec("sequential_bayesian_poisson", POISSON, TrainerSequentialBayesianPoissonLossWithL2,
                _PHOTON + "regression.PoissonRegressionModel"),
)}
DEFAULT_TRAINER = "sequential_bayesian_logistic"
#: The seed's memoryless job trainers, refused by the job, and the incremental one to use instead.
MEMORYLESS_TRAINERS: Dict[str, str] = {"logistic": "sequential_bayesian_logistic",
                                       "linear": "sequential_bayesian_linear"}


def trainer_spec(name: str) -> TrainerSpec:
    """The registry entry of ``name``; ``ValueError`` with one sentence (starting "trainer") if none.

    >>> trainer_spec("sequential_bayesian_poisson").model_class
    'com.linkedin.photon.ml.supervised.regression.PoissonRegressionModel'
    >>> trainer_spec("linear")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: trainer 'linear' is memoryless (...); use 'sequential_bayesian_linear', which learns incrementally.
    """
    spec = TRAINERS.get(name)
    if spec is not None:
        return spec
    if name in MEMORYLESS_TRAINERS:
        raise ValueError(f"trainer {name!r} is memoryless (each update would refit only its own mini-batch); "
                         f"use {MEMORYLESS_TRAINERS[name]!r}, which learns incrementally.")
    raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {name!r}.")


def photon_model_class(name: str) -> str:
    """Photon's ``modelClass`` for a trainer name (the memoryless names map to their family's class)."""
    return TRAINERS[MEMORYLESS_TRAINERS.get(name, name)].model_class
