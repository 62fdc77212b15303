"""Wiring of the job: read -> UpdateRandomEffects -> write updates, dead letters, snapshot, report.

Everything here is a named step from ``transforms``; element logic lives there.
"""

import json
import sys
import threading
import time
from typing import Any, Dict, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from transforms import progress
from transforms.formats import detect_format, sniff_format
from transforms.io import AvroSink, JsonLinesSink, ReadModelRecords, ReadRecords, WriteRecords, WriteSnapshot
from transforms.models import fixed_effect_dir, model_files
from transforms.paths import data_files
from transforms.random_effects import NAMESPACE, UpdateRandomEffects
from transforms.update import GLOBAL_COORDINATE
from transforms.validation import ProgressiveValidationFn

from .options import LambdaLearnerOptions, UsageError, update_config

VALIDATION_FILE = "progressive-validation.json"
SUMMARY_FILE = "summary.json"


def _validation_file_name(*_args):
    return VALIDATION_FILE


def _check_files(flag: str, files, explicit: Optional[str], said_by: str, fix_flag: str) -> None:
    """Every file's format can be told, and the first file's bytes agree with it. ``said_by`` is
    the flag that gave ``explicit``; ``fix_flag`` the one a user passes to correct it."""
    for path in files:
        try:
            detect_format(path, explicit)
        except ValueError:
            raise UsageError(f"{flag}: cannot tell the format of {path!r} from its extension; name it .avro "
                             f"or .jsonl, or pass {fix_flag} avro|json.") from None
    fmt = detect_format(files[0], explicit)
    found = sniff_format(files[0])
    if found is not None and found != fmt:
        said = f"{said_by} {explicit}" if explicit else "its extension"
        raise UsageError(f"{flag}: {files[0]!r} holds {found} but {said} says {fmt}; pass {fix_flag} {found}.")


def check_inputs(o: LambdaLearnerOptions) -> None:
    """Fail early, with one sentence, on inputs that cannot work. This reads (lists files, looks at
    the first bytes of one), so ``run`` calls it before building, and not for a dry run."""
    if o.input and not o.watch:
        files = data_files(o.input, bool(o.input_format))
        if not files:
            raise UsageError(f"--input {o.input!r} matches no files.")
        _check_files("--input", files, o.input_format, "--input-format", "--input-format")
    for flag, path in (("--initial-models", o.initial_models), ("--initial-global-model", o.initial_global_model)):
        if not path:
            continue
        try:
            files = model_files(path, bool(o.initial_models_format or o.input_format))
        except FileNotFoundError as err:
            raise UsageError(f"{flag}: {err}") from None
        said_by = "--initial-models-format" if o.initial_models_format else "--input-format"
        _check_files(flag, files, o.initial_models_format or o.input_format, said_by, "--initial-models-format")


def restart_note(o: LambdaLearnerOptions) -> Optional[str]:
    """A one-line note when ``--initial-models`` is a snapshot's coordinate directory whose
    snapshot also holds a global correction model, and ``--initial-global-model`` is not given: the
    entities would restart on top of a global model that starts again from nothing. Reads (one
    existence check), so ``run`` calls it with ``check_inputs``."""
    if not (o.initial_models and not o.initial_global_model and update_config(o).corrects):
        return None
    layout, _ = FileSystems.split(o.initial_models.rstrip("/"))  # <snapshot>/random-effect
    snapshot, kind = FileSystems.split(layout)
    if kind != "random-effect":
        return None
    path = fixed_effect_dir(snapshot, GLOBAL_COORDINATE)
    if not FileSystems.exists(path):
        return None
    return (f"note: {path} holds the global correction model of the snapshot --initial-models is from; "
            f"pass --initial-global-model {path} to continue it (without it, it starts from nothing).")


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> Dict[str, Any]:
    """Add the job's steps to ``pipeline``; return what it will write where."""
    o = options.view_as(LambdaLearnerOptions)
    streaming = options.view_as(StandardOptions).streaming
    bounded = not (o.watch or o.input_subscription)
    coordinate = o.coordinate or o.entity_field

    if o.input_subscription:
        records = pipeline | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=o.input_subscription)
    else:
        records = pipeline | "ReadExamples" >> ReadRecords(
            o.input, o.input_format, watch_seconds=o.watch_interval_seconds if o.watch else 0,
            watch_duration_seconds=o.watch_duration_seconds)
    initial = initial_global = None
    if o.initial_models:
        initial = pipeline | "ReadInitialModels" >> ReadModelRecords(
            o.initial_models, o.initial_models_format or o.input_format)
    if o.initial_global_model:
        initial_global = pipeline | "ReadInitialGlobalModel" >> ReadModelRecords(
            o.initial_global_model, o.initial_models_format or o.input_format)

    # Beam's local runner fires timers before a watch's watermark passes them, and holds windowed
    # files back until the watch stops: there mini-batches close by the clock, and files are per bundle.
    # FnApiRunner also hands a Flatten of two inputs on only at the end, so a watch joins no inputs
    # with one there: initial models reach the stages as a side input (its stage ordering has them
    # ready before any example) and each step's dead letters are written on their own.
    local_watch = watches_on_local_runner(options)
    out = records | "UpdateRandomEffects" >> UpdateRandomEffects(
        o.entity_field, o.timestamp_field, config=update_config(o), initial_models=initial,
        max_features=o.max_features, max_model_coefficients=o.max_model_coefficients, streaming=streaming,
        hold_to_wall_clock=local_watch, initial_global_model=initial_global,
        without_flattens=local_watch and options.view_as(StandardOptions).runner == "FnApiRunner")

    paths = {
        "updates": FileSystems.join(o.output, "updates"),
        "dead_letters": FileSystems.join(o.output, "dead-letter"),
    }
    out.updates | "WriteUpdates" >> WriteRecords(
        paths["updates"], "updates", ".avro", lambda _: AvroSink("ModelUpdateAvro"), streaming,
        o.output_window_seconds, unbounded=not bounded, per_bundle=local_watch)
    (out.dead_letter_parts if out.dead_letters is None else out.dead_letters) | "WriteDeadLetters" >> WriteRecords(
        paths["dead_letters"], "dead-letter", ".jsonl", lambda _: JsonLinesSink(), streaming,
        o.output_window_seconds, unbounded=not bounded, per_bundle=local_watch)
    if out.global_updates is not None:
        paths["global_updates"] = FileSystems.join(o.output, "global-updates")
        out.global_updates | "WriteGlobalUpdates" >> WriteRecords(
            paths["global_updates"], "global-updates", ".avro", lambda _: AvroSink("ModelUpdateAvro"), streaming,
            o.output_window_seconds, unbounded=not bounded, per_bundle=local_watch)
    if bounded and out.global_updates is not None:
        latest_global = [out.global_updates] + (
            [out.initial_global_model] if out.initial_global_model is not None else [])
        global_snapshot = WriteSnapshot(o.output, GLOBAL_COORDINATE, o.entity_field, o.feature_shard, o.trainer,
                                        fixed_effect=True)
        latest_global | "AllGlobalModels" >> beam.Flatten() | "WriteGlobalSnapshot" >> global_snapshot
        paths["global_snapshot"] = global_snapshot.base
    if bounded:
        latest = [out.updates] + ([out.initial_models] if out.initial_models is not None else [])
        snapshot = WriteSnapshot(o.output, coordinate, o.entity_field, o.feature_shard, o.trainer,
                                 o.snapshot_shards)
        latest | "AllModels" >> beam.Flatten() | "WriteSnapshot" >> snapshot
        paths["snapshot"] = snapshot.base
        paths["validation"] = FileSystems.join(o.output, VALIDATION_FILE)
        (out.validation
         | "ProgressiveValidation" >> beam.CombineGlobally(
             ProgressiveValidationFn(int(o.validation_bucket_seconds * 1000))).without_defaults()
         | "WriteValidation" >> fileio.WriteToFiles(
             o.output, file_naming=_validation_file_name, sink=lambda _: JsonLinesSink(), shards=1))
    return paths


# Beam's local runner merges each bundle's metrics into the last lazily, one generator inside the
# next, so reading them recurses once per bundle: a local --watch of ~1,000 polls exceeded Python's
# default limit of 1,000 frames. They are read in a thread with room for this many (a generator
# level takes under 5 KB of C stack: 100,000 levels were read in 0.15 s with 512 MB).
_METRICS_RECURSION_LIMIT = 100_000
_METRICS_STACK_BYTES = 512 * 1024 * 1024


def read_deeply(fn):
    """``fn()``, in a thread whose stack and recursion limit allow ``_METRICS_RECURSION_LIMIT`` levels
    (the process's limit is raised meanwhile and restored after); its exception, if any, is raised."""
    outcome: Dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    try:
        stack = threading.stack_size(_METRICS_STACK_BYTES)
    except (ValueError, RuntimeError):  # a platform that refuses such a stack: read as usual
        return fn()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, _METRICS_RECURSION_LIMIT))
    try:
        thread = threading.Thread(target=target, name="read-metrics")
        thread.start()
        thread.join()
    finally:
        threading.stack_size(stack)
        sys.setrecursionlimit(limit)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def metric_values(result) -> Dict[str, Any]:
    """Our namespace's counters (int) and distributions (dict) from a finished run."""
    values: Dict[str, Any] = {}
    query = read_deeply(lambda: result.metrics().query(MetricsFilter().with_namespace(NAMESPACE)))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    for dist in query["distributions"]:
        d = dist.committed if dist.committed is not None else dist.attempted
        if d is not None and d.count:
            values[dist.key.metric.name] = {"count": d.count, "min": d.min, "max": d.max, "mean": d.sum / d.count}
    return values


def read_validation(path: str) -> Dict[str, Any]:
    """The progressive-validation report the job wrote (empty if it wrote none)."""
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8").strip()
    return json.loads(text) if text else {}


def summarize(result, options: PipelineOptions, paths: Dict[str, str], seconds: float) -> Dict[str, Any]:
    """The run summary of a finished Beam run (see ``write_summary``)."""
    return write_summary(metric_values(result), options, paths, seconds)


def write_summary(m: Dict[str, Any], options: PipelineOptions, paths: Dict[str, str], seconds: float,
                  runner: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The run summary from the job's metric values ``m`` (counters by name, distributions as
    dicts): counts, dead letters by reason, progressive validation, where files are, and ``extra``
    (what only some runs have). Written as ``summary.json`` under ``--output`` and returned."""
    o = options.view_as(LambdaLearnerOptions)
    streaming = bool(options.view_as(StandardOptions).streaming)
    dead_by_reason = {k.split("/", 1)[1]: v for k, v in sorted(m.items()) if k.startswith("dead_letters/")}
    summary = {
        "input": o.input or o.input_subscription,
        "runner": runner or options.view_as(StandardOptions).runner or "DirectRunner",
        "streaming": streaming,
        "seconds": round(seconds, 2),
        "records_read": m.get("records_read", 0),
        "blank_lines": m.get("blank_lines", 0),
        "examples": m.get("examples", 0),
        "examples_trained": m.get("examples_trained", 0),
        "late_examples": m.get("late_examples", 0),
        "duplicates": m.get("duplicates", 0),
        "examples_failed": m.get("examples_failed", 0),
        "updates": m.get("updates", 0),
        "failed_updates": m.get("failed_updates", 0),
        "initial_models": m.get("initial_models", 0),
        "cold_start_entities": m.get("cold_start_entities", 0),
        "global_correction": "independent" if update_config(o).corrects else "none",
        "dead_letters": m.get("dead_letters", 0),
        "dead_letters_by_reason": dead_by_reason,
        "minibatch_size": m.get("minibatch_size"),
        "update_train_micros": m.get("update_train_micros"),
        "progressive_validation": read_validation(paths["validation"]) if "validation" in paths else {},
        "outputs": paths,
    }
    if streaming and m.get("update_latency_ms") is not None:
        # Wall clock at the update minus its interval's end: how fresh a live job's updates are
        # (in batch, over old data, it is the data's age, so it is left out).
        summary["update_latency_ms"] = m["update_latency_ms"]
    if summary["global_correction"] != "none":
        summary.update(global_updates=m.get("global_updates", 0), global_failed_updates=m.get("global_failed_updates", 0),
                       global_late_examples=m.get("global_late_examples", 0),
                       global_initial_models=m.get("global_initial_models", 0))
    summary.update(extra or {})
    path = FileSystems.join(o.output, SUMMARY_FILE)
    with FileSystems.create(path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    summary["outputs"]["summary"] = path
    return summary


def format_summary(s: Dict[str, Any]) -> str:
    """A table a person can read."""
    lines = [
        f"Read {s['records_read']:,} records in {s['seconds']:.1f}s ({s['runner']}, "
        f"{'streaming' if s['streaming'] else 'batch'}).",
        f"  valid examples      {s['examples']:>10,}   trained {s['examples_trained']:,}, late {s['late_examples']:,}, "
        f"duplicates {s['duplicates']:,}, in failed updates {s['examples_failed']:,}",
        f"  model updates       {s['updates']:>10,}   failed {s['failed_updates']:,}",
        f"  entities            cold starts {s['cold_start_entities']:,}, initial models loaded {s['initial_models']:,}",
    ]
    if s.get("global_correction", "none") != "none":
        lines.append(f"  global correction   {s.get('global_updates', 0):>10,}   updates, failed "
                     f"{s.get('global_failed_updates', 0):,}, late examples {s.get('global_late_examples', 0):,}, "
                     f"initial models loaded {s.get('global_initial_models', 0):,}")
    lines += [
        f"  dead letters        {s['dead_letters']:>10,}",
    ]
    for reason, n in s["dead_letters_by_reason"].items():
        lines.append(f"      {reason:<26}{n:>8,}")
    report = s.get("progressive_validation") or {}
    if report.get("buckets"):
        lines.append("")
        lines.append("Progressive validation (each mini-batch scored before training on it):")
        lines.append(f"  {'bucket start (UTC)':<22}{'examples':>10}{'logloss offset':>16}{'logloss +RE':>13}"
                     f"{'AUC offset':>12}{'AUC +RE':>9}")
        rows = report["buckets"] + [dict(report["overall"], start_ms=None)]
        for b in rows:
            when = "overall" if b["start_ms"] is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["start_ms"] / 1000))
            auc = lambda v: "   n/a" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"  {when:<22}{b['examples']:>10,}{b['log_loss_offset_only']:>16.4f}"
                         f"{b['log_loss_with_random_effects']:>13.4f}{auc(b['auc_offset_only']):>12}"
                         f"{auc(b['auc_with_random_effects']):>9}")
    lines.append("")
    lines.append("Outputs:")
    for name, path in s["outputs"].items():
        lines.append(f"  {name:<16}{path}")
    return "\n".join(lines)


def disable_local_state_cache() -> None:
    """Turn off the state cache of Beam's in-process (DirectRunner / embedded) worker.

    That cache weighs every value it holds with a deep object-size traversal that scans the globals
    of every loaded module; with per-entity state touched on every element and timer, profiling
    showed it taking ~65% of a local streaming run (22.9 s -> 5.9 s without it on 2,031 records).
    Remote workers (Dataflow, Flink) have it off by default (``--max_cache_memory_usage_mb=0``);
    this only affects workers running inside this process.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker_handlers.STATE_CACHE_SIZE_MB = 0


# What ``choose_local_runner`` replaces, and what it (or a user) may name instead: Beam's Python local runners.
_DEFAULT_RUNNERS = (None, "DirectRunner", "direct")
LOCAL_RUNNERS = _DEFAULT_RUNNERS + ("FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
LOCAL_WATCH_NOTE = ("note: on Beam's Python local runner, --watch closes each mini-batch when the clock passes its end "
                    "(the runner does not wait for the watch's watermark) and writes a file per bundle, not per "
                    "--output-window-seconds; see the README, \"Freshness\".")


def choose_local_runner(options: PipelineOptions) -> None:
    """Make the default local runner explicit: with no ``--runner`` (or ``DirectRunner``) the job runs
    on Beam's Python runners, ``FnApiRunner`` (``BundleBasedDirectRunner`` for Pub/Sub, which the
    former cannot read). Beam's DirectRunner would first try Prism, a binary it downloads at run time:
    where the download works the job would silently run on another runner. ``--runner=PrismRunner``
    still chooses Prism."""
    standard = options.view_as(StandardOptions)
    if standard.runner in _DEFAULT_RUNNERS:
        pubsub = bool(options.view_as(LambdaLearnerOptions).input_subscription)
        standard.runner = "BundleBasedDirectRunner" if pubsub else "FnApiRunner"


def watches_on_local_runner(options: PipelineOptions) -> bool:
    """Whether the job follows a directory (``--watch``) on Beam's Python local runner (given,
    defaulted, or as ``choose_local_runner`` names it)."""
    return bool(options.view_as(LambdaLearnerOptions).watch) and options.view_as(StandardOptions).runner in LOCAL_RUNNERS


def run(options: PipelineOptions, wait: bool = True):
    """Check the inputs (unless it is a dry run), build and run the job; return (result, paths, seconds)."""
    started = time.time()
    choose_local_runner(options)
    dry_run = options.view_as(TestOptions).dry_run
    if not dry_run:
        check_inputs(options.view_as(LambdaLearnerOptions))
        note = restart_note(options.view_as(LambdaLearnerOptions))
        if note:
            print(note, file=sys.stderr)
        if watches_on_local_runner(options):
            print(LOCAL_WATCH_NOTE, file=sys.stderr)
    disable_local_state_cache()
    progress.enable(options.view_as(LambdaLearnerOptions).progress_seconds)
    try:
        pipeline = beam.Pipeline(options=options)
    except ValueError as err:  # Beam's own option validation (runner-specific flags)
        raise UsageError(" ".join(str(err).split())) from None
    paths = build(pipeline, options)
    result = pipeline.run()
    if wait and not dry_run:
        result.wait_until_finish()
    return result, paths, time.time() - started
