"""One entity's mini-batch update, in plain Python: the step the Beam job applies per entity.

Kept free of Beam so that it can be tested (and replayed) directly: the job's result must equal
``train_minibatch`` applied to each entity's mini-batches in order. It holds no math: it maps the
entity's (name, term) keys to columns, turns elapsed event time into the forgetting factor
(``lambda_core.forgetting_factor``) and calls ``lambda_core.update_entity``.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from lambda_core import (
    DEFAULT_FORGETTING_TARGET,
    DEFAULT_TRAINER,
    FORGETTING_TARGETS,
    HessianType,
    LabelRule,
    TrainerSpec,
    forgetting_factor,
    margins,
    trainer_spec,
    update_entity,
)

from .examples import DeadLetter, Example, source_payload
from .models import RandomEffectModel, cold_model, update_record

HESSIANS = {"full": HessianType.FULL, "diagonal": HessianType.DIAGONAL, "identity": HessianType.IDENTITY,
            "none": HessianType.NONE}
#: How forgetting is clocked: by elapsed event time (the default) or once per update (lambda-learner's rule).
FORGETTING_CLOCKS = ("event-time", "update")
#: The job's default forgetting (when no --forgetting-factor is given): the past's weight halves
#: every hour of event time. Measured on simulated streams (see the README): change it here.
DEFAULT_FORGETTING_HALF_LIFE_SECONDS = 3_600.0
#: The global correction coordinate (``--global-correction``): "independent" is one global model
#: of the examples' features, learned interval by interval from the examples' own offsets; every
#: example's offset is raised by its score under the global model as of the end of the interval
#: before its own. "none" turns it off; "auto" (the default) is "independent" for the logistic
#: trainer, where it was measured (see the README), and "none" for the others, whose contract is
#: each entity's exact conjugate (linear: batch ridge) update.
GLOBAL_CORRECTIONS = ("auto", "none", "independent")
#: The global correction model's id and coordinate name (its update records and snapshot).
GLOBAL_MODEL_ID = "global"
GLOBAL_COORDINATE = "global-correction"


@dataclass(frozen=True)
class UpdateConfig:
    """What every entity's update uses; validated on construction: ``ValueError`` with one sentence that
    starts with the offending field's name (the command line turns it into the flag's name).

    These defaults are the job's defaults (the command line reads them from here).

    Forgetting: before each update the entity's posterior is forgotten by a factor ``delta``
    (``lambda_core.QuadraticPrior.sequential``) that depends on ``elapsed``, the event time from the
    end of the entity's last trained mini-batch to the end of this one (one interval for a model this
    job has not trained yet, e.g. an initial model):

    * ``forgetting_factor`` given: ``delta = forgetting_factor ** (elapsed / minibatch_seconds)``, the
      weight the past keeps per mini-batch interval -- lambda-learner's per-update ``delta`` for an
      entity updated in every interval. 1 means no forgetting at all, whatever else is set (the
      half-life is then not used).
    * otherwise ``delta = 2 ** (-elapsed / forgetting_half_life_seconds)`` (the default).

    ``forgetting_clock="update"`` restores lambda-learner's rule: ``elapsed`` is one interval at every
    update, whatever the event time. ``forgetting_target`` is where forgetting pulls.
    """

    trainer: str = DEFAULT_TRAINER
    penalty: float = 3.0
    forgetting_factor: Optional[float] = None
    hessian: str = "diagonal"
    minibatch_seconds: float = 60.0
    max_minibatch_size: int = 10_000
    coordinate: str = "per-entity"
    dedup_horizon_seconds: float = 3600.0
    forgetting_half_life_seconds: Optional[float] = DEFAULT_FORGETTING_HALF_LIFE_SECONDS
    forgetting_clock: str = "event-time"
    forgetting_target: str = DEFAULT_FORGETTING_TARGET
    global_correction: str = "auto"
    global_penalty: float = 300.0

    def __post_init__(self):
        trainer_spec(self.trainer)  # raises "trainer ..." for an unknown or a memoryless trainer
        if self.hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {', '.join(HESSIANS)}, got {self.hessian!r}.")
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise ValueError(f"penalty must be a finite number >= 0, got {self.penalty}.")
        if not (math.isfinite(self.global_penalty) and self.global_penalty >= 0):
            raise ValueError(f"global_penalty must be a finite number >= 0, got {self.global_penalty}.")
        factor, half_life = self.forgetting_factor, self.forgetting_half_life_seconds
        if factor is not None and not (math.isfinite(factor) and 0 <= factor <= 1):
            raise ValueError(f"forgetting_factor must be in [0, 1], got {factor}.")
        if half_life is not None and not half_life > 0:
            raise ValueError(f"forgetting_half_life_seconds must be > 0 (inf: no forgetting), got {half_life}.")
        if factor is None and half_life is None:
            raise ValueError("forgetting_factor or forgetting_half_life_seconds must be given.")
        if self.forgetting_clock not in FORGETTING_CLOCKS:
            raise ValueError(f"forgetting_clock must be one of {', '.join(FORGETTING_CLOCKS)}, "
                             f"got {self.forgetting_clock!r}.")
        if self.forgetting_target not in FORGETTING_TARGETS:
            raise ValueError(f"forgetting_target must be one of {', '.join(FORGETTING_TARGETS)}, "
                             f"got {self.forgetting_target!r}.")
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
        if self.global_correction not in GLOBAL_CORRECTIONS:
            raise ValueError(f"global_correction must be one of {', '.join(GLOBAL_CORRECTIONS)}, "
                             f"got {self.global_correction!r}.")
        if not self.coordinate or "/" in self.coordinate:
            raise ValueError(f"coordinate must be a non-empty name without '/', got {self.coordinate!r}.")

    @property
    def spec(self) -> TrainerSpec:
        """The trainer's registry entry (loss family, Photon model class)."""
        return trainer_spec(self.trainer)

    @property
    def label_rule(self) -> LabelRule:
        """The labels the trainer accepts."""
        return self.spec.label_rule

    @property
    def corrects(self) -> bool:
        """Whether the job has the global correction stage (``global_correction`` resolved)."""
        if self.global_correction == "auto":
            return self.trainer == DEFAULT_TRAINER
        return self.global_correction == "independent"

    @property
    def global_config(self) -> "UpdateConfig":
        """The update of the global correction model: the entities' settings with its own penalty
        (``global_penalty``: it learns from every example, so a far stronger prior keeps it from
        chasing each interval's noise) and coordinate name. It de-duplicates as the entities do,
        over every uid of the horizon, so a redelivered example is trained once here too."""
        return dataclasses.replace(self, penalty=self.global_penalty, coordinate=GLOBAL_COORDINATE,
                                   global_correction="none")

    @property
    def minibatch_ms(self) -> int:
        """Length of a mini-batch interval in milliseconds."""
        return int(round(self.minibatch_seconds * 1000))

    @property
    def dedup_horizon_ms(self) -> int:
        """How long (event time) an entity remembers the uids it trained on; 0: no de-duplication."""
        return int(round(self.dedup_horizon_seconds * 1000))

    def batch_end(self, timestamp_ms: int) -> int:
        """End (exclusive) of the epoch-aligned interval holding ``timestamp_ms``."""
        return (timestamp_ms // self.minibatch_ms + 1) * self.minibatch_ms

    def delta(self, model: RandomEffectModel, window_end_ms: int) -> float:
        """The forgetting factor of ``model``'s posterior for the mini-batch ending at ``window_end_ms``."""
        if self.forgetting_clock == "update" or model.window_end_ms <= 0:
            elapsed = self.minibatch_ms
        else:
            elapsed = window_end_ms - model.window_end_ms
        if self.forgetting_factor is not None:
            return forgetting_factor(elapsed, self.minibatch_ms, float(self.forgetting_factor))
        return forgetting_factor(elapsed, self.minibatch_ms, 1.0, self.forgetting_half_life_seconds * 1000.0)

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


def _columns(model: RandomEffectModel, examples: Sequence[Example]):
    """The entity's (name, term) keys (the model's first, then new ones in order of appearance) and the
    examples as sparse rows over them: intercept (column 0) first, zero values left out. Features are
    unique within an example (the parser guarantees it)."""
    names = list(model.feature_names)
    index: Dict = {nt: i for i, nt in enumerate(names)}
    rows = []
    for ex in examples:
        row = [(0, 1.0)]
        for name, term, value in ex.features:
            key = (name, term)
            j = index.get(key)
            if j is None:
                j = index[key] = len(names)
                names.append(key)
            if value != 0.0:
                row.append((j, value))
        rows.append(row)
    return names, rows


def training_offsets(examples: Sequence[Example]) -> List[float]:
    """The offsets an entity's model sees: each example's offset plus its global correction."""
    return [e.offset + e.correction if e.correction else e.offset for e in examples]


def score_examples(model: Optional[RandomEffectModel], examples: Sequence[Example],
                   offsets: Optional[Sequence[float]] = None) -> np.ndarray:
    """Each example's score (margin) under ``model``, which does not learn from them, on top of
    ``offsets`` (default: ``training_offsets``); the offsets alone without a model."""
    offsets = training_offsets(examples) if offsets is None else offsets
    if model is None:
        return np.array(offsets, dtype=float)
    _, rows = _columns(model, examples)
    return margins(rows, model.means, offsets)


def _reference(model: Optional[RandomEffectModel], config: UpdateConfig):
    """What forgetting target "initial" pulls towards: the model the entity entered the job with (its
    means and precisions), kept in the model from then on; empty for an entity that started cold."""
    if config.forgetting_target != "initial":
        return None
    if model is None:
        return (np.zeros(0), np.zeros(0))
    if model.reference is not None:
        return model.reference
    precisions = model.precisions if model.precisions is not None else np.full(len(model.means), config.penalty)
    return (model.means.copy(), precisions.copy())


def train_minibatch(model: Optional[RandomEffectModel], entity_id: str, examples: Sequence[Example],
                    window_end_ms: int, config: UpdateConfig, small: Optional[bool] = None) -> MinibatchResult:
    """Score the mini-batch with the current model (progressive validation), then update the model.

    The update is ``lambda_core.update_entity``: the entity's current means and precisions (every
    known coefficient included; new features start at mean 0 with precision ``penalty``), forgotten
    by ``config.delta``, are the prior. ``small`` is passed on (None: the core's rule picks the
    plain-Python or the numpy solver; the tests force each).
    """
    reference = _reference(model, config)
    if model is None:
        model = cold_model(entity_id, config.penalty)
    names, rows = _columns(model, examples)
    labels = [e.label for e in examples]
    weights = [e.weight for e in examples]
    offsets = training_offsets(examples)
    update = update_entity(rows, labels, weights, offsets, model.means, model.precisions, model.precision_matrix,
                           len(names), family=config.spec.family, penalty=float(config.penalty),
                           delta=config.delta(model, window_end_ms), hessian_type=HESSIANS[config.hessian],
                           target=config.forgetting_target, reference=reference, small=small)
    if update is None:
        return None
    # The validation's baseline is the offset as it arrived, without the global correction.
    batch = (np.array(labels), np.array(weights), np.array([e.offset for e in examples]), update.model_scores)
    if update.failure is not None:
        return MinibatchResult(model, len(examples), None, False,
                               update.failure + "; the entity keeps its previous model.", *batch, update.seconds)
    updated = RandomEffectModel(model.entity_id, tuple(names), update.theta, update.precisions, model.version + 1,
                                window_end_ms, update.matrix, reference)
    return MinibatchResult(updated, len(examples), update.loss, update.converged, None, *batch, update.seconds)


def train_minibatch_small(model: RandomEffectModel, entity_id: str, examples: Sequence[Example],
                          window_end_ms: int, config: UpdateConfig) -> Optional[MinibatchResult]:
    """``train_minibatch`` through the core's plain-Python solver; None where it does not apply."""
    return train_minibatch(model, entity_id, examples, window_end_ms, config, small=True)


def train_minibatch_general(model: Optional[RandomEffectModel], entity_id: str, examples: Sequence[Example],
                            window_end_ms: int, config: UpdateConfig) -> MinibatchResult:
    """``train_minibatch`` through the core's numpy solver, for any size and any prior: the reference
    the small path is tested against."""
    return train_minibatch(model, entity_id, examples, window_end_ms, config, small=False)


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


def as_global_model(model: RandomEffectModel) -> RandomEffectModel:
    """An initial global model under the global model's id, whatever id its record had, so that
    its updates and the snapshot name it ``GLOBAL_MODEL_ID``."""
    return model._replace(entity_id=GLOBAL_MODEL_ID)


def correction_scores(model: Optional[RandomEffectModel], examples: Sequence[Example]) -> List[float]:
    """Each example's score under the global correction model, without its offset (0 before the
    global model has learned anything)."""
    return score_examples(model, examples, [0.0] * len(examples)).tolist()


class GlobalFlush(NamedTuple):
    """What the global correction stage produced for its due intervals (``correct_due``).

    ``model`` is the global model afterwards; ``examples`` every due example in training order,
    each with its ``correction``; ``updates`` the global model's update records; the rest are
    counts for the job's metrics.
    """

    model: Optional[RandomEffectModel]
    recent_uids: Dict[str, int]
    changed: bool
    examples: List[Example]
    updates: List[dict]
    failed_updates: int
    train_micros: List[int]


def correct_due(model: Optional[RandomEffectModel], recent_uids: Dict[str, int], due: Dict[int, Sequence[Example]],
                config: UpdateConfig) -> GlobalFlush:
    """The global correction stage's step, for the job and ``pipeline.replay`` alike: for each due
    interval in order, score its examples with the global model as it stands (trained on the
    intervals before), then train the global model on them (``train_due`` with
    ``config.global_config``, so the model learns from the examples' own offsets, each (entity, uid)
    once within the horizon: ``recent_uids`` are those it trained on, as "entity\x1fuid"). A failed update keeps the global
    model; duplicates and the examples of a failed update still go on to their entities, whose
    stage dead-letters what it does not train."""
    settings = config.global_config
    corrected, updates, micros = [], [], []
    failed, changed = 0, False
    for end in sorted(due):
        examples = order_minibatch(due[end])
        corrected.extend(ex._replace(correction=score)
                         for ex, score in zip(examples, correction_scores(model, examples)))
        # A uid is an entity's (two entities may use the same one): remembered with the entity's id.
        keyed = [ex if ex.uid is None else ex._replace(uid=f"{ex.entity_id}\x1f{ex.uid}") for ex in examples]
        flush = train_due(model, recent_uids, GLOBAL_MODEL_ID, {end: keyed}, settings)
        model, recent_uids, changed = flush.model, flush.recent_uids, changed or flush.changed
        updates.extend(flush.updates)
        micros.extend(flush.train_micros)
        failed += flush.failed_updates
    return GlobalFlush(model, recent_uids, changed, corrected, updates, failed, micros)
