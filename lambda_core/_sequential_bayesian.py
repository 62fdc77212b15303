"""Sequential Bayesian logistic regression: the Lambda Learner incremental update."""

from ._logistic import LOGISTIC
from ._trainer import SequentialBayesianTrainer


class TrainerSequentialBayesianLogisticLossWithL2(SequentialBayesianTrainer):
    """One incremental update of a logistic model, with the previous model as the prior.

    Minimises ``sum_i w_i log(1 + exp(-y_i (x_i.theta + o_i))) + (1-delta) penalty/2 |theta|^2
    + delta/2 (theta - theta0)' H0 (theta - theta0)`` where ``theta0`` and ``H0`` are the initial
    model's mean and Hessian (``H0 = penalty * I`` when it has none) and ``delta`` in [0, 1] is the
    forgetting factor (0 forgets the past entirely). Hessian after training:
    ``delta H0 + X' D X + (1-delta) penalty I``. (``forgetting_target`` other than ``"zero"`` changes
    the ``(1-delta)`` term: see ``QuadraticPrior.sequential``.)

    Examples
    --------
    >>> import numpy as np
    >>> from lambda_core import IndexedDataset, IndexedModel, HessianType
    >>> X = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    >>> data = IndexedDataset(X, y=[1, 0, 1], w=np.ones(3), offsets=np.zeros(3))
    >>> prior = IndexedModel(np.array([0.0, 0.5]), np.array([10.0, 10.0]))
    >>> model, loss, meta = TrainerSequentialBayesianLogisticLossWithL2(training_data=data,
    ...     initial_model=prior, hessian_type=HessianType.DIAGONAL, penalty=10.0, delta=0.8).train()
    >>> np.round(model.hessian.diagonal(), 3).tolist()
    [10.72, 10.47]
    """

    family = LOGISTIC
