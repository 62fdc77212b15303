"""``python -m pipeline.replay``: the job's updates without Beam, for backfills and tuning.

Takes the job's own flags (the same option set as ``python -m pipeline``) over the same inputs,
applies the job's per-entity updates in the same order (``transforms.replay.EntityReplay``), and
writes the same layout under ``--output``: ``updates/``, the snapshot, ``dead-letter/``,
``progressive-validation.json`` and ``summary.json``. The models equal the job's bit for bit.

    python -m pipeline.replay --input 'events/*.avro' --output out/ --entity-field userId \\
        --timestamp-field timestamp [--initial-models DIR] [any job flag] [--lateness-seconds 3600]
"""

import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import progress
from transforms.avro_encoding import ModelContainerWriter
from transforms.examples import DeadLetter, ExampleParser
from transforms.formats import NOT_JSON, decode_json_line, is_blank, line_text, to_json
from transforms.io import read_path_records
from transforms.models import ModelParser, coordinate_dir, model_files, write_snapshot
from transforms.paths import data_files
from transforms.replay import EntityReplay
from transforms.validation import ProgressiveValidation

from .job import VALIDATION_FILE, check_inputs, format_summary, write_summary
from .options import LambdaLearnerOptions, UsageError, parse_options, update_config


class ReplayOptions(PipelineOptions):
    """Flags of ``python -m pipeline.replay`` beyond the job's own."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--lateness-seconds", dest="lateness_seconds", type=float, default=3600.0,
            help="replay: the watermark trails the newest event time read by this much; an example further "
                 "behind its entity's trained mini-batches is late, as in a streaming job with that watermark "
                 "(-1: hold everything until the end of the input, as the batch job does)")


class _NoOutputs:
    """Where a replay run for its scores alone (``pipeline.tune``) sends its records: nowhere."""

    def update(self, record: dict) -> None:
        pass

    def dead_letter(self, dead: DeadLetter) -> None:
        pass

    def close(self) -> None:
        pass


class _Outputs(_NoOutputs):
    """The replay's files, written as it goes (one part per kind, like a one-shard job)."""

    def __init__(self, output: str):
        self.updates_path = FileSystems.join(output, "updates", "updates-00000-of-00001.avro")
        self.dead_path = FileSystems.join(output, "dead-letter", "dead-letter-00000-of-00001.jsonl")
        self._updates_file = FileSystems.create(self.updates_path)
        self._updates = ModelContainerWriter(self._updates_file, "ModelUpdateAvro")
        self._dead_file = None

    def update(self, record: dict) -> None:
        self._updates.write(record)

    def dead_letter(self, dead: DeadLetter) -> None:
        if self._dead_file is None:
            self._dead_file = FileSystems.create(self.dead_path)
        self._dead_file.write(to_json(dead.to_dict()).encode("utf-8") + b"\n")

    def close(self) -> None:
        self._updates.flush()
        self._updates_file.close()
        if self._dead_file is not None:
            self._dead_file.close()


class _Distribution:
    __slots__ = ("count", "total", "min", "max")

    def __init__(self):
        self.count, self.total, self.min, self.max = 0, 0, None, None

    def add(self, values: List[int]) -> None:
        if values:
            self.count += len(values)
            self.total += sum(values)
            low, high = min(values), max(values)
            self.min = low if self.min is None else min(self.min, low)
            self.max = high if self.max is None else max(self.max, high)

    def value(self) -> Optional[dict]:
        if not self.count:
            return None
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.total / self.count}


def replay(options: PipelineOptions, write_outputs: bool = True) -> Tuple[Dict[str, Any], ProgressiveValidation]:
    """Replay the job over its inputs; write its outputs (unless ``write_outputs`` is false: then
    nothing is written); return the summary (as the job's) and the progressive validation."""
    started = time.time()
    o = options.view_as(LambdaLearnerOptions)
    if o.watch or o.input_subscription:
        raise UsageError("replay reads files: give --input without --watch (a Pub/Sub subscription cannot be replayed).")
    lateness = options.view_as(ReplayOptions).lateness_seconds
    if not (lateness == -1 or lateness >= 0):
        raise UsageError(f"--lateness-seconds must be >= 0, or -1 for no watermark; got {lateness}.")
    check_inputs(o)
    config = update_config(o)
    progress.enable(o.progress_seconds)
    counts: Counter = Counter()
    sizes, micros = _Distribution(), _Distribution()
    validation = ProgressiveValidation(int(o.validation_bucket_seconds * 1000))
    state = EntityReplay(config, None if lateness == -1 else int(round(lateness * 1000)))
    out = _Outputs(o.output) if write_outputs else _NoOutputs()

    def dead_letter(dead: DeadLetter) -> None:
        counts["dead_letters"] += 1
        counts[f"dead_letters/{dead.stage}/{dead.category}"] += 1
        out.dead_letter(dead)

    def flushed(flushes) -> None:
        for _, flush in flushes:
            for dead in flush.dead_letters:
                dead_letter(dead)
            for record in flush.validation:
                validation.add(record)
            for record in flush.updates:
                out.update(record)
            sizes.add(flush.minibatch_sizes)
            micros.add(flush.train_micros)
            counts["updates"] += len(flush.updates)
            counts["duplicates"] += flush.duplicates
            counts["failed_updates"] += flush.failed_updates
            counts["examples_failed"] += flush.examples_failed
            counts["examples_trained"] += flush.examples_trained
            if flush.updates:
                progress.update_made(len(flush.updates))

    models_format = o.initial_models_format or o.input_format
    if o.initial_models:
        model_parser = ModelParser(o.penalty, o.max_model_coefficients)
        for path in model_files(o.initial_models, bool(models_format)):
            for record in read_path_records(path, models_format):
                if isinstance(record, (bytes, str)):
                    if is_blank(record):
                        continue
                    value = decode_json_line(record)
                    record = line_text(record) if value is NOT_JSON else value
                parsed = record if isinstance(record, DeadLetter) else model_parser.parse(record)
                if isinstance(parsed, DeadLetter):
                    dead_letter(parsed)
                else:
                    state.add_model(parsed)
    entities_with_initial_models = len(state.models)

    parser = ExampleParser(o.entity_field, o.timestamp_field, label_rule=config.label_rule,
                           max_features=o.max_features)
    for path in data_files(o.input, bool(o.input_format)):
        for record in read_path_records(path, o.input_format):
            if isinstance(record, DeadLetter):
                dead_letter(record)
                continue
            if isinstance(record, (bytes, str)) and is_blank(record):
                counts["blank_lines"] += 1
                continue
            counts["records_read"] += 1
            progress.record_read()
            parsed = parser.parse_as_read(record)
            if isinstance(parsed, DeadLetter):
                dead_letter(parsed)
                continue
            counts["examples"] += 1
            flushed(state.add_example(parsed))
    flushed(state.finish())
    out.close()
    if not write_outputs:
        metrics = dict(counts, late_examples=state.late_examples)
        return metrics, validation

    paths = {"updates": FileSystems.join(o.output, "updates"),
             "dead_letters": FileSystems.join(o.output, "dead-letter")}
    coordinate = o.coordinate or o.entity_field
    snapshot = write_snapshot(state.models.values(), o.output, coordinate, o.entity_field, o.feature_shard,
                              o.trainer, records_per_part=_records_per_part(len(state.models), o.snapshot_shards))
    paths["snapshot"] = coordinate_dir(o.output, coordinate)
    paths["validation"] = FileSystems.join(o.output, VALIDATION_FILE)
    with FileSystems.create(paths["validation"]) as f:
        f.write(to_json(validation.report()).encode("utf-8") + b"\n")
    metrics: Dict[str, Any] = dict(counts)
    metrics.update(late_examples=state.late_examples, initial_models=state.initial_models,
                   cold_start_entities=state.cold_start_entities, minibatch_size=sizes.value(),
                   update_train_micros=micros.value())
    summary = write_summary(metrics, options, paths, time.time() - started, runner="replay")
    summary["snapshot_models"] = snapshot["models"]
    summary["entities_with_initial_models"] = entities_with_initial_models
    return summary, validation


def _records_per_part(models: int, shards: int) -> int:
    return max(1, -(-models // max(1, shards)))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m pipeline.replay", description=__doc__.split("\n\n")[1])
        LambdaLearnerOptions._add_argparse_args(parser)
        ReplayOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    try:
        options = parse_options(argv)
        summary, _ = replay(options)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

