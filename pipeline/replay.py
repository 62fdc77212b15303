"""``python -m pipeline.replay``: the job's updates without Beam, for backfills and tuning.

Takes the job's own flags (the same option set as ``python -m pipeline``) over the same inputs,
applies the job's per-entity updates in the same order (``transforms.replay.EntityReplay``, behind
``GlobalReplay`` for the global correction), and writes the same layout under ``--output``:
``updates/``, the snapshot, ``dead-letter/``, ``progressive-validation.json`` and ``summary.json``
(and ``global-updates/`` and ``fixed-effect/global-correction/``). The models equal the job's bit for bit, for
any number of ``--processes`` (the entities split across them by ``shard_of``).

    python -m pipeline.replay --input 'events/*.avro' --output out/ --entity-field userId \\
        --timestamp-field timestamp [--initial-models DIR] [any job flag] [--lateness-seconds 3600] \\
        [--processes 0]
"""

import math
import multiprocessing
import os
import sys
import time
import zlib
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import progress
from transforms.avro_encoding import ModelContainerWriter
from transforms.examples import DeadLetter, ExampleParser
from transforms.formats import is_blank, to_json
from transforms.io import read_path_records
from transforms.models import ModelParser, coordinate_dir, model_files, write_snapshot
from transforms.paths import data_files
from transforms.replay import EntityReplay, GlobalReplay, PeriodicBatchReplay
from transforms.update import GLOBAL_COORDINATE
from transforms.validation import ProgressiveValidation
from transforms.worker import tune_garbage_collection

from .job import SUMMARY_FILE, VALIDATION_FILE, check_inputs, format_summary, write_summary
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
        parser.add_argument(
            "--batch-baseline-hours", dest="batch_baseline_hours", type=float, default=0.0,
            help="replay: instead of the job's incremental updates, retrain every entity from scratch on all its "
                 "data so far every this many hours of event time, scoring each example with the last retrain "
                 "(the periodic batch baseline; writes the validation report and the summary only); 0: off")
        parser.add_argument(
            "--processes", dest="processes", type=int, default=0,
            help="replay: split the entities across this many processes (default 0: one per core); each "
                 "reads the whole input and trains its own entities, so the outputs are the same for any number")


class _NoOutputs:
    """Where a replay run for its scores alone (``pipeline.tune``) sends its records: nowhere."""

    def update(self, record: dict) -> None:
        pass

    def global_update(self, record: dict) -> None:
        pass

    def dead_letter(self, dead: DeadLetter) -> None:
        pass

    def close(self) -> None:
        pass


class _Outputs(_NoOutputs):
    """A shard's files, written as it goes (one part per kind and shard, like a job's shards)."""

    def __init__(self, output: str, shard: int, shards: int):
        self.output = output
        part = f"{shard:05d}-of-{shards:05d}"
        self.updates_path = FileSystems.join(output, "updates", f"updates-{part}.avro")
        self.dead_path = FileSystems.join(output, "dead-letter", f"dead-letter-{part}.jsonl")
        self._updates_file = FileSystems.create(self.updates_path)
        self._updates = ModelContainerWriter(self._updates_file, "ModelUpdateAvro")
        self._dead_file = None
        self._global_file = self._global = None

    def update(self, record: dict) -> None:
        self._updates.write(record)

    def global_update(self, record: dict) -> None:
        if self._global is None:
            self._global_file = FileSystems.create(
                FileSystems.join(self.output, "global-updates", "global-updates-00000-of-00001.avro"))
            self._global = ModelContainerWriter(self._global_file, "ModelUpdateAvro")
        self._global.write(record)

    def dead_letter(self, dead: DeadLetter) -> None:
        if self._dead_file is None:
            self._dead_file = FileSystems.create(self.dead_path)
        self._dead_file.write(to_json(dead.to_dict()).encode("utf-8") + b"\n")

    def close(self) -> None:
        self._updates.flush()
        self._updates_file.close()
        if self._dead_file is not None:
            self._dead_file.close()
        if self._global is not None:
            self._global.flush()
            self._global_file.close()


class _Distribution:
    __slots__ = ("count", "total", "min", "max")

    def __init__(self):
        self.count, self.total, self.min, self.max = 0, 0, None, None

    def add(self, values: List[int]) -> None:
        if values:
            self._add(len(values), sum(values), min(values), max(values))

    def merge(self, other: "_Distribution") -> None:
        if other.count:
            self._add(other.count, other.total, other.min, other.max)

    def _add(self, count: int, total: int, low: int, high: int) -> None:
        self.count += count
        self.total += total
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)

    def value(self) -> Optional[dict]:
        if not self.count:
            return None
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.total / self.count}


class _Shard:
    """What one shard of a replay (the entities ``shard_of`` gives it) counted, scored and learned."""

    def __init__(self, validation: ProgressiveValidation):
        self.counts: Counter = Counter()
        self.sizes, self.micros = _Distribution(), _Distribution()
        self.validation = validation
        self.models: Dict[str, Any] = {}
        self.global_model = None  # the global correction model: every shard trains the same one

    def merge(self, other: "_Shard") -> "_Shard":
        self.counts.update(other.counts)
        self.sizes.merge(other.sizes)
        self.micros.merge(other.micros)
        self.validation.merge(other.validation)
        self.models.update(other.models)  # shards hold disjoint entities
        return self


def shard_of(entity_id: str, shards: int) -> int:
    """The replay shard (process) that owns an entity: the same in every process and every run."""
    return zlib.crc32(entity_id.encode("utf-8")) % shards


def _replay_shard(options: PipelineOptions, shard: int, shards: int, write_outputs: bool) -> _Shard:
    """Replay the entities of one shard over the whole input.

    Every shard reads every record and moves its watermark by each record's event time, so each
    sees the watermark the one-process replay sees, and trains its own entities exactly as that
    one would; only the owner parses a record in full, unless the global correction needs every
    example in every shard. Shard 0 also counts and dead-letters what
    belongs to no entity (unreadable files, blank lines, records without an entity or event time,
    invalid initial-model records).
    """
    tune_garbage_collection()
    o = options.view_as(LambdaLearnerOptions)
    replay_options = options.view_as(ReplayOptions)
    lateness = replay_options.lateness_seconds
    config = update_config(o)
    first = shard == 0
    progress.enable(o.progress_seconds if first else 0)
    result = _Shard(ProgressiveValidation(int(o.validation_bucket_seconds * 1000)))
    counts, sizes, micros, validation = result.counts, result.sizes, result.micros, result.validation
    baseline_hours = replay_options.batch_baseline_hours
    baseline = PeriodicBatchReplay(config, int(round(baseline_hours * 3_600_000))) if baseline_hours else None
    lateness_ms = None if lateness == -1 else int(round(lateness * 1000))
    state = EntityReplay(config, lateness_ms)
    # Every shard trains the global correction model on every example, so each passes its entities
    # the corrections the one-process replay (and the job) would.
    glob = GlobalReplay(config, lateness_ms) if config.corrects else None
    out = _Outputs(o.output, shard, shards) if write_outputs and baseline is None else _NoOutputs()

    def mine(entity_id: Optional[str]) -> bool:
        """Whether this shard owns the entity; what has no entity (None) is shard 0's."""
        return shards == 1 or (0 if entity_id is None else shard_of(entity_id, shards)) == shard

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

    def passed_on(corrected) -> None:
        """A global correction flush: its examples to their entities, its updates out (shard 0)."""
        if corrected is None:
            return
        for ex in corrected.examples:
            if mine(ex.entity_id):
                state.buffer_example(ex)
        if first:
            for record in corrected.updates:
                out.global_update(record)
            counts["global_updates"] += len(corrected.updates)
            counts["global_failed_updates"] += corrected.failed_updates

    def advance(timestamp_ms: int) -> None:
        """A record with this event time was read: the watermark moves, through both stages."""
        if glob is not None:
            passed_on(glob.advance(timestamp_ms))
        flushed(state.advance(timestamp_ms))

    def valid_models(path: str, penalty: float):
        """The valid model records under ``path``; the invalid ones are shard 0's dead letters."""
        models_format = o.initial_models_format or o.input_format
        model_parser = ModelParser(penalty, o.max_model_coefficients)
        for file in model_files(path, bool(models_format)):
            for record in read_path_records(file, models_format):
                parsed = record if isinstance(record, DeadLetter) else model_parser.parse_as_read(record)
                if parsed is None:  # a blank line
                    continue
                if isinstance(parsed, DeadLetter):
                    if first:
                        dead_letter(parsed)
                else:
                    yield parsed

    if o.initial_global_model:
        for model in valid_models(o.initial_global_model, config.global_penalty):
            glob.add_model(model)
    if o.initial_models:
        for model in valid_models(o.initial_models, o.penalty):
            if mine(model.entity_id):
                state.add_model(model)
                if baseline is not None:
                    baseline.add_model(model)
    counts["entities_with_initial_models"] = len(state.models)

    baseline_cpu = 0.0

    def score_and_keep(ex) -> None:
        """The batch baseline's step for one example, its CPU time counted as the learner's."""
        nonlocal baseline_cpu
        cpu = time.process_time()
        validation.add(baseline.add_example(ex))
        baseline_cpu += time.process_time() - cpu

    parser = ExampleParser(o.entity_field, o.timestamp_field, label_rule=config.label_rule,
                           max_features=o.max_features)
    for path in data_files(o.input, bool(o.input_format)):
        for record in read_path_records(path, o.input_format):
            if isinstance(record, DeadLetter):
                if first:
                    dead_letter(record)
                continue
            if isinstance(record, (bytes, str)) and is_blank(record):
                if first:
                    counts["blank_lines"] += 1
                continue
            if first:
                counts["records_read"] += 1
                progress.record_read()
            value = parser.decode_as_read(record)
            # (entity, event time), read first only when the record may be another shard's; one
            # without them belongs to shard 0 (its dead letter).
            key = parser.key(value) if shards > 1 else None
            if glob is None and not mine(key and key[0]):
                if key is not None:
                    flushed(state.advance(key[1]))
                continue
            parsed = parser.parse_decoded(record, value)
            if isinstance(parsed, DeadLetter):
                if mine(key and key[0]):
                    dead_letter(parsed)
                key = key or parser.key(value)
                if key is not None:  # invalid, but its event time was read: it moves the watermark
                    advance(key[1])
            elif glob is not None:  # every shard's global model learns from every example
                glob.add_example(parsed)
                if mine(parsed.entity_id):
                    counts["examples"] += 1
                advance(parsed.timestamp_ms)
            else:
                counts["examples"] += 1
                if baseline is not None:
                    score_and_keep(parsed)
                else:
                    flushed(state.add_example(parsed))
    if glob is not None:
        passed_on(glob.finish())
        result.global_model = glob.model
        counts["global_late_examples"] = glob.late_examples if first else 0
        counts["global_initial_models"] = glob.initial_models if first else 0
    if baseline is None:
        flushed(state.finish())
    out.close()
    # CPU seconds of the learner: training and scoring mini-batches (the job's updates), or the
    # baseline's scoring and retrains.
    counts["learner_cpu_seconds"] = state.train_seconds + baseline_cpu + (glob.train_seconds if glob is not None else 0.0)
    if baseline is not None:
        counts.update(retrains=baseline.retrains, retrain_cpu_seconds=baseline.train_seconds)
    counts.update(late_examples=state.late_examples, initial_models=state.initial_models,
                  cold_start_entities=state.cold_start_entities)
    result.models = state.models
    return result


def _replay_shard_task(task: Tuple[PipelineOptions, int, int, bool]) -> _Shard:
    return _replay_shard(*task)


def _processes(requested: int) -> int:
    if requested < 0:
        raise UsageError(f"--processes must be >= 1, or 0 for one per core; got {requested}.")
    return requested or os.cpu_count() or 1


def replay(options: PipelineOptions, write_outputs: bool = True) -> Tuple[Dict[str, Any], ProgressiveValidation]:
    """Replay the job over its inputs; write its outputs (unless ``write_outputs`` is false: then
    nothing is written); return the summary (as the job's) and the progressive validation."""
    started = time.time()
    o = options.view_as(LambdaLearnerOptions)
    replay_options = options.view_as(ReplayOptions)
    if o.watch or o.input_subscription:
        raise UsageError("replay reads files: give --input without --watch (a Pub/Sub subscription cannot be replayed).")
    lateness = replay_options.lateness_seconds
    if not (lateness == -1 or lateness >= 0):
        raise UsageError(f"--lateness-seconds must be >= 0, or -1 for no watermark; got {lateness}.")
    baseline_hours = replay_options.batch_baseline_hours
    if not (baseline_hours >= 0 and math.isfinite(baseline_hours)):
        raise UsageError(f"--batch-baseline-hours must be >= 0 (0: off), got {baseline_hours}.")
    processes = _processes(replay_options.processes)
    if baseline_hours and update_config(o).corrects:
        raise UsageError("--batch-baseline-hours retrains the entities' models alone: add --global-correction none.")
    if baseline_hours:
        if replay_options.processes > 1:
            raise UsageError("--batch-baseline-hours runs in one process: drop --processes.")
        processes = 1
    check_inputs(o)
    tasks = [(options, shard, processes, write_outputs) for shard in range(processes)]
    if processes == 1:
        shards = [_replay_shard(*tasks[0])]
    else:
        # fork on Linux: the shards start at once, with this process's imports (elsewhere fork is
        # unsafe or absent, and the platform's default, spawn, re-imports them).
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with context.Pool(processes) as pool:
            shards = pool.map(_replay_shard_task, tasks)
    result = shards[0]
    for other in shards[1:]:
        result.merge(other)
    counts, validation = result.counts, result.validation
    counts["learner_cpu_seconds"] = round(counts["learner_cpu_seconds"], 3)
    if baseline_hours:
        counts["retrain_cpu_seconds"] = round(counts["retrain_cpu_seconds"], 3)
    if not write_outputs or baseline_hours:
        metrics = dict(counts)
        if write_outputs:  # the baseline: its scores and counts
            validation_path = FileSystems.join(o.output, VALIDATION_FILE)
            with FileSystems.create(validation_path) as f:
                f.write(to_json(validation.report()).encode("utf-8") + b"\n")
            with FileSystems.create(FileSystems.join(o.output, SUMMARY_FILE)) as f:
                f.write(to_json(dict(metrics, batch_baseline_hours=baseline_hours, seconds=round(time.time() - started, 2),
                                     progressive_validation=validation.report())).encode("utf-8"))
        return metrics, validation

    paths = {"updates": FileSystems.join(o.output, "updates"),
             "dead_letters": FileSystems.join(o.output, "dead-letter")}
    coordinate = o.coordinate or o.entity_field
    models = result.models.values()  # written in entity order: the snapshot does not depend on the shards
    snapshot = write_snapshot(models, o.output, coordinate, o.entity_field, o.feature_shard,
                              o.trainer, records_per_part=_records_per_part(len(models), o.snapshot_shards))
    paths["snapshot"] = coordinate_dir(o.output, coordinate)
    if update_config(o).corrects:
        paths["global_updates"] = FileSystems.join(o.output, "global-updates")
        if result.global_model is not None:
            paths["global_snapshot"] = write_snapshot([result.global_model], o.output, GLOBAL_COORDINATE,
                                                      o.entity_field, o.feature_shard, o.trainer,
                                                      fixed_effect=True)["directory"]
    paths["validation"] = FileSystems.join(o.output, VALIDATION_FILE)
    with FileSystems.create(paths["validation"]) as f:
        f.write(to_json(validation.report()).encode("utf-8") + b"\n")
    metrics: Dict[str, Any] = dict(counts, minibatch_size=result.sizes.value(),
                                   update_train_micros=result.micros.value())
    summary = write_summary(metrics, options, paths, time.time() - started, runner="replay",
                            extra={"snapshot_models": snapshot["models"],
                                   "entities_with_initial_models": counts["entities_with_initial_models"],
                                   "learner_cpu_seconds": counts["learner_cpu_seconds"],
                                   "processes": processes})
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
        summary, validation = replay(options)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if options.view_as(ReplayOptions).batch_baseline_hours:
        overall = validation.report()["overall"]
        print(f"Periodic batch baseline (every {options.view_as(ReplayOptions).batch_baseline_hours:g} h): "
              f"{summary['examples']:,} examples scored, {summary['retrains']:,} entity retrains in "
              f"{summary['retrain_cpu_seconds']:.1f} CPU s; progressive log loss {overall['log_loss_offset_only']:.4f} "
              f"offset-only -> {overall['log_loss_with_random_effects']:.4f}.")
        return 0
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

