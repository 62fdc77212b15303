"""The job's per-entity updates without Beam: the state machine ``pipeline.replay`` drives.

``EntityReplay`` keeps what the job's stateful step keeps per entity (the model, the uids it
trained on recently, the end of the last mini-batch it trained, the examples waiting for their
interval to close) and applies the same two rules: an example joins its interval, or the entity's
next one when its interval was already trained (``UpdateConfig.minibatch_of``), and when the
watermark passes an interval's end the entity's due mini-batches are trained in order
(``update.train_due``). So the models equal the job's bit for bit.

The watermark is the newest event time seen minus ``lateness_ms``, as a streaming source whose
disorder is bounded by that much would report it; at the end of the input it passes everything,
as the batch job's does. For input ordered by event time with disorder below ``lateness_ms`` the
result is the batch job's, and memory holds the models plus the examples of the intervals still
open; an example further behind is late, exactly as it would be in a streaming job with that
watermark, and is trained in its entity's next mini-batch.
"""

import heapq
from typing import Dict, Iterator, List, Optional, Tuple

from .examples import Example
from .models import RandomEffectModel, newer
from .update import EntityFlush, UpdateConfig, train_due


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

    def add_model(self, model: RandomEffectModel) -> None:
        """An initial model (before any example, as the job's models are at MIN_TIMESTAMP)."""
        self.initial_models += 1
        current = self.models.get(model.entity_id)
        self.models[model.entity_id] = model if current is None else newer(current, model)

    def add_example(self, ex: Example) -> Iterator[Tuple[str, EntityFlush]]:
        """Buffer ``ex`` and train what the watermark, moved by it, makes due: ``(entity, flush)``."""
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
        if self.lateness_ms is not None:
            mark = ex.timestamp_ms - self.lateness_ms
            if self.watermark_ms is None or mark > self.watermark_ms:
                self.watermark_ms = mark
            if self._due[0][0] <= self.watermark_ms:
                yield from self._flush_until(self.watermark_ms)

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
        flushed = train_due(model, self.recent_uids.get(entity, {}), entity, due, self.config)
        if flushed.changed:
            self.models[entity] = flushed.model
            if flushed.recent_uids:
                self.recent_uids[entity] = flushed.recent_uids
            else:
                self.recent_uids.pop(entity, None)
        self.flushed_until[entity] = max(max(due), self.flushed_until.get(entity, 0))
        return flushed
