"""The job's per-entity updates without Beam: the state machine ``pipeline.replay`` drives.

``EntityReplay`` keeps what the job's stateful step keeps per entity (the model, the uids it
trained on recently, the end of the last mini-batch it trained, the examples waiting for their
interval to close) and applies the same two rules: an example joins its interval, or the entity's
next one when its interval was already trained (``UpdateConfig.minibatch_of``), and when the
watermark passes an interval's end the entity's due mini-batches are trained in order
(``update.train_due``). So the models equal the job's bit for bit.

The watermark is the newest event time read minus ``lateness_ms`` (every record whose entity and
event time can be read moves it, whether or not the rest of it is valid), as a streaming source whose
disorder is bounded by that much would report it; at the end of the input it passes everything,
as the batch job's does. For input ordered by event time with disorder below ``lateness_ms`` the
result is the batch job's, and memory holds the models plus the examples of the intervals still
open; an example further behind is late, exactly as it would be in a streaming job with that
watermark, and is trained in its entity's next mini-batch.

``GlobalReplay`` is the job's global correction stage the same way: one model, its buffer and
flush mark, with the same watermark; its flushes pass each example, with its correction, to
``EntityReplay.buffer_example`` before the watermark moves on.
"""

import dataclasses
import heapq
import time
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .examples import Example
from .models import RandomEffectModel, newer
from .update import (
    EntityFlush,
    GlobalFlush,
    UpdateConfig,
    as_global_model,
    chunks,
    correct_due,
    order_minibatch,
    score_examples,
    train_due,
    train_minibatch,
)


def move_watermark(stage, timestamp_ms: int) -> Optional[int]:
    """A record with event time ``timestamp_ms`` was read: a replay stage's watermark (its
    ``watermark_ms``, trailing the newest event time by its ``lateness_ms``) moves, never back;
    returned (None when the stage has no watermark: everything waits for the end)."""
    if stage.lateness_ms is None:
        return None
    mark = timestamp_ms - stage.lateness_ms
    if stage.watermark_ms is None or mark > stage.watermark_ms:
        stage.watermark_ms = mark
    return stage.watermark_ms


class EntityReplay:
    """Per-entity state and buffers of a replay; feed models, then examples in input order."""

    def __init__(self, config: UpdateConfig, lateness_ms: Optional[int]):
        self.config = config
        self.lateness_ms = lateness_ms
        self.models: Dict[str, RandomEffectModel] = {}
        self.recent_uids: Dict[str, Dict[str, int]] = {}
        self.flushed_until: Dict[str, int] = {}
        self.buffers: Dict[str, Dict[int, List[Example]]] = {}
        self._due: List[Tuple[int, str]] = []  # (mini-batch end, entity) heap; stale entries are skipped
        self.watermark_ms: Optional[int] = None
        self.late_examples = 0
        self.initial_models = 0
        self.cold_start_entities = 0
        #: CPU seconds spent training (and scoring) mini-batches: the learner's cost
        self.train_seconds = 0.0

    def add_model(self, model: RandomEffectModel) -> None:
        """An initial model (before any example, as the job's models are at MIN_TIMESTAMP)."""
        self.initial_models += 1
        current = self.models.get(model.entity_id)
        self.models[model.entity_id] = model if current is None else newer(current, model)

    def add_example(self, ex: Example) -> Iterable[Tuple[str, EntityFlush]]:
        """Buffer ``ex`` and train what the watermark, moved by it, makes due: ``(entity, flush)``."""
        self.buffer_example(ex)
        return self.advance(ex.timestamp_ms)

    def buffer_example(self, ex: Example) -> None:
        """Buffer ``ex`` without moving the watermark (the examples a global correction flush passes
        on all arrive before the watermark moves on, as the job's timer hold keeps them)."""
        entity = ex.entity_id
        end, late = self.config.minibatch_of(ex.timestamp_ms, self.flushed_until.get(entity, 0))
        if late:
            self.late_examples += 1
        by_end = self.buffers.get(entity)
        if by_end is None:
            by_end = self.buffers[entity] = {}
        batch = by_end.get(end)
        if batch is None:
            batch = by_end[end] = []
            heapq.heappush(self._due, (end, entity))
        batch.append(ex)

    def advance(self, timestamp_ms: int) -> Iterable[Tuple[str, EntityFlush]]:
        """A record with event time ``timestamp_ms`` was read (an example of this replay's or not, see
        ``pipeline.replay``'s shards): move the watermark and train what it makes due."""
        if move_watermark(self, timestamp_ms) is None:
            return ()
        if self._due and self._due[0][0] <= self.watermark_ms:
            return self._flush_until(self.watermark_ms)
        return ()  # most records: nothing due, and no generator made for it

    def finish(self) -> Iterator[Tuple[str, EntityFlush]]:
        """The end of the input: the watermark passes every interval."""
        for entity in sorted(self.buffers):
            yield entity, self._flush(entity, None)
        self._due.clear()

    def _flush_until(self, watermark_ms: int) -> Iterator[Tuple[str, EntityFlush]]:
        while self._due and self._due[0][0] <= watermark_ms:
            end, entity = heapq.heappop(self._due)
            by_end = self.buffers.get(entity)
            if by_end is not None and end in by_end:
                yield entity, self._flush(entity, watermark_ms)

    def _flush(self, entity: str, watermark_ms: Optional[int]) -> EntityFlush:
        by_end = self.buffers[entity]
        due = {end: batch for end, batch in by_end.items() if watermark_ms is None or end <= watermark_ms}
        for end in due:
            del by_end[end]
        if not by_end:
            del self.buffers[entity]
        model = self.models.get(entity)
        if model is None:
            self.cold_start_entities += 1
        started = time.process_time()
        flushed = train_due(model, self.recent_uids.get(entity, {}), entity, due, self.config)
        self.train_seconds += time.process_time() - started
        if flushed.changed:
            self.models[entity] = flushed.model
            if flushed.recent_uids:
                self.recent_uids[entity] = flushed.recent_uids
            else:
                self.recent_uids.pop(entity, None)
        self.flushed_until[entity] = max(max(due), self.flushed_until.get(entity, 0))
        return flushed


class GlobalReplay:
    """The job's global correction stage without Beam (``random_effects.GlobalCorrectionFn``): one
    model, its buffered examples by interval and its flush mark, with the entity stage's rules
    (``minibatch_of``, and the due intervals trained in order by ``update.correct_due``) and the
    watermark of ``EntityReplay``. Feed every example of the input, whichever shard owns its entity."""

    def __init__(self, config: UpdateConfig, lateness_ms: Optional[int]):
        self.config = config
        self.lateness_ms = lateness_ms
        self.model: Optional[RandomEffectModel] = None
        self.recent_uids: Dict[str, int] = {}
        self.flushed_until = 0
        self.buffers: Dict[int, List[Example]] = {}
        self.watermark_ms: Optional[int] = None
        self.late_examples = 0
        self.initial_models = 0
        self.train_seconds = 0.0

    def add_model(self, model: RandomEffectModel) -> None:
        """The global model to start from (the newest, by the one rule, when given more than one)."""
        self.initial_models += 1
        model = as_global_model(model)
        self.model = model if self.model is None else newer(self.model, model)

    def add_example(self, ex: Example) -> None:
        end, late = self.config.minibatch_of(ex.timestamp_ms, self.flushed_until)
        if late:
            self.late_examples += 1
        self.buffers.setdefault(end, []).append(ex)

    def advance(self, timestamp_ms: int) -> Optional[GlobalFlush]:
        """A record with event time ``timestamp_ms`` was read: move the watermark; the flush of the
        intervals it passes (their examples with their corrections), or None."""
        if move_watermark(self, timestamp_ms) is None:
            return None
        if self.buffers and min(self.buffers) <= self.watermark_ms:
            return self._flush(self.watermark_ms)
        return None

    def finish(self) -> Optional[GlobalFlush]:
        """The end of the input: the watermark passes every interval."""
        return self._flush(None) if self.buffers else None

    def _flush(self, watermark_ms: Optional[int]) -> GlobalFlush:
        due = {end: batch for end, batch in self.buffers.items() if watermark_ms is None or end <= watermark_ms}
        for end in due:
            del self.buffers[end]
        started = time.process_time()
        flushed = correct_due(self.model, self.recent_uids, due, self.config)
        self.train_seconds += time.process_time() - started
        self.model, self.recent_uids = flushed.model, flushed.recent_uids
        self.flushed_until = max(max(due), self.flushed_until)
        return flushed


class PeriodicBatchReplay:
    """The baseline incremental updates replace: every ``every_ms`` of event time, each entity's model
    is retrained on all its examples so far, and used unchanged until the next retrain.

    A retrain starts from what the entity had before any data (its initial model, else the cold
    prior) and trains its examples before the retrain time as one mini-batch (in chunks of at most
    ``max_minibatch_size``), without forgetting: the batch fit a periodic offline job would make.
    Every example is scored, before anything learns from it, by the model of the last retrain
    (progressive validation, as the job scores its mini-batches); ``validation`` yields those
    records and ``train_seconds`` sums the CPU time of the retrains.
    """

    def __init__(self, config: UpdateConfig, every_ms: int):
        # No forgetting: a batch fit weighs all of an entity's data alike.
        self.config = dataclasses.replace(config, forgetting_factor=1.0)
        self.every_ms = every_ms
        self.initial: Dict[str, RandomEffectModel] = {}
        self.models: Dict[str, RandomEffectModel] = {}
        self.history: Dict[str, List[Example]] = {}
        self._changed: set = set()
        self._retrained_until: Optional[int] = None
        self.retrains = 0
        self.train_seconds = 0.0

    def add_model(self, model: RandomEffectModel) -> None:
        """An entity's initial model: its model until the first retrain, and every retrain's start."""
        current = self.initial.get(model.entity_id)
        self.initial[model.entity_id] = model if current is None else newer(current, model)
        self.models[model.entity_id] = self.initial[model.entity_id]

    def add_example(self, ex: Example) -> dict:
        """Score ``ex`` with its entity's current model (retraining first when its time passed a
        retrain time), then keep it for later retrains; return its validation record."""
        boundary = ex.timestamp_ms // self.every_ms * self.every_ms
        if self._retrained_until is None:
            self._retrained_until = boundary
        elif boundary > self._retrained_until:
            self._retrain(boundary)
        model = self.models.get(ex.entity_id)
        score = float(score_examples(model, [ex])[0])
        self.history.setdefault(ex.entity_id, []).append(ex)
        self._changed.add(ex.entity_id)
        return {"modelId": ex.entity_id, "windowEnd": self.config.batch_end(ex.timestamp_ms), "labels": [ex.label],
                "weights": [ex.weight], "offsetScores": [ex.offset], "modelScores": [score]}

    def _retrain(self, boundary: int) -> None:
        started = time.process_time()
        for entity in sorted(self._changed):
            examples = [e for e in self.history[entity] if e.timestamp_ms < boundary]
            if not examples:
                continue
            model = self.initial.get(entity)
            for chunk in chunks(order_minibatch(examples), self.config.max_minibatch_size):
                result = train_minibatch(model, entity, chunk, boundary, self.config)
                if result.failure is None:
                    model = result.model
            if model is not None:
                self.models[entity] = model
            self.retrains += 1
        self._changed = {e for e in self._changed if any(x.timestamp_ms >= boundary for x in self.history[e])}
        self._retrained_until = boundary
        self.train_seconds += time.process_time() - started
