"""Beam sources and sinks for the job's formats: examples in (files, a watched directory, Pub/Sub),
initial models in, model updates, dead letters and GAME snapshots out.

Building these transforms touches nothing: files are matched, formats told apart, directories
created and clocks read by the steps when the pipeline runs (so a dry run, or a job that never
starts, reads and writes nothing).
"""

import math
import threading
import time
import uuid
from typing import Optional

import apache_beam as beam
import fastavro
from apache_beam.coders import BytesCoder, StrUtf8Coder
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.coders import VarIntCoder
from apache_beam.io.watch import PollFn, PollResult, TerminationCondition, Watch, never
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from .avro_encoding import container_writer
from .examples import DeadLetter
from .formats import AVRO, detect_format, is_data_file, to_json
from .models import (
    COEFFICIENTS,
    latest_record,
    model_class,
    model_files,
    snapshot_dir,
    write_id_info,
)
from .paths import data_files

_EPOCH = Timestamp(0)
# Set when a watch with a duration has made its last poll, cleared by a watch's first poll: in one
# process (Beam's local runner) it tells the update step that no more input will come.
_WATCH_STOPPED = threading.Event()


def watch_stopped() -> bool:
    """Whether this process's watch has made its last poll (see ``ReadRecords``)."""
    return _WATCH_STOPPED.is_set()


def pattern_format(pattern: str, explicit: Optional[str] = None) -> Optional[str]:
    """The format of every file ``pattern`` names, when that is known without listing them: the
    explicit one, else the pattern's own extension (``events/*.avro``); None otherwise."""
    if explicit:
        return detect_format(pattern, explicit)
    return detect_format(pattern) if is_data_file(pattern) else None


def read_file_records(readable_file, input_format: Optional[str] = None):
    """Records of one matched file (a ``fileio.ReadableFile``): dicts for Avro, raw lines (bytes,
    blank ones included, so the parse step counts them) for JSON lines.

    ``input_format`` overrides the file's extension. A file whose format cannot be told, or that
    cannot be read to its end, yields a ``DeadLetter`` (stage "read") naming it; the records read
    before the fault are kept.
    """
    path = readable_file.metadata.path
    try:
        fmt = detect_format(path, input_format)
    except ValueError as err:
        yield DeadLetter(f"{err}", "read", path, "format")
        return
    count = 0
    try:
        with readable_file.open() as f:
            if fmt == AVRO:
                for record in fastavro.reader(f):
                    count += 1
                    yield record
            else:
                for line in f:
                    count += 1
                    yield line.rstrip(b"\r\n")
    except Exception as err:  # a corrupt or unreadable file must not stop the job
        yield DeadLetter(f"file {path} could not be read as {fmt} after {count} records "
                         f"({type(err).__name__}: {err}).", "read", path, "unreadable")


def read_path_records(path: str, input_format: Optional[str] = None):
    """``read_file_records`` of the file at ``path`` (any Beam filesystem), outside a pipeline."""
    return read_file_records(fileio.ReadableFile(FileMetadata(path, 0)), input_format)


class _MatchPattern(PollFn):
    """Watch's poll: the files matching the pattern now, stamped with the poll time.

    Polls at most once per ``interval`` seconds: a runner that paces Watch (Flink, Dataflow) never
    waits here, while Beam's Python local runners re-run the poll back to back, hundreds of times a
    second, which burns a core and, after about a thousand polls, overflows the recursion of their
    metrics at the end of the job."""

    def __init__(self, any_extension: bool, interval: float):
        self.any_extension = any_extension
        self.interval = interval
        self._last = None

    def __call__(self, pattern):
        if self._last is None:
            _WATCH_STOPPED.clear()
        else:
            time.sleep(max(0.0, self._last + self.interval - time.time()))
        self._last = time.time()
        now = Timestamp.now()
        files = data_files(pattern, self.any_extension)
        return PollResult.incomplete(files, timestamp=now).with_watermark(now)

    def default_output_coder(self):
        return StrUtf8Coder()


class _AfterPolls(TerminationCondition):
    """Stop watching after a number of polls: ``ceil(duration / interval)``, counted from the job's
    first poll (polls are at least an interval apart: see ``_MatchPattern``)."""

    def __init__(self, polls: int):
        self.polls = polls

    def for_new_input(self, now, element):
        return 0

    def on_poll_complete(self, state):
        return state + 1

    def can_stop_polling(self, now, state):
        if state >= self.polls:
            _WATCH_STOPPED.set()
            return True
        return False

    def state_coder(self):
        return VarIntCoder()


class ReadRecords(beam.PTransform):
    """Raw records from files: Avro records as dicts, JSON lines as bytes (parsed downstream, so a
    line that is not JSON becomes a dead letter rather than a crash).

    ``input_format`` (avro or json) overrides the files' extensions. A pattern with a data-file
    extension is read with Beam's splittable readers; any other path (a directory, ``dir/*``) is
    matched when the job runs and each file read by its own format. ``watch_seconds`` > 0 follows
    the pattern for new files (streaming), polling at that interval, for
    ``watch_duration_seconds`` (0: forever) from when the job starts watching.
    """

    def __init__(self, pattern: str, input_format: Optional[str] = None, watch_seconds: float = 0,
                 watch_duration_seconds: float = 0):
        super().__init__()
        self.pattern = pattern
        self.input_format = input_format
        self.watch_seconds = watch_seconds
        self.watch_duration_seconds = watch_duration_seconds

    def expand(self, pbegin):
        fmt = self.input_format
        if self.watch_seconds:
            duration = self.watch_duration_seconds
            termination = _AfterPolls(max(1, math.ceil(duration / self.watch_seconds))) if duration else never()
            return (pbegin
                    | "Pattern" >> beam.Create([self.pattern])
                    | "Watch" >> Watch(_MatchPattern(bool(fmt), self.watch_seconds), poll_interval=self.watch_seconds, termination=termination)
                    | "NewFiles" >> beam.Values()
                    | "Open" >> fileio.ReadMatches()
                    | "Records" >> beam.FlatMap(read_file_records, fmt))
        # Beam's splittable readers need the one format known while building: from the pattern alone.
        known = pattern_format(self.pattern, fmt) if is_data_file(self.pattern) else None
        if known == AVRO:
            return pbegin | "ReadAvro" >> beam.io.ReadFromAvro(self.pattern)
        if known is not None:
            return pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self.pattern, coder=BytesCoder(),
                                                                    strip_trailing_newlines=True)
        return (pbegin
                | "Pattern" >> beam.Create([self.pattern])
                | "Match" >> beam.FlatMap(data_files, bool(fmt))
                | "Spread" >> beam.Reshuffle()
                | "Open" >> fileio.ReadMatches()
                | "Records" >> beam.FlatMap(read_file_records, fmt))


class ReadModelRecords(beam.PTransform):
    """Raw initial-model records (Avro dicts, JSON lines as bytes) of the model files at ``path``
    (see ``models.model_files``), found when the job runs. ``input_format`` overrides extensions."""

    def __init__(self, path: str, input_format: Optional[str] = None):
        super().__init__()
        self.path = path
        self.input_format = input_format

    def expand(self, pbegin):
        return (pbegin
                | "ModelPath" >> beam.Create([self.path])
                | "ModelFiles" >> beam.FlatMap(model_files, bool(self.input_format))
                | "Spread" >> beam.Reshuffle()
                | "OpenModels" >> fileio.ReadMatches()
                | "ModelRecords" >> beam.FlatMap(read_file_records, self.input_format))


class AvroSink(fileio.FileSink):
    """fastavro container files with one of our schemas (for ``fileio.WriteToFiles``)."""

    def __init__(self, schema_name: str):
        self.schema_name = schema_name
        self._writer = None

    def open(self, fh):
        self._writer = container_writer(fh, self.schema_name)

    def write(self, record):
        self._writer.write(record)

    def flush(self):
        self._writer.flush()


class JsonLinesSink(fileio.FileSink):
    """Strict JSON, one record per line."""

    def open(self, fh):
        self._fh = fh

    def write(self, record):
        self._fh.write(to_json(record).encode("utf-8"))
        self._fh.write(b"\n")

    def flush(self):
        self._fh.flush()


class _NotBeforeEpoch(beam.DoFn):
    """Records with no event time of their own (dead letters of unparseable input, initial models at
    MIN_TIMESTAMP) move to the epoch: their window must have representable bounds. Moving forward in
    time is always allowed."""

    def process(self, record, timestamp=beam.DoFn.TimestampParam):
        yield record if timestamp >= _EPOCH else TimestampedValue(record, _EPOCH)


class _WriteBundleFiles(beam.DoFn):
    """Each bundle's records into one file, written under ``<directory>/.temp-bundles/`` and renamed
    to ``<prefix>-<UTC time of its first record>-<random id><suffix>`` when the bundle ends, so a
    file appears whole. For Beam's local runner, which finalises windowed files only when a watch
    stops (see ``WriteRecords``)."""

    def __init__(self, directory: str, prefix: str, suffix: str, sink_factory):
        self.directory, self.prefix, self.suffix, self.sink_factory = directory, prefix, suffix, sink_factory

    def setup(self):
        self._temp_dir = None

    def start_bundle(self):
        self._open = None

    def process(self, record):
        if self._open is None:
            if self._temp_dir is None:  # made when the first record comes, not while building
                self._temp_dir = FileSystems.join(self.directory, ".temp-bundles")
                if not FileSystems.exists(self._temp_dir):
                    FileSystems.mkdirs(self._temp_dir)
            name = (f"{self.prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
                    f"{self.suffix}")
            temp = FileSystems.join(self._temp_dir, name)
            fh = FileSystems.create(temp)
            sink = self.sink_factory(None)
            sink.open(fh)
            self._open = (sink, fh, temp, FileSystems.join(self.directory, name))
        self._open[0].write(record)

    def finish_bundle(self):
        if self._open is not None:
            sink, fh, temp, final = self._open
            sink.flush()
            fh.close()
            FileSystems.rename([temp], [final])
            self._open = None


class WriteRecords(beam.PTransform):
    """Write records under ``directory`` as ``<prefix>-...<suffix>`` files.

    In streaming, records are cut into fixed event-time windows of ``window_seconds`` first, so files
    are finalised as the watermark passes each window. ``per_bundle`` (an unbounded job on Beam's
    local runner, which holds that watermark back until the source ends) writes a file per bundle
    instead, each renamed into place whole. The input is a PCollection or several (a tuple): with
    ``per_bundle`` each is written on its own, as that runner hands a Flatten of several inputs on
    only at the end; otherwise they are flattened first.
    """

    def __init__(self, directory: str, prefix: str, suffix: str, sink_factory, streaming: bool,
                 window_seconds: float = 60, unbounded: bool = False, per_bundle: bool = False):
        super().__init__()
        self.per_bundle = per_bundle
        self.unbounded = unbounded
        self.directory = directory
        self.prefix = prefix
        self.suffix = suffix
        self.sink_factory = sink_factory
        self.streaming = streaming
        self.window_seconds = window_seconds

    def expand(self, records):
        parts = records if isinstance(records, tuple) else (records,)
        if self.per_bundle:
            write = _WriteBundleFiles(self.directory, self.prefix, self.suffix, self.sink_factory)
            return tuple(part | ("WriteEachBundle" if i == 0 else f"WriteEachBundle{i}") >> beam.ParDo(write)
                         for i, part in enumerate(parts))
        if len(parts) > 1:
            records = parts | "Flatten" >> beam.Flatten()
        if self.unbounded:
            # A live source's watermark follows the wall clock while event time may lag far behind
            # it: stamp records with the time they are written (moving forward in time is always
            # allowed) so that files are cut per window of processing time and none is late.
            records = (records
                       | "StampNow" >> beam.Map(lambda r: TimestampedValue(r, time.time()))
                       | "EveryInterval" >> beam.WindowInto(FixedWindows(self.window_seconds)))
        elif self.streaming:
            records = (records
                       | "NoTimeBeforeEpoch" >> beam.ParDo(_NotBeforeEpoch())
                       | "Window" >> beam.WindowInto(FixedWindows(self.window_seconds)))
        return records | "Write" >> fileio.WriteToFiles(
            self.directory, file_naming=fileio.default_file_naming(self.prefix, self.suffix),
            sink=self.sink_factory)


def _snapshot_name(window, pane, shard_index, total_shards, compression, destination):
    return f"part-{shard_index or 0:05d}.avro"


class WriteSnapshot(beam.PTransform):
    """The latest model of every entity (``models.latest_record``), in Photon's GAME layout under
    ``<output>/random-effect/<coordinate>/``: ``coefficients/part-*.avro`` and ``id-info``.

    Input: update records and initial-model records (dicts with ``modelId``). ``id-info`` (the
    entity field and the feature shard) is written by a step of the pipeline, once, when it runs.
    ``fixed_effect``: a global model (the global correction), under ``<output>/fixed-effect/<coordinate>/``,
    without ``id-info``.
    """

    def __init__(self, output: str, coordinate: str, entity_field: str, feature_shard: str, trainer: str,
                 shards: int = 1, fixed_effect: bool = False):
        super().__init__()
        self.fixed_effect = fixed_effect
        self.base = snapshot_dir(output, coordinate, fixed_effect)
        self.entity_field = entity_field
        self.feature_shard = feature_shard
        self.trainer = trainer
        self.shards = shards

    def expand(self, records):
        base, entity_field, feature_shard = self.base, self.entity_field, self.feature_shard
        if not self.fixed_effect:
            (records.pipeline
             | "IdInfo" >> beam.Create([base])
             | "WriteIdInfo" >> beam.Map(write_id_info, entity_field, feature_shard))
        modelclass = model_class(self.trainer)
        # Photon's fields plus version and windowEnd (the superset schema Photon readers read): a
        # restart from this snapshot knows when each model was last trained, which forgetting by
        # event time needs.
        keys = ("modelId", "modelClass", "means", "variances", "lossFunction", "version", "windowEnd")
        return (records
                | "ByEntity" >> beam.Map(lambda r: (r["modelId"], r))
                | "Latest" >> beam.CombinePerKey(latest_record)
                | "PhotonRecord" >> beam.Map(lambda kv: {k: kv[1].get(k) for k in keys} | {"modelClass": modelclass})
                | "Write" >> fileio.WriteToFiles(FileSystems.join(base, COEFFICIENTS), file_naming=_snapshot_name,
                                                 sink=lambda _: AvroSink("ModelUpdateAvro"), shards=self.shards))
