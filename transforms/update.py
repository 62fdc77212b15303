"""One entity's mini-batch update, in plain Python: the step the Beam job applies per entity.

Kept free of Beam so that it can be tested (and replayed) directly: the job's result must equal
``train_minibatch`` applied to each entity's mini-batches in order.
"""

import math
import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse

from lambda_core import (
    HessianType,
    IndexedDataset,
    IndexedModel,
    TrainerLogisticLossWithL2,
    TrainerSequentialBayesianLogisticLossWithL2,
    TrainerSquareLossWithL2,
    newton_small,
)

from .examples import DeadLetter, Example, source_payload
from .models import RandomEffectModel, cold_model, update_record

TRAINERS = ("sequential_bayesian_logistic", "logistic", "linear")
_DENSE_ENTRIES = 60_000  # below this many matrix entries a mini-batch's design matrix is dense
# Up to about this many (examples x active columns), plain Python beats the trainers' per-call numpy
# and scipy overhead (measured with benchmarks/bench_small.py: see the README).
SMALL_MAX_ENTRIES = 100
HESSIANS = {"full": HessianType.FULL, "diagonal": HessianType.DIAGONAL, "identity": HessianType.IDENTITY,
            "none": HessianType.NONE}


@dataclass(frozen=True)
class UpdateConfig:
    """What every entity's update uses; validated on construction: ``ValueError`` with one sentence that
    starts with the offending field's name (the command line turns it into the flag's name)."""

    trainer: str = "sequential_bayesian_logistic"
    penalty: float = 10.0
    forgetting_factor: float = 0.8
    hessian: str = "diagonal"
    minibatch_seconds: float = 60.0
    max_minibatch_size: int = 10_000
    coordinate: str = "per-entity"
    dedup_horizon_seconds: float = 3600.0

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}.")
        if self.hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {', '.join(HESSIANS)}, got {self.hessian!r}.")
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise ValueError(f"penalty must be a finite number >= 0, got {self.penalty}.")
        if not (math.isfinite(self.forgetting_factor) and 0 <= self.forgetting_factor <= 1):
            raise ValueError(f"forgetting_factor must be in [0, 1], got {self.forgetting_factor}.")
        if not (math.isfinite(self.minibatch_seconds) and self.minibatch_seconds > 0):
            raise ValueError(f"minibatch_seconds must be > 0, got {self.minibatch_seconds}.")
        if self.minibatch_ms != self.minibatch_seconds * 1000:
            raise ValueError(f"minibatch_seconds must be a whole number of milliseconds, got {self.minibatch_seconds}.")
        if self.max_minibatch_size < 1:
            raise ValueError(f"max_minibatch_size must be >= 1, got {self.max_minibatch_size}.")
        if not (math.isfinite(self.dedup_horizon_seconds) and self.dedup_horizon_seconds >= 0):
            raise ValueError(f"dedup_horizon_seconds must be >= 0 (0: off), got {self.dedup_horizon_seconds}.")
        if self.dedup_horizon_ms != self.dedup_horizon_seconds * 1000:
            raise ValueError(
                f"dedup_horizon_seconds must be a whole number of milliseconds, got {self.dedup_horizon_seconds}.")
        if not self.coordinate or "/" in self.coordinate:
            raise ValueError(f"coordinate must be a non-empty name without '/', got {self.coordinate!r}.")

    @property
    def minibatch_ms(self) -> int:
        """Length of a mini-batch interval in milliseconds."""
        return int(round(self.minibatch_seconds * 1000))

    @property
    def dedup_horizon_ms(self) -> int:
        """How long (event time) an entity remembers the uids it trained on; 0: no de-duplication."""
        return int(round(self.dedup_horizon_seconds * 1000))

    @property
    def binary_labels(self) -> bool:
        """Whether the trainer needs labels in {0, 1} / {-1, +1}."""
        return self.trainer != "linear"

    def batch_end(self, timestamp_ms: int) -> int:
        """End (exclusive) of the epoch-aligned interval holding ``timestamp_ms``."""
        return (timestamp_ms // self.minibatch_ms + 1) * self.minibatch_ms

    def minibatch_of(self, timestamp_ms: int, flushed_until_ms: int) -> Tuple[int, bool]:
        """(end of the mini-batch an example joins, whether it is late) for an entity whose
        mini-batches up to ``flushed_until_ms`` are trained: its own interval, or, when that was
        already trained, the entity's next one (a late example is never dropped)."""
        end = self.batch_end(timestamp_ms)
        if end <= flushed_until_ms:
            return flushed_until_ms + self.minibatch_ms, True
        return end, False


class MinibatchResult(NamedTuple):
    """What one update produced. On failure ``model`` is the previous model and ``failure`` says why."""

    model: RandomEffectModel
    num_examples: int
    loss: Optional[float]
    converged: bool
    failure: Optional[str]
    labels: np.ndarray
    weights: np.ndarray
    offset_scores: np.ndarray
    model_scores: np.ndarray
    train_seconds: float


def order_minibatch(examples: Sequence[Example]) -> List[Example]:
    """Examples in training order: by (timestamp, uid), ties broken by content so order never depends on arrival."""
    return sorted(examples, key=lambda e: (e.timestamp_ms, e.uid or "", e.label, e.weight, e.offset, e.features))


def split_duplicates(examples: Sequence[Example], recent_uids: Dict[str, int]) -> Tuple[List[Example], List[Example]]:
    """(fresh, duplicates) of a mini-batch in training order: an example is a duplicate when its uid
    was trained on recently (``recent_uids``) or appears earlier in the mini-batch. Examples without
    a uid are never duplicates."""
    fresh, duplicates, seen = [], [], set()
    for ex in examples:
        if ex.uid is not None and (ex.uid in recent_uids or ex.uid in seen):
            duplicates.append(ex)
        else:
            fresh.append(ex)
            if ex.uid is not None:
                seen.add(ex.uid)
    return fresh, duplicates


def forget_uids(recent_uids: Dict[str, int], batch_end_ms: int, horizon_ms: int) -> None:
    """Drop, in place, the uids of mini-batches that ended ``horizon_ms`` or more before ``batch_end_ms``."""
    cutoff = batch_end_ms - horizon_ms
    for uid in [u for u, end in recent_uids.items() if end <= cutoff]:
        del recent_uids[uid]


def chunks(examples: Sequence[Example], size: int) -> List[Sequence[Example]]:
    """Consecutive chunks of at most ``size`` examples."""
    return [examples[i:i + size] for i in range(0, len(examples), size)]


def _expanded(model: RandomEffectModel, examples: Sequence[Example], penalty: float):
    """Index map (model features first, then new ones in order of appearance) and the prior in it."""
    names = list(model.feature_names)
    index: Dict = {nt: i for i, nt in enumerate(names)}
    for ex in examples:
        for name, term, _ in ex.features:
            if (name, term) not in index:
                index[(name, term)] = len(names)
                names.append((name, term))
    d, d_old = len(names), len(model.feature_names)
    theta = np.zeros(d)
    theta[:d_old] = model.means
    precisions = None if model.precisions is None else np.concatenate([model.precisions, np.full(d - d_old, penalty)])
    matrix = None
    if model.precision_matrix is not None:
        matrix = np.diag(np.full(d, float(penalty)))
        matrix[:d_old, :d_old] = model.precision_matrix
    return names, index, theta, precisions, matrix


def design_matrix(examples: Sequence[Example], index: Dict, d: int):
    """Rows of the examples, intercept (column 0) = 1: dense when small (cheaper to build and
    solve), CSR otherwise. Features are unique within an example, so plain assignment is exact."""
    rows, columns, values = [], [], []
    for i, ex in enumerate(examples):
        for name, term, value in ex.features:
            rows.append(i)
            columns.append(index[(name, term)])
            values.append(value)
    n = len(examples)
    if n * d <= _DENSE_ENTRIES:
        X = np.zeros((n, d))
        X[:, 0] = 1.0
        if rows:
            X[rows, columns] = values
        return X
    X = sparse.csr_matrix((values, (rows, columns)), shape=(n, d))
    return (X + sparse.csr_matrix((np.ones(n), (np.arange(n), np.zeros(n, dtype=np.int64))), shape=(n, d))).tocsr()


def _outcome(model: RandomEffectModel, names: Sequence, window_end_ms: int, batch, seconds: float, warnflag: int,
             task: str, theta, loss, hessian) -> MinibatchResult:
    """The result of a training run, or the failure that keeps the previous model: the optimiser
    failed, the coefficients are not finite, or the Hessian (``hessian()`` -> (diagonal or None, full
    matrix or None), only asked for after the other checks) is not positive and finite.
    ``batch`` is (labels, weights, offset scores, model scores) of the mini-batch."""
    n = len(batch[0])

    def failed(reason: str) -> MinibatchResult:
        return MinibatchResult(model, n, None, False, reason + "; the entity keeps its previous model.", *batch,
                               seconds)

    if warnflag == 2:
        return failed(f"training failed ({task})")
    theta = np.asarray(theta, dtype=float)
    if not np.isfinite(theta).all():
        return failed("training produced non-finite coefficients")
    precisions, matrix = hessian()
    if precisions is not None and not (np.isfinite(precisions).all() and (precisions > 0).all()):
        return failed("training produced a Hessian that is not positive and finite")
    updated = RandomEffectModel(model.entity_id, tuple(names), theta, precisions, model.version + 1, window_end_ms,
                                matrix)
    return MinibatchResult(updated, n, float(loss), warnflag == 0, None, *batch, seconds)


def train_minibatch(model: Optional[RandomEffectModel], entity_id: str, examples: Sequence[Example],
                    window_end_ms: int, config: UpdateConfig) -> MinibatchResult:
    """Score the mini-batch with the current model (progressive validation), then update the model.

    The update is the core trainer with the entity's current means and precisions as the prior,
    every known coefficient included; new features start at mean 0 with precision ``penalty``.
    Small problems with a diagonal prior (the common case: a few examples, a few features) take a
    plain-Python path with the same iteration as the trainers; the rest go through the trainers.
    """
    if model is None:
        model = cold_model(entity_id, config.penalty)
    if len(examples) <= SMALL_MAX_ENTRIES:
        result = train_minibatch_small(model, entity_id, examples, window_end_ms, config)
        if result is not None:
            return result
    return train_minibatch_general(model, entity_id, examples, window_end_ms, config)


def train_minibatch_small(model: RandomEffectModel, entity_id: str, examples: Sequence[Example],
                          window_end_ms: int, config: UpdateConfig) -> Optional[MinibatchResult]:
    """``train_minibatch`` for a small problem with a diagonal prior, on lists of floats; None when it
    does not apply (more than ``SMALL_MAX_ENTRIES`` examples x active columns, a full prior matrix, no
    penalty, labels the trainer would reject), so that the caller takes the general path.

    Same index map, prior, solver steps (``lambda_core.newton_small`` mirrors the trainers' Newton
    iteration), closed form for untouched columns and Hessian as ``train_minibatch_general``; the
    results agree to rounding. Features are unique within an example (the parser guarantees it).
    """
    # Without a penalty the optimum may be a ray or a subspace (separable or under-determined data),
    # or so flat that rounding moves it: any two solvers legitimately disagree there. Leave those to
    # the general path, so that the small one only meets problems with a positive prior everywhere.
    if model.precision_matrix is not None or not config.penalty > 0:
        return None
    logistic = config.trainer != "linear"
    names = list(model.feature_names)
    index = {nt: i for i, nt in enumerate(names)}
    d_old = len(names)
    theta0 = model.means.tolist()
    rows, used = [], {0}
    labels, weights, offsets, model_scores = [], [], [], []
    for ex in examples:
        label = ex.label
        if logistic and label != 1.0 and label != 0.0 and label != -1.0:
            return None  # the trainer raises its ValueError for these
        row = [(0, 1.0)]
        score = theta0[0]
        for name, term, value in ex.features:
            key = (name, term)
            j = index.get(key)
            if j is None:
                j = index[key] = len(names)
                names.append(key)
            elif j < d_old:
                score += value * theta0[j]
            # A zero leaves the column unused, as the trainers' dense scan of the design matrix sees it.
            if value != 0.0:
                row.append((j, value))
                used.add(j)
        rows.append(row)
        labels.append(label)
        weights.append(ex.weight)
        offsets.append(ex.offset)
        model_scores.append(score + ex.offset)
    k = len(used)
    if k * len(rows) > SMALL_MAX_ENTRIES:
        return None
    d = len(names)
    penalty = float(config.penalty)
    if config.trainer == "sequential_bayesian_logistic":
        delta = float(config.forgetting_factor)
        ridge, scale = (1.0 - delta) * penalty, delta
        precision = [penalty] * d_old if model.precisions is None else model.precisions.tolist()
    else:
        ridge, scale = penalty, 0.0
        precision = [0.0] * d_old
    if d > d_old:
        theta0 += [0.0] * (d - d_old)
        precision += [penalty if scale else 0.0] * (d - d_old)

    if k == d:
        active, local_rows = range(d), rows
    else:
        active = sorted(used)
        local = {g: i for i, g in enumerate(active)}
        local_rows = [[(local[c], v) for c, v in row] for row in rows]
    y = [(-1.0 if label == 1.0 else 1.0) for label in labels] if logistic else labels
    started = time.perf_counter()
    solution = newton_small(local_rows, y, weights, offsets, [theta0[g] for g in active],
                            [precision[g] for g in active], ridge, scale, logistic)
    seconds = time.perf_counter() - started
    batch = (np.array(labels), np.array(weights), np.array(offsets), np.array(model_scores))
    if solution.warnflag == 2:
        return _outcome(model, names, window_end_ms, batch, seconds, 2, solution.task, theta0, None, None)
    if k == d:
        theta = solution.theta
        loss = solution.loss
    else:
        # Columns the mini-batch does not touch decouple under a diagonal prior: closed-form optimum
        # (the prior mean shrunk by the forgetting factor), or the prior mean when nothing holds it.
        theta = []
        for c, p in zip(theta0, precision):
            denom = ridge + scale * p
            theta.append(scale * p * c / denom if denom > 0 else c)
        for i, g in enumerate(active):
            theta[g] = solution.theta[i]
        tt = dp = 0.0
        for t, c, p in zip(theta, theta0, precision):
            dev = t - c
            tt += t * t
            dp += dev * (dev * p)
        prior = 0.5 * ridge * tt
        if scale:
            prior += 0.5 * scale * dp
        loss = solution.data_loss + prior

    def hessian():
        hessian_type = HESSIANS[config.hessian]
        if hessian_type is HessianType.NONE:
            return None, None
        if hessian_type is HessianType.IDENTITY:
            return np.ones(d), None
        diagonal = np.array([ridge + scale * p for p in precision])
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
        matrix = np.diag(diagonal)
        matrix[np.ix_(active, active)] += gram
        return np.diagonal(matrix).copy(), matrix

    return _outcome(model, names, window_end_ms, batch, seconds, solution.warnflag, solution.task, theta, loss,
                    hessian)


def train_minibatch_general(model: Optional[RandomEffectModel], entity_id: str, examples: Sequence[Example],
                            window_end_ms: int, config: UpdateConfig) -> MinibatchResult:
    """``train_minibatch`` through the lambda_core trainer classes, for any size and any prior: the
    reference the small-problem path is tested against."""
    if model is None:
        model = cold_model(entity_id, config.penalty)
    names, index, theta0, precisions, matrix = _expanded(model, examples, config.penalty)
    d = len(names)
    X = design_matrix(examples, index, d)
    labels = np.array([e.label for e in examples])
    weights = np.array([e.weight for e in examples])
    offsets = np.array([e.offset for e in examples])
    model_scores = np.asarray(X @ theta0).reshape(-1) + offsets
    data = IndexedDataset(X, labels, weights, offsets)
    hessian_type = HESSIANS[config.hessian]
    started = time.perf_counter()
    if config.trainer == "sequential_bayesian_logistic":
        prior = IndexedModel(theta0, matrix if matrix is not None else precisions)
        trainer = TrainerSequentialBayesianLogisticLossWithL2(
            training_data=data, initial_model=prior, hessian_type=hessian_type, penalty=config.penalty,
            delta=config.forgetting_factor)
    else:
        cls = TrainerLogisticLossWithL2 if config.trainer == "logistic" else TrainerSquareLossWithL2
        trainer = cls(training_data=data, initial_model=IndexedModel(theta0), hessian_type=hessian_type,
                      penalty=config.penalty)
    trained, loss, meta = trainer.train()
    seconds = time.perf_counter() - started

    def hessian():
        if hessian_type is HessianType.FULL:
            matrix = np.asarray(trained.hessian.toarray())
            return np.diagonal(matrix).copy(), matrix
        return trained.hessian_diagonal(), None

    return _outcome(model, names, window_end_ms, (labels, weights, offsets, model_scores), seconds,
                    meta["warnflag"], meta["task"], trained.theta, loss, hessian)


class EntityFlush(NamedTuple):
    """What training one entity's due mini-batches produced (``train_due``).

    ``model`` and ``recent_uids`` are the entity's state afterwards and ``changed`` whether it
    differs from before; ``updates`` the update records, in order; ``validation`` one
    progressive-validation record per trained (or failed) chunk; ``dead_letters`` the duplicates
    and the examples of failed updates; the rest are counts for the job's metrics.
    """

    model: Optional[RandomEffectModel]
    recent_uids: Dict[str, int]
    changed: bool
    updates: List[dict]
    validation: List[dict]
    dead_letters: List[DeadLetter]
    minibatch_sizes: List[int]
    train_micros: List[int]
    duplicates: int
    failed_updates: int
    examples_failed: int
    examples_trained: int


def train_due(model: Optional[RandomEffectModel], recent_uids: Dict[str, int], entity_id: str,
              due: Dict[int, Sequence[Example]], config: UpdateConfig) -> EntityFlush:
    """Train an entity's due mini-batches (``{mini-batch end: examples}``) in interval order: the
    step the job's flush applies and ``pipeline.replay`` applies the same way, so the two agree bit
    for bit.

    Each mini-batch is put in training order; with de-duplication on, uids of mini-batches that
    ended a horizon or more before it are forgotten first and then its duplicates are dead letters;
    it is trained in chunks of at most ``max_minibatch_size``. A failed chunk keeps the model and
    sends each of its examples to the dead letters; only trained uids are remembered.
    """
    recent = dict(recent_uids)
    horizon = config.dedup_horizon_ms
    changed = False
    updates, validation, dead = [], [], []
    sizes, micros = [], []
    duplicates = failed = failed_examples = trained = 0
    for end in sorted(due):
        examples = order_minibatch(due[end])
        if horizon:
            if recent:
                before = len(recent)
                forget_uids(recent, end, horizon)
                changed |= len(recent) != before
            examples, repeated = split_duplicates(examples, recent)
            duplicates += len(repeated)
            dead.extend(DeadLetter("duplicate", "dedup", source_payload(ex), "duplicate") for ex in repeated)
        for chunk in chunks(examples, config.max_minibatch_size):
            result = train_minibatch(model, entity_id, chunk, end, config)
            sizes.append(len(chunk))
            micros.append(int(result.train_seconds * 1e6))
            validation.append({
                "modelId": entity_id, "windowEnd": end, "labels": result.labels.tolist(),
                "weights": result.weights.tolist(), "offsetScores": result.offset_scores.tolist(),
                "modelScores": result.model_scores.tolist(),
            })
            if result.failure is not None:
                failed += 1
                failed_examples += len(chunk)
                # One dead letter per example, each carrying its record as read, so that the
                # mini-batch can be fixed and fed back record by record.
                dead.extend(DeadLetter(result.failure, "train", source_payload(ex), "training") for ex in chunk)
                continue
            model = result.model
            changed = True
            if horizon:
                recent.update((ex.uid, end) for ex in chunk if ex.uid is not None)
            trained += len(chunk)
            updates.append(update_record(model, num_examples=len(chunk), loss=result.loss,
                                         converged=result.converged, coordinate=config.coordinate,
                                         trainer=config.trainer))
    return EntityFlush(model, recent, changed, updates, validation, dead, sizes, micros, duplicates, failed,
                       failed_examples, trained)
