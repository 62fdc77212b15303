"""The stateful heart of the job: per-entity mini-batches in event time, trained with lambda_core.

``UpdateRandomEffects`` takes raw example records (dicts as read from Avro or JSON lines) and,
optionally, initial model records, and returns ``.updates`` (model-update dicts),
``.dead_letters`` and ``.validation`` (per-update progressive-validation records). With the global
correction (``UpdateConfig.corrects``) a stage keyed by one constant, ``GlobalCorrectionFn``, comes
first and ``.global_updates`` holds its model's updates.
"""

import time
from collections import defaultdict
from typing import Any, Dict, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from . import progress
from .examples import DeadLetter, ExampleParser
from .formats import is_blank
from .io import watch_stopped
from .models import ModelParser, model_record, newer
from .state import (
    EXAMPLE_TAG,
    GROUP_TAG,
    MODEL_TAG,
    EntityState,
    EntityStateCoder,
    FlushMarksCoder,
    buffer_batch_end,
    buffer_entry,
    buffered_examples,
    decode_example_group,
    decode_model,
    encode_example,
    encode_example_group,
    encode_model,
    example_timestamp,
    is_packed,
    repack,
)
from .update import GLOBAL_MODEL_ID, UpdateConfig, as_global_model, correct_due, train_due
from .worker import tune_garbage_collection

NAMESPACE = "lambda_learner"
DEAD_LETTERS, VALIDATION, GLOBAL_UPDATES = "dead_letters", "validation", "global_updates"
NO_MARKS = (0, 0)  # an entity's flush marks before its first example: nothing flushed, no timer set
#: At most this many examples pass from parsing to the global correction stage as one element.
GLOBAL_GROUP_SIZE = 500


def count_dead_letter(dead: DeadLetter) -> None:
    """Count a dead letter in Beam Metrics, overall and by stage/category."""
    Metrics.counter(NAMESPACE, "dead_letters").inc()
    Metrics.counter(NAMESPACE, f"dead_letters/{dead.stage}/{dead.category}").inc()


class ParseExamplesFn(beam.DoFn):
    """Raw record or JSON line -> ``(entity, encoded example)`` at its event time, or a dead letter.

    The encoded example keeps the record as it was read, for the dead letters of later stages.
    Blank lines (empty or whitespace) are layout, not records: they are skipped and counted as
    ``blank_lines``, as every other reader of JSON lines here skips them. A ``DeadLetter`` from the
    read step (a file that could not be read) passes through to the dead letters.

    With ``key`` (the global correction stage's one key) the examples of a bundle go out as example
    groups of at most ``GLOBAL_GROUP_SIZE``, each stamped with the earliest event time in it; the
    stage buffers each example for its own interval, so the result is that of one element each.
    """

    def __init__(self, parser: ExampleParser, key: Optional[str] = None):
        self.parser = parser
        self.key = key  # every example under this key (the global correction's) instead of its entity

    def setup(self):
        self.read = Metrics.counter(NAMESPACE, "records_read")
        self.valid = Metrics.counter(NAMESPACE, "examples")
        self.blank = Metrics.counter(NAMESPACE, "blank_lines")

    def process(self, record):
        is_line = isinstance(record, (bytes, str))
        if is_line and is_blank(record):
            self.blank.inc()
            return
        if isinstance(record, DeadLetter):
            count_dead_letter(record)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, record.to_dict())
            return
        self.read.inc()
        progress.record_read()
        parsed = self.parser.parse_as_read(record)
        if isinstance(parsed, DeadLetter):
            count_dead_letter(parsed)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, parsed.to_dict())
            return
        self.valid.inc()
        encoded = encode_example(parsed)
        if self.key is None:
            yield TimestampedValue((parsed.entity_id, EXAMPLE_TAG + encoded), parsed.timestamp_ms / 1000.0)
            return
        # Every example goes to the one key of the global correction stage: a bundle's examples go as
        # groups (a stateful call, state read and shuffle record per group, not per example).
        self._group.append(encoded)
        if self._earliest_ms is None or parsed.timestamp_ms < self._earliest_ms:
            self._earliest_ms = parsed.timestamp_ms
        if len(self._group) >= GLOBAL_GROUP_SIZE:
            yield TimestampedValue(*self._take_group())

    def start_bundle(self):
        self._group, self._earliest_ms = [], None

    def finish_bundle(self):
        if self._group:
            yield WindowedValue(*self._take_group(), (GlobalWindow(),))

    def _take_group(self) -> Tuple[Tuple[str, bytes], Timestamp]:
        """(the examples grouped so far as one element for the global stage, the earliest event time
        among them), emptying the group. Stamped with that time and sent within the bundle that read
        them, a group cannot be passed by the watermark before the stage has its examples."""
        value = (self.key, GROUP_TAG + encode_example_group(self._group))
        earliest = Timestamp(micros=self._earliest_ms * 1000)
        self._group, self._earliest_ms = [], None
        return value, earliest


class ParseModelsFn(beam.DoFn):
    """Raw model record (an Avro dict or a JSON line) -> ``(entity, encoded model)`` at
    MIN_TIMESTAMP, or a dead letter (a line that is not JSON is one, with the line as text).
    ``rename`` (the global correction's ``as_global_model``) maps each model first. Valid models
    parsed are counted here, in the counter ``counter``, whichever way they then reach their stage
    (as elements, or through a side input, where a model whose key never has an example is not
    merged at all)."""

    def __init__(self, parser: ModelParser, rename=None, counter: str = "initial_models"):
        self.parser = parser
        self.rename = rename
        self.counter = counter

    def setup(self):
        self.loaded = Metrics.counter(NAMESPACE, self.counter)

    def process(self, record):
        if isinstance(record, DeadLetter):
            count_dead_letter(record)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, record.to_dict())
            return
        parsed = self.parser.parse_as_read(record)
        if parsed is None:  # a blank line
            return
        if isinstance(parsed, DeadLetter):
            count_dead_letter(parsed)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, parsed.to_dict())
            return
        if self.rename is not None:
            parsed = self.rename(parsed)
        self.loaded.inc()
        yield TimestampedValue((parsed.entity_id, MODEL_TAG + encode_model(parsed)), MIN_TIMESTAMP)


def buffer_examples(config: UpdateConfig, encoded_examples, buffer, marks_state, flush, marks=None) -> int:
    """Buffer encoded examples, each for the interval it joins (``UpdateConfig.minibatch_of``), one
    entry per interval (``state.buffer_entry``), and move the flush timer earlier if one of those
    intervals ends before it; return how many are late. The buffering half of both interval stages
    (the entities' and the global correction's): the flush marks are read once and written at most
    once, whatever the number of examples (``marks``: as the caller already read them)."""
    flushed_until, pending = marks if marks is not None else (marks_state.read() or NO_MARKS)
    by_end, late = defaultdict(list), 0
    for encoded in encoded_examples:
        batch_end, is_late = config.minibatch_of(example_timestamp(encoded), flushed_until)
        by_end[batch_end].append(encoded)
        late += is_late
    for batch_end, members in by_end.items():
        buffer.add(buffer_entry(batch_end, members))
    earliest = min(by_end, default=pending)
    if pending and pending < earliest:
        earliest = pending
    if earliest != pending:
        flush.set(Timestamp(micros=earliest * 1000))
        marks_state.write((flushed_until, earliest))
    return late


def merge_initial_model(model_state, payload: bytes) -> None:
    """An initial model (``MODEL_TAG`` + encoded) into a stage's model cell: the newer of it and
    what the cell holds (``models.newer``), keeping the remembered uids."""
    incoming = decode_model(payload[1:])
    current = model_state.read()
    model_state.write(EntityState(incoming) if current is None else
                      EntityState(newer(current.model, incoming), current.recent_uids))


def wait_for_clock(fired: Timestamp, flush) -> bool:
    """Beam's local runner fires event-time timers without waiting for a watch's watermark (its poll
    time, so about the clock): whether the timer fired before the clock passed it, in which case it
    is set again, to be checked when the runner next fires it (once per poll), touching no state."""
    if fired.micros > time.time() * 1e6 and not watch_stopped():
        flush.set(fired)
        return True
    return False


def take_due(buffer, fired: Timestamp, flush_all: bool) -> Tuple[Dict[int, list], list]:
    """Split the buffer at a firing: ``({interval end: examples}, entries kept)``; the due intervals
    (ending at or before the firing, or all of them with ``flush_all``) leave the buffer, decoded.
    The single entries kept for a later interval go back as one packed entry per interval
    (``state.repack``) and packed entries go back as they are, so that an interval waiting
    through many firings is not read and written back example by example at each."""
    now_ms = fired.micros // 1000
    due, keep, loose = defaultdict(list), [], defaultdict(list)
    for entry in buffer.read():
        end = buffer_batch_end(entry)
        if flush_all or end <= now_ms:
            due[end].extend(buffered_examples(entry))
        elif is_packed(entry):
            keep.append(entry)
        else:
            loose[end].append(entry)
    for end, entries in loose.items():
        keep.append(repack(end, entries))
    buffer.clear()
    for entry in keep:
        buffer.add(entry)
    return due, keep


def rearm(due: Dict[int, list], keep: list, marks_state, flush) -> None:
    """After a firing: the new flush marks, and the timer set for the earliest interval kept."""
    if due:
        # Every buffered interval ends after the last flushed one (``minibatch_of`` puts a late
        # example in the next interval), so the newest due interval is the new mark: the cell
        # need not be read, which costs a state fetch per timer.
        flushed_until = max(due)
    else:
        flushed_until = (marks_state.read() or NO_MARKS)[0]
    next_end = 0
    if keep:
        next_end = min(buffer_batch_end(e) for e in keep)
        flush.set(Timestamp(micros=next_end * 1000))
    marks_state.write((flushed_until, next_end))


def interval_stage_state(timer_name: str):
    """The state and timer of an interval stage, new specs for each DoFn class (a timer spec holds its
    callback): the buffer (bag of entries), the model (``EntityState``), the flush marks, the flush
    timer (event time) named ``timer_name``. Timer names must be unique in the pipeline: Beam's
    local runner files timers by timer name alone, so two stages with one name fused together
    received each other's timers (measured: with both named "flush", no entity trained)."""
    return (BagStateSpec("buffer", BytesCoder()), ReadModifyWriteStateSpec("model", EntityStateCoder()),
            ReadModifyWriteStateSpec("flushed_until", FlushMarksCoder()), TimerSpec(timer_name, TimeDomain.WATERMARK))


class _IntervalStageFn(beam.DoFn):
    """What both interval stages (the entities' and the global correction's) are built with.
    ``flush_all_due``: batch (train every buffered interval at the first firing);
    ``hold_to_wall_clock``: a local watch (see ``wait_for_clock``)."""

    def __init__(self, config: UpdateConfig, flush_all_due: bool = False, hold_to_wall_clock: bool = False):
        self.config = config
        self.flush_all_due = flush_all_due
        self.hold_to_wall_clock = hold_to_wall_clock

    def take_in(self, key: str, payload: bytes, buffer, model_state, marks_state, flush,
                initial_models=None) -> None:
        """An element's payload into the stage's state: an initial model (``MODEL_TAG``) merged into
        the model cell, or one example (``EXAMPLE_TAG``) or a group of them (``GROUP_TAG``)
        buffered (``buffer_examples``; late ones counted in the subclass's ``late``).

        ``initial_models`` (a side input, ``key -> [MODEL_TAG + encoded model, ...]``) is the other
        way initial models arrive (``UpdateRandomEffects``, ``without_flattens``): a key's are
        merged before its first element is buffered (no flush marks yet), so they are in the model
        cell before any of its mini-batches trains, as those sent as elements are."""
        tag = payload[:1]
        if tag == MODEL_TAG:
            merge_initial_model(model_state, payload)
            return
        marks = None
        if initial_models is not None:
            marks = marks_state.read()
            if marks is None:  # the key's first element
                for model_payload in initial_models[key]:  # FnApiRunner's multimap: [] for a key without models
                    merge_initial_model(model_state, model_payload)
                marks = NO_MARKS
        examples = decode_example_group(payload[1:]) if tag == GROUP_TAG else (payload[1:],)
        late = buffer_examples(self.config, examples, buffer, marks_state, flush, marks)
        if late:
            self.late.inc(late)


class UpdateRandomEffectsFn(_IntervalStageFn):
    """Buffers each entity's examples by mini-batch interval and trains them in interval order.

    State, all per entity in the global window:

    * ``BUFFER`` (bag of bytes): examples waiting for their interval to close, each prefixed with
      the end of the interval it will be trained in, alone or packed with others of that interval
      (what a firing kept; ``take_due``). Stored encoded, never decoded until trained.
    * ``MODEL`` (explicit versioned coder): the entity's coefficients, Hessian, feature names,
      version, the end of its last trained interval, and the uids it trained on within the
      de-duplication horizon (each with the end of its mini-batch).
    * ``MARKS`` (``FlushMarksCoder``), one cell because both are read for every element (an example,
      or an entity's examples from the global correction stage): the end of
      the last interval flushed (an example whose interval ended at or before it is late and joins
      the next mini-batch instead of being dropped), and when the ``FLUSH`` timer is set (0: not
      set; Beam keeps one timer time per key, so it only moves earlier).

    ``FLUSH`` (event time) fires when the watermark passes the earliest buffered interval: every
    due interval is trained in order (split into chunks of at most ``max_minibatch_size``) and the
    timer re-armed for the next. In batch all input is read before any timer fires, so with
    ``flush_all_due`` the first firing trains every buffered interval, in order, at once: the same
    updates as one firing per interval without re-reading the buffer each time.

    De-duplication (``dedup_horizon_ms`` > 0): before a mini-batch trains, uids of mini-batches that
    ended a horizon or more before it are forgotten; then an example whose uid the entity still
    remembers, or that appears earlier in the same mini-batch, is a dead letter with reason
    "duplicate" instead of being trained again. Only successfully trained uids are remembered.
    """

    BUFFER, MODEL, MARKS, FLUSH = interval_stage_state("flush")

    def setup(self):
        tune_garbage_collection()
        self.updates = Metrics.counter(NAMESPACE, "updates")
        self.late = Metrics.counter(NAMESPACE, "late_examples")
        self.trained = Metrics.counter(NAMESPACE, "examples_trained")
        self.failed = Metrics.counter(NAMESPACE, "failed_updates")
        self.failed_examples = Metrics.counter(NAMESPACE, "examples_failed")
        self.cold = Metrics.counter(NAMESPACE, "cold_start_entities")
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.batch_size = Metrics.distribution(NAMESPACE, "minibatch_size")
        self.train_micros = Metrics.distribution(NAMESPACE, "update_train_micros")
        self.latency_ms = Metrics.distribution(NAMESPACE, "update_latency_ms")

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER), model_state=beam.DoFn.StateParam(MODEL),
                marks_state=beam.DoFn.StateParam(MARKS), flush=beam.DoFn.TimerParam(FLUSH), initial_models=None):
        # An initial model, one example (from parsing), or an entity's examples from the global stage.
        self.take_in(element[0], element[1], buffer, model_state, marks_state, flush, initial_models)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 buffer=beam.DoFn.StateParam(BUFFER), model_state=beam.DoFn.StateParam(MODEL),
                 marks_state=beam.DoFn.StateParam(MARKS), flush=beam.DoFn.TimerParam(FLUSH)):
        if self.hold_to_wall_clock and wait_for_clock(fired, flush):
            return
        due, keep = take_due(buffer, fired, self.flush_all_due)
        state = model_state.read()
        model = state.model if state is not None else None
        if model is None and due:
            self.cold.inc()
        flushed = train_due(model, dict(state.recent_uids) if state is not None else {}, key, due, self.config)
        for dead in flushed.dead_letters:
            count_dead_letter(dead)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead.to_dict())
        for record in flushed.validation:
            yield beam.pvalue.TaggedOutput(VALIDATION, record)
        for size, micros in zip(flushed.minibatch_sizes, flushed.train_micros):
            self.batch_size.update(size)
            self.train_micros.update(micros)
        now = int(time.time() * 1000)
        for update in flushed.updates:
            self.latency_ms.update(max(0, now - update["windowEnd"]))
            yield update
        if flushed.updates:
            self.updates.inc(len(flushed.updates))
            progress.update_made(len(flushed.updates))
        for counter, n in ((self.duplicates, flushed.duplicates), (self.failed, flushed.failed_updates),
                           (self.failed_examples, flushed.examples_failed), (self.trained, flushed.examples_trained)):
            if n:
                counter.inc(n)
        if flushed.changed:
            model_state.write(EntityState(flushed.model, tuple(flushed.recent_uids.items())))
        rearm(due, keep, marks_state, flush)


class GlobalCorrectionFn(_IntervalStageFn):
    """The global correction coordinate (``--global-correction independent``): one global model,
    trained interval by interval on every example, whose score raises each example's offset
    before its entity sees it.

    Input is keyed by one constant (``GLOBAL_MODEL_ID``): every example, in example groups from
    parsing (``ParseExamplesFn``), and the global model to start from at MIN_TIMESTAMP (or through
    the side input ``take_in`` reads, on a local watch). State and
    timer are the entity stage's (a bag of buffered examples, the model, the flush marks;
    ``take_in``, ``buffer_examples``, ``take_due``, ``rearm``), so late
    examples join the next interval here too. When the watermark passes an interval's end, its
    examples are scored with the global model as it stands (trained on the intervals before) and
    passed on, each with that score as its ``correction``, as one element per entity (an example
    group, ``state.encode_example_group``: a shuffle record per entity, not per example); then the
    global model trains on them (``update.correct_due``). The output is stamped with the firing's time,
    which the timer's hold keeps the entity stage's watermark from passing until it is emitted.
    The global model's update records go to ``GLOBAL_UPDATES``.

    Nothing is dropped here: a failed global update keeps the global model (counted), and its
    examples go on to their entities, whose stage dead-letters what it cannot train.
    """

    BUFFER, MODEL, MARKS, FLUSH = interval_stage_state("global_flush")

    def setup(self):
        tune_garbage_collection()
        self.updates = Metrics.counter(NAMESPACE, "global_updates")
        self.failed = Metrics.counter(NAMESPACE, "global_failed_updates")
        self.late = Metrics.counter(NAMESPACE, "global_late_examples")
        self.train_micros = Metrics.distribution(NAMESPACE, "global_update_train_micros")

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER), model_state=beam.DoFn.StateParam(MODEL),
                marks_state=beam.DoFn.StateParam(MARKS), flush=beam.DoFn.TimerParam(FLUSH), initial_models=None):
        # The initial global model, or a group of examples from parsing.
        self.take_in(element[0], element[1], buffer, model_state, marks_state, flush, initial_models)

    @on_timer(FLUSH)
    def on_flush(self, fired=beam.DoFn.TimestampParam, buffer=beam.DoFn.StateParam(BUFFER),
                 model_state=beam.DoFn.StateParam(MODEL), marks_state=beam.DoFn.StateParam(MARKS),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        if self.hold_to_wall_clock and wait_for_clock(fired, flush):
            return
        due, keep = take_due(buffer, fired, self.flush_all_due)
        state = model_state.read()
        flushed = correct_due(state.model if state is not None else None,
                              dict(state.recent_uids) if state is not None else {}, due, self.config)
        by_entity = defaultdict(list)
        for ex in flushed.examples:
            by_entity[ex.entity_id].append(encode_example(ex))
        for entity, encoded in by_entity.items():
            yield TimestampedValue((entity, GROUP_TAG + encode_example_group(encoded)), fired)
        for update in flushed.updates:
            yield beam.pvalue.TaggedOutput(GLOBAL_UPDATES, update)
        for micros in flushed.train_micros:
            self.train_micros.update(micros)
        if flushed.updates:
            self.updates.inc(len(flushed.updates))
        if flushed.changed:
            model_state.write(EntityState(flushed.model, tuple(flushed.recent_uids.items())))
        if flushed.failed_updates:
            self.failed.inc(flushed.failed_updates)
        rearm(due, keep, marks_state, flush)


class RandomEffectOutputs:
    """The PCollections ``UpdateRandomEffects`` returns."""

    def __init__(self, updates, dead_letters, validation, initial_models, global_updates=None,
                 initial_global_model=None, dead_letter_parts=()):
        self.updates = updates
        self.dead_letters = dead_letters
        #: the PCollections ``dead_letters`` flattens (None with ``without_flattens``), for a writer
        #: that takes them one by one (Beam's FnApiRunner hands a Flatten of several inputs on only
        #: at the end of a watch)
        self.dead_letter_parts = tuple(dead_letter_parts)
        self.validation = validation
        #: valid initial models as model records (with ``version``), e.g. for the snapshot
        self.initial_models = initial_models
        #: the global correction model's update records (None without ``--global-correction``)
        self.global_updates = global_updates
        #: the global model it started from, as model records (None when it started cold)
        self.initial_global_model = initial_global_model


class UpdateRandomEffects(beam.PTransform):
    """Raw examples (+ optional initial model records) -> model updates, dead letters, validation.

    Parameters mirror the job's flags: ``trainer`` (a name in ``lambda_core.TRAINERS``),
    ``penalty``, ``forgetting_factor``, ``hessian`` (full, diagonal, identity, none),
    ``minibatch_seconds``, ``max_minibatch_size``, ``coordinate``, ``dedup_horizon_seconds`` (how
    long, in event time, an entity remembers the uids it trained on; 0: off), ``global_correction``.
    ``streaming=False`` lets the
    flush train every buffered interval at the first timer (batch reads all input first). ``config``
    (an ``UpdateConfig``, e.g. with the forgetting options) replaces those parameters.
    ``hold_to_wall_clock`` (a watched directory on Beam's local runner, whose timers fire before
    the watermark passes them) keeps a mini-batch open until the clock passes its end, or the
    watch stops. ``without_flattens`` (the same local watch, on FnApiRunner, which runs a Flatten
    of two inputs as a step of its own and passes its output on only at the end: a watch would
    write no update until it stopped) joins no inputs with a Flatten: the initial models reach the
    stages as a side input (the same models), and ``.dead_letters`` is None (write
    ``.dead_letter_parts`` one by one). With the
    global correction (``config.corrects``), a global correction stage (``GlobalCorrectionFn``)
    comes first; ``initial_global_model`` (raw model records; the newest is used) is the global
    model it starts from."""

    def __init__(self, entity_field: str, timestamp_field: str, trainer: str = UpdateConfig.trainer,
                 penalty: float = UpdateConfig.penalty, forgetting_factor: float = UpdateConfig.forgetting_factor,
                 hessian: str = UpdateConfig.hessian, minibatch_seconds: float = UpdateConfig.minibatch_seconds,
                 max_minibatch_size: int = UpdateConfig.max_minibatch_size, initial_models=None,
                 coordinate: Optional[str] = None, max_features: int = 1000, max_model_coefficients: int = 100_000,
                 dedup_horizon_seconds: float = UpdateConfig.dedup_horizon_seconds, streaming: bool = True,
                 config: Optional[UpdateConfig] = None, hold_to_wall_clock: bool = False,
                 initial_global_model=None, global_correction: str = UpdateConfig.global_correction,
                 without_flattens: bool = False):
        super().__init__()
        if config is None:
            config = UpdateConfig(trainer=trainer, penalty=penalty, forgetting_factor=forgetting_factor,
                                  hessian=hessian, minibatch_seconds=minibatch_seconds,
                                  max_minibatch_size=max_minibatch_size, coordinate=coordinate or entity_field,
                                  dedup_horizon_seconds=dedup_horizon_seconds, global_correction=global_correction)
        self.config = config
        self.example_parser = ExampleParser(entity_field, timestamp_field, label_rule=self.config.label_rule,
                                            max_features=max_features)
        self.model_parser = ModelParser(self.config.penalty, max_model_coefficients)
        self.initial_models = initial_models
        self.initial_global_model = initial_global_model
        if initial_global_model is not None and not self.config.corrects:
            raise ValueError("an initial global model needs the global correction (global_correction).")
        self.streaming = streaming
        self.hold_to_wall_clock = hold_to_wall_clock
        self.without_flattens = without_flattens

    def expand(self, examples):
        key = GLOBAL_MODEL_ID if self.config.corrects else None  # the global correction's stage comes first
        parsed = examples | "ParseExamples" >> beam.ParDo(ParseExamplesFn(self.example_parser, key)).with_output_types(
            Tuple[str, bytes]).with_outputs(DEAD_LETTERS, main="examples")
        examples = parsed.examples | "ExamplesInGlobalWindow" >> beam.WindowInto(GlobalWindows())
        dead = [parsed[DEAD_LETTERS]]
        global_updates = initial_global = None
        if self.config.corrects:
            examples, global_updates, initial_global = self._correct(examples, dead)
        keyed = [examples]
        initial_records = None
        if self.initial_models is not None:
            models, initial_records = self._parse_models(self.initial_models, self.model_parser, "ParseInitialModels",
                                                         "InitialModelRecords", dead)
            keyed.append(models)
        entity_input, side = self._join_models(keyed, "FlattenExamplesAndModels")
        trained = (
            entity_input
            | "UpdatePerEntity" >> beam.ParDo(
                UpdateRandomEffectsFn(self.config, flush_all_due=not self.streaming,
                                      hold_to_wall_clock=self.hold_to_wall_clock), **side).with_output_types(
                Dict[str, Any]).with_outputs(
                DEAD_LETTERS, VALIDATION, main="updates")
        )
        dead.append(trained[DEAD_LETTERS])
        # Unused, a Flatten would still hold every dead letter on FnApiRunner until the watch ends.
        dead_letters = None if self.without_flattens else dead | "FlattenDeadLetters" >> beam.Flatten()
        return RandomEffectOutputs(trained.updates, dead_letters, trained[VALIDATION], initial_records,
                                   global_updates, initial_global, dead)

    def _join_models(self, keyed: list, label: str):
        """(an interval stage's input, its side inputs) from ``[examples]`` or ``[examples, initial
        models]``: the two flattened into one input, or with ``without_flattens`` the examples
        alone and the models as the side input ``take_in`` merges from (``AsMultiMap``: every
        record of a key)."""
        if len(keyed) == 1:
            return keyed[0], {}
        if self.without_flattens:
            return keyed[0], {"initial_models": beam.pvalue.AsMultiMap(keyed[1])}
        return keyed | label >> beam.Flatten(), {}

    def _parse_models(self, records, parser: ModelParser, parse_label: str, records_label: str, dead: list,
                      rename=None, counter: str = "initial_models"):
        """Raw model records -> (``(id, encoded model)`` at MIN_TIMESTAMP, the valid ones as model
        records for the snapshot); their dead letters join ``dead``."""
        models = records | parse_label >> beam.ParDo(ParseModelsFn(parser, rename, counter)).with_output_types(
            Tuple[str, bytes]).with_outputs(DEAD_LETTERS, main="models")
        dead.append(models[DEAD_LETTERS])
        trainer = self.config.trainer
        as_records = models.models | records_label >> beam.Map(
            lambda kv: initial_model_record(decode_model(kv[1][1:]), trainer))
        return models.models, as_records

    def _correct(self, examples, dead: list):
        """The global correction stage, on ``examples`` keyed by ``GLOBAL_MODEL_ID``: (corrected
        examples keyed by entity, the global model's updates, its initial model as records or
        None); parse failures join ``dead``."""
        keyed = [examples]
        initial_records = None
        if self.initial_global_model is not None:
            # Whatever its record's id, the initial model is the global model (``as_global_model``).
            models, initial_records = self._parse_models(
                self.initial_global_model, ModelParser(self.config.global_penalty, self.model_parser.max_coefficients),
                "ParseInitialGlobalModel", "InitialGlobalModelRecords", dead, rename=as_global_model,
                counter="global_initial_models")
            keyed.append(models)
        stage_input, side = self._join_models(keyed, "FlattenExamplesAndGlobalModel")
        corrected = (
            stage_input
            | "GlobalCorrection" >> beam.ParDo(
                GlobalCorrectionFn(self.config, flush_all_due=not self.streaming,
                                   hold_to_wall_clock=self.hold_to_wall_clock), **side).with_output_types(
                Tuple[str, bytes]).with_outputs(GLOBAL_UPDATES, main="examples")
        )
        return corrected.examples, corrected[GLOBAL_UPDATES], initial_records


def initial_model_record(model, trainer: str) -> dict:
    """An initial model as a record comparable with updates (its own version and window end)."""
    record = model_record(model, trainer)
    record.update(version=int(model.version), windowEnd=int(model.window_end_ms))
    return record
