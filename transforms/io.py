"""Beam sources and sinks for the job's formats: examples in (files, a watched directory, Pub/Sub),
model updates, dead letters and GAME snapshots out.
"""

import time
from typing import List, Optional

import apache_beam as beam
import fastavro
from apache_beam.coders import BytesCoder
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from .avro_encoding import MODEL_SCHEMAS, ModelContainerWriter
from .formats import AVRO, detect_format, is_blank, load_schema, to_json
from .models import COEFFICIENTS, model_class, write_id_info


_EPOCH = Timestamp(0)


def match_files(pattern: str) -> List[str]:
    """Paths matching ``pattern`` on any Beam filesystem (local, gs://, ...)."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # FileSystems raises BeamIOError for a pattern that matches nothing
        return []
    return sorted(m.path for m in result.metadata_list)


def input_format_of(pattern: str, explicit: Optional[str]) -> str:
    """The one format of the files matching ``pattern`` (explicit, by the pattern's or files' extension)."""
    if explicit:
        return detect_format(pattern, explicit)
    try:
        return detect_format(pattern)
    except ValueError:
        files = match_files(pattern)  # the pattern has no data-file extension: look at the files
    formats = set()
    for f in files:
        formats.add(detect_format(f))
    if len(formats) != 1:
        raise ValueError(f"Files matching {pattern!r} mix formats ({', '.join(sorted(formats))}): "
                         "pass --input-format or one pattern per format.")
    return formats.pop()


def read_file_records(readable_file):
    """Records of one matched file: dicts for Avro, raw lines (bytes) for JSON lines."""
    path = readable_file.metadata.path
    with readable_file.open() as f:
        if detect_format(path) == AVRO:
            yield from fastavro.reader(f)
        else:
            for line in f:
                if not is_blank(line):
                    yield line.rstrip(b"\r\n")


class ReadRecords(beam.PTransform):
    """Raw records from files: Avro records as dicts, JSON lines as bytes (parsed downstream, so a
    line that is not JSON becomes a dead letter rather than a crash).

    ``watch_seconds`` > 0 follows the pattern for new files (streaming), checking at that interval,
    for ``watch_duration_seconds`` (0: forever) from when the pipeline is built.
    """

    def __init__(self, pattern: str, input_format: Optional[str] = None, watch_seconds: float = 0,
                 watch_duration_seconds: float = 0):
        super().__init__()
        self.pattern = pattern
        self.input_format = input_format
        self.watch_seconds = watch_seconds
        self.stop = time.time() + watch_duration_seconds if watch_duration_seconds else None

    def expand(self, pbegin):
        if self.watch_seconds:
            return (pbegin
                    | "Watch" >> fileio.MatchContinuously(
                        self.pattern, interval=self.watch_seconds,
                        **({"stop_timestamp": self.stop} if self.stop else {}))
                    | "Open" >> fileio.ReadMatches()
                    | "Records" >> beam.FlatMap(read_file_records))
        if input_format_of(self.pattern, self.input_format) == AVRO:
            return pbegin | "ReadAvro" >> beam.io.ReadFromAvro(self.pattern)
        return pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self.pattern, coder=BytesCoder(), strip_trailing_newlines=True)


class AvroSink(fileio.FileSink):
    """fastavro container files with one of our schemas (for ``fileio.WriteToFiles``)."""

    def __init__(self, schema_name: str):
        self.schema_name = schema_name
        self._writer = None

    def open(self, fh):
        if self.schema_name in MODEL_SCHEMAS:
            self._writer = ModelContainerWriter(fh, self.schema_name)
        else:
            self._writer = fastavro.write.Writer(fh, load_schema(self.schema_name), codec="deflate")

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


class WriteRecords(beam.PTransform):
    """Write records under ``directory`` as ``<prefix>-...<suffix>`` files.

    In streaming, records are cut into fixed event-time windows of ``window_seconds`` first, so files
    are finalised as the watermark passes each window.
    """

    def __init__(self, directory: str, prefix: str, suffix: str, sink_factory, streaming: bool,
                 window_seconds: float = 60, unbounded: bool = False):
        super().__init__()
        self.unbounded = unbounded
        self.directory = directory
        self.prefix = prefix
        self.suffix = suffix
        self.sink_factory = sink_factory
        self.streaming = streaming
        self.window_seconds = window_seconds

    def expand(self, records):
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


def _latest_record(records):
    """Of several records of one entity (updates and initial models), the newest by version and window."""
    return max(records, key=lambda r: (r.get("version", 0), r.get("windowEnd", 0)))


def _snapshot_name(window, pane, shard_index, total_shards, compression, destination):
    return f"part-{shard_index or 0:05d}.avro"


class WriteSnapshot(beam.PTransform):
    """The latest model of every entity, in Photon's GAME layout under ``<output>/random-effect/<coordinate>/``.

    Input: update records and initial-model records (dicts with ``modelId``). ``id-info`` is written
    when the pipeline is built (it only holds the entity field and the feature shard).
    """

    def __init__(self, output: str, coordinate: str, entity_field: str, feature_shard: str, trainer: str,
                 shards: int = 1):
        super().__init__()
        self.base = FileSystems.join(output, "random-effect", coordinate)
        self.entity_field = entity_field
        self.feature_shard = feature_shard
        self.trainer = trainer
        self.shards = shards

    def expand(self, records):
        write_id_info(self.base, self.entity_field, self.feature_shard)
        trainer = self.trainer
        keys = ("modelId", "modelClass", "means", "variances", "lossFunction")
        return (records
                | "ByEntity" >> beam.Map(lambda r: (r["modelId"], r))
                | "Latest" >> beam.CombinePerKey(_latest_record)
                | "PhotonRecord" >> beam.Map(lambda kv: {k: kv[1].get(k) for k in keys} | {"modelClass": model_class(trainer)})
                | "Write" >> fileio.WriteToFiles(FileSystems.join(self.base, COEFFICIENTS), file_naming=_snapshot_name,
                                                 sink=lambda _: AvroSink("BayesianLinearModelAvro"), shards=self.shards))
