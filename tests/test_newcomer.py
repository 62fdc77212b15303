"""What a new user meets first: the public API, what building a job touches, paths on any
filesystem, explicit formats, replayable dead letters, one rule for the newest model, a quiet start."""

import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
import numpy as np
import pytest

import memfs
from jobutil import make_inputs, run_job, snapshot, updates_by_entity
from pipeline.__main__ import main as job_main
from pipeline.job import build
from pipeline.options import parse_options
from transforms.examples import ExampleParser
from transforms.formats import write_avro, write_json_lines
from transforms.models import ModelParser, latest_record, load_models, model_files, newer
from transforms.random_effects import initial_model_record

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


# 1. The public API is where the contract puts it.

def test_the_public_transforms_import_from_the_package():
    import transforms

    from transforms import ReadModelRecords, ReadRecords, UpdateRandomEffects, WriteRecords, WriteSnapshot  # noqa

    assert issubclass(UpdateRandomEffects, beam.PTransform)
    for name in transforms.__all__:
        assert getattr(transforms, name).__doc__, f"{name} has no docstring"
    assert {"UpdateRandomEffects", "ReadRecords", "ReadModelRecords", "WriteRecords", "WriteSnapshot"} <= set(
        transforms.__all__)
    # only what a user imports: no private helpers, no modules
    assert not [n for n in transforms.__all__ if n.startswith("_") or n in ("io", "state", "formats")]


def test_update_random_effects_composes_into_a_users_own_pipeline():
    from transforms import UpdateRandomEffects

    records = [{"userId": "u1", "timestamp": 1_000, "uid": "a", "label": 1.0, "features": []},
               {"userId": "u1", "timestamp": 2_000, "uid": "b", "label": 0.0, "features": []}]
    with beam.Pipeline() as p:
        out = p | beam.Create(records) | UpdateRandomEffects("userId", "timestamp", streaming=False)
        versions = out.updates | beam.Map(lambda u: (u["modelId"], u["version"], u["numExamples"]))
        assert_that(versions, equal_to([("u1", 1, 2)]))


# 2. Building the pipeline does no I/O, network or clock reading.

def _job_args(inputs, output, *extra):
    return ["--input", inputs["examples"], "--output", str(output), "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--initial-models", inputs["models"], *extra]


@pytest.mark.parametrize("extra", [[], ["--streaming"], ["--watch", "--watch-duration-seconds", "30"]])
def test_building_the_job_writes_nothing_and_reads_no_clock(tmp_path, monkeypatch, extra):
    _, inputs = make_inputs(tmp_path / "in", num_users=5, hours=0.2)
    out = tmp_path / "out"
    options = parse_options(_job_args(inputs, out, *extra))

    def no_clock():
        raise AssertionError("the clock was read while building the pipeline")

    import transforms.io

    monkeypatch.setattr(transforms.io.time, "time", no_clock)
    monkeypatch.setattr(transforms.io.Timestamp, "now", staticmethod(no_clock))
    build(beam.Pipeline(options=options), options)
    assert not out.exists()


def test_a_gcs_dataflow_dry_run_builds_offline_and_touches_nothing(tmp_path, monkeypatch, capsys):
    _, inputs = make_inputs(tmp_path / "in", num_users=5, hours=0.2)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network use while building a dry run: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    started = time.monotonic()
    code = job_main(["--input", inputs["examples"], "--output", "gs://example-bucket/out", "--entity-field", "userId",
                     "--timestamp-field", "timestamp", "--initial-models", "gs://example-bucket/snapshot",
                     "--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--streaming",
                     "--project", "lambda-learner-test", "--region", "us-central1",
                     "--temp_location", "gs://example-bucket/tmp"])
    assert code == 0
    assert "Dry run" in capsys.readouterr().out
    assert time.monotonic() - started < 60  # the old build retried GCS for 120 s before failing


# 3. Every path goes through Beam's FileSystems: a job on a non-local filesystem.

@pytest.fixture
def memory_fs():
    memfs.clear()
    yield memfs
    memfs.clear()


def _copy_tree_to_memory(local_dir: Path, prefix: str):
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            memfs.put(f"{prefix}/{path.relative_to(local_dir).as_posix()}", path.read_bytes())


def test_the_job_reads_and_writes_a_non_local_filesystem(tmp_path, memory_fs):
    _, inputs = make_inputs(tmp_path / "in", num_users=12, hours=0.5, seed=3)
    run_job(inputs, tmp_path / "first")  # a local run: its snapshot is the next run's initial models
    _copy_tree_to_memory(tmp_path / "first" / "random-effect" / "userId", "memtest://bucket/snapshot")
    memfs.put("memtest://bucket/in/more.jsonl", Path(inputs["examples"]).read_bytes())

    # the same restart, once locally and once entirely on memtest://
    assert job_main(["--input", inputs["examples"], "--output", str(tmp_path / "local"), "--entity-field", "userId",
                     "--timestamp-field", "timestamp",
                     "--initial-models", str(tmp_path / "first" / "random-effect" / "userId"),
                     "--minibatch-seconds", "300", "--dedup-horizon-seconds", "0"]) == 0
    assert job_main(["--input", "memtest://bucket/in/*.jsonl", "--output", "memtest://bucket/out",
                     "--entity-field", "userId", "--timestamp-field", "timestamp",
                     "--initial-models", "memtest://bucket/snapshot", "--minibatch-seconds", "300",
                     "--dedup-horizon-seconds", "0"]) == 0
    written = memfs.paths("memtest://bucket/out/")
    assert "memtest://bucket/out/random-effect/userId/id-info" in written
    assert "memtest://bucket/out/summary.json" in written
    assert any(p.startswith("memtest://bucket/out/updates/") for p in written)
    # the snapshot on memtest:// equals the local one
    local = tmp_path / "from-memory" / "random-effect" / "userId" / "coefficients"
    local.mkdir(parents=True)
    for p in written:
        if "/coefficients/" in p:
            (local / p.rsplit("/", 1)[1]).write_bytes(memfs.get(p))
    assert snapshot(tmp_path / "from-memory") == snapshot(tmp_path / "local")


def test_model_discovery_and_compaction_work_on_a_non_local_filesystem(tmp_path, memory_fs):
    _, inputs = make_inputs(tmp_path / "in", num_users=8, hours=0.3, seed=4)
    run_job(inputs, tmp_path / "out")
    _copy_tree_to_memory(tmp_path / "out", "memtest://b/run")
    memfs.put("memtest://b/run/random-effect/userId/coefficients/_SUCCESS", b"")
    files = model_files("memtest://b/run/random-effect/userId")
    assert files == ["memtest://b/run/random-effect/userId/coefficients/part-00000.avro"]
    models, dead = load_models("memtest://b/run/random-effect/userId", penalty=10.0)
    assert not dead and set(models) == set(snapshot(tmp_path / "out"))
    with pytest.raises(FileNotFoundError):
        model_files("memtest://b/nothing-here")

    from pipeline.compact import main as compact_main

    assert compact_main(["--updates", "memtest://b/run/updates/*.avro", "--initial-models", inputs["models"],
                         "--output", "memtest://b/compacted", "--coordinate", "userId",
                         "--entity-field", "userId"]) == 0
    local = tmp_path / "compacted" / "random-effect" / "userId" / "coefficients"
    local.mkdir(parents=True)
    (local / "part-00000.avro").write_bytes(
        memfs.get("memtest://b/compacted/random-effect/userId/coefficients/part-00000.avro"))
    assert snapshot(tmp_path / "compacted") == snapshot(tmp_path / "out")


def test_a_missing_non_local_model_path_is_one_usage_line(tmp_path, memory_fs, capsys):
    _, inputs = make_inputs(tmp_path / "in", num_users=3, hours=0.1)
    code = job_main(["--input", inputs["examples"], "--output", str(tmp_path / "o"), "--entity-field", "userId",
                     "--timestamp-field", "timestamp", "--initial-models", "memtest://b/none"])
    assert code == 2
    assert "--initial-models: No model files" in capsys.readouterr().err


# 4. An explicit --input-format reaches every reader; a bad combination is one line.

def _as_txt(path: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (Path(path).stem + ".txt")
    target.write_bytes(Path(path).read_bytes())
    return target


def test_the_watch_polls_at_most_once_per_interval(tmp_path):
    # Beam's local runner re-runs a poll back to back; the poll itself keeps them an interval apart.
    from transforms.io import _MatchPattern

    (tmp_path / "a.jsonl").write_text("{}\n")
    poll = _MatchPattern(False, 0.4)
    started = time.monotonic()
    results = [poll(str(tmp_path / "*.jsonl")) for _ in range(3)]
    assert time.monotonic() - started >= 0.8
    assert all(list(r.outputs)[0].value == str(tmp_path / "a.jsonl") for r in results)


def test_a_local_watch_of_more_polls_than_pythons_recursion_limit_ends_cleanly(tmp_path):
    # Beam's local runner nests each bundle's metrics in a generator over the last: reading them
    # after 1,200 polls recursed past Python's default limit of 1,000 (a RecursionError at the end).
    examples, inputs = make_inputs(tmp_path / "in", num_users=3, hours=0.1, seed=9)
    proc = run_cli("--input", inputs["examples"], "--watch", "--watch-interval-seconds", "0.01",
                   "--watch-duration-seconds", "12", "--output", str(tmp_path / "out"), "--entity-field", "userId",
                   "--timestamp-field", "timestamp", "--minibatch-seconds", "300")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["records_read"] == summary["examples_trained"] == len(examples)


def test_reading_deeply_nested_generators_needs_no_recursion_limit_of_ones_own():
    from pipeline.job import read_deeply

    def nested(depth):
        values = iter([1, 2, 3])
        for _ in range(depth):
            values = (v for v in values)
        return values

    limit = sys.getrecursionlimit()
    with pytest.raises(RecursionError):
        sum(nested(limit + 500))
    assert read_deeply(lambda: sum(nested(20 * limit))) == 6
    assert sys.getrecursionlimit() == limit
    with pytest.raises(ZeroDivisionError):  # an error inside comes out as it is
        read_deeply(lambda: 1 / 0)


def test_where_a_large_thread_stack_is_refused_metrics_are_read_as_usual(monkeypatch):
    import threading

    from pipeline.job import read_deeply

    def refuse(size=None):
        raise ValueError("size not valid")

    monkeypatch.setattr(threading, "stack_size", refuse)
    assert read_deeply(lambda: threading.current_thread().name) == threading.current_thread().name


def test_per_bundle_files_appear_whole_and_hold_every_record(tmp_path):
    # The local runner's live path: a file per bundle, renamed into place, nothing left behind.
    from transforms.io import JsonLinesSink, WriteRecords

    records = [{"id": i} for i in range(50)]
    with beam.Pipeline() as p:
        _ = (p | beam.Create(records) | WriteRecords(str(tmp_path), "dead-letter", ".jsonl", lambda _: JsonLinesSink(),
                                                     streaming=True, unbounded=True, per_bundle=True))
    files = sorted(tmp_path.glob("dead-letter-*.jsonl"))
    assert files and all(len(f.name.split("-")) == 4 for f in files)
    written = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(r["id"] for r in written) == list(range(50))
    assert list((tmp_path / ".temp-bundles").iterdir()) == []


def test_input_format_reaches_the_watch_path_and_the_initial_models(tmp_path):
    examples, inputs = make_inputs(tmp_path / "in", num_users=6, hours=0.25, seed=8)
    watched = _as_txt(inputs["examples"], tmp_path / "watched").parent
    models = _as_txt(inputs["models"], tmp_path / "models")
    proc = run_cli("--input", str(watched / "*.txt"), "--input-format", "json", "--watch",
                   "--watch-interval-seconds", "1", "--watch-duration-seconds", "2", "--output-window-seconds", "5",
                   "--initial-models", str(models), "--output", str(tmp_path / "out"), "--entity-field", "userId",
                   "--timestamp-field", "timestamp", "--minibatch-seconds", "300")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    updates = [u for us in updates_by_entity(tmp_path / "out").values() for u in us]
    assert sum(u["numExamples"] for u in updates) == len(examples)
    # the initial models were read: the last update of every entity equals the batch job's with .jsonl files
    run_job(inputs, tmp_path / "expected")
    expected = {e: us[-1]["means"] for e, us in updates_by_entity(tmp_path / "expected").items()}
    assert {e: us[-1]["means"] for e, us in updates_by_entity(tmp_path / "out").items()} == expected


def test_the_batch_job_reads_a_directory_and_txt_files_with_an_explicit_format(tmp_path):
    examples, inputs = make_inputs(tmp_path / "in", num_users=6, hours=0.25, seed=8)
    directory = _as_txt(inputs["examples"], tmp_path / "dir").parent
    run_job(dict(inputs, examples=str(directory)), tmp_path / "out", "--input-format", "json")
    run_job(inputs, tmp_path / "expected")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "expected")


@pytest.mark.parametrize("case, message", [
    ("txt-no-format", "cannot tell the format"),
    ("avro-format-on-json", "holds json but --input-format avro says avro"),
    ("json-models-on-avro", "holds avro but --input-format json says json; pass --initial-models-format avro"),
    ("pubsub-avro", "--input-format avro does not apply"),
])
def test_a_bad_format_combination_is_one_line_and_exit_2(tmp_path, case, message):
    _, inputs = make_inputs(tmp_path / "in", num_users=3, hours=0.1)
    txt = _as_txt(inputs["examples"], tmp_path / "txt")
    avro_models = tmp_path / "models.avro"
    write_avro(str(avro_models), "BayesianLinearModelAvro",
               [json.loads(line) for line in Path(inputs["models"]).read_text().splitlines()])
    args = {
        "txt-no-format": ["--input", str(txt)],
        "avro-format-on-json": ["--input", inputs["examples"], "--input-format", "avro"],
        "json-models-on-avro": ["--input", str(txt), "--input-format", "json", "--initial-models", str(avro_models)],
        "pubsub-avro": ["--input-subscription", "projects/p/subscriptions/s", "--input-format", "avro"],
    }[case]
    proc = run_cli(*args, "--output", str(tmp_path / "o"), "--entity-field", "userId", "--timestamp-field",
                   "timestamp")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_a_watched_file_of_unknown_format_is_a_dead_letter_not_a_crash(tmp_path):
    examples, inputs = make_inputs(tmp_path / "in", num_users=4, hours=0.1, seed=2)
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "a.jsonl").write_bytes(Path(inputs["examples"]).read_bytes())
    (watched / "notes.txt").write_text("not an example file\n")
    proc = run_cli("--input", str(watched / "*"), "--watch", "--watch-interval-seconds", "1",
                   "--watch-duration-seconds", "2", "--output-window-seconds", "5", "--output", str(tmp_path / "out"),
                   "--entity-field", "userId", "--timestamp-field", "timestamp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dead = [json.loads(line) for f in sorted((tmp_path / "out" / "dead-letter").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    assert [(d["stage"], d["payload"]) for d in dead] == [("read", str(watched / "notes.txt"))]
    assert "Cannot tell the format" in dead[0]["reason"]
    updates = [u for us in updates_by_entity(tmp_path / "out").values() for u in us]
    assert sum(u["numExamples"] for u in updates) == len(examples)


# 5. Dead letters of every stage carry the record exactly as read.

def _photon_record(user, ts, uid, label, features=(("f1", "", 1.0),)):
    return {"uid": uid, "label": label, "offset": 0.1, "weight": 1.0, "campaign": "spring",
            "metadataMap": {"userId": user, "eventTime": str(ts), "country": "fr"},
            "features": [{"name": n, "term": t, "value": v} for n, t, v in features]}


@pytest.mark.parametrize("avro", [False, True])
def test_dedup_and_train_dead_letters_replay_as_valid_examples(tmp_path, avro):
    t0 = 1_764_028_800_000
    records = [
        _photon_record("u1", t0 + 1_000, "a", 1.0),
        _photon_record("u1", t0 + 2_000, "b", 0.0),
        _photon_record("u1", t0 + 400_000, "a", 1.0),  # redelivered in a later mini-batch
        _photon_record("u2", t0 + 1_000, "c", 1.0, features=(("f1", "", 1.0), ("boom", "", 1e200))),
        _photon_record("u2", t0 + 1_500, "d", 0.0),
    ]
    if avro:
        path = tmp_path / "in" / "examples.avro"
        path.parent.mkdir()
        schema_records = [{k: v for k, v in r.items() if k != "campaign"} for r in records]
        write_avro(str(path), "TrainingExampleAvro", schema_records)
        expected = schema_records
    else:
        path = tmp_path / "in" / "examples.jsonl"
        write_json_lines(str(path), records)
        expected = records
    assert job_main(["--input", str(path), "--output", str(tmp_path / "out"), "--entity-field", "userId",
                     "--timestamp-field", "eventTime", "--minibatch-seconds", "300"]) == 0
    dead = [json.loads(line) for f in sorted((tmp_path / "out" / "dead-letter").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    by_stage = sorted((d["stage"], d["payload"]["uid"]) for d in dead)
    assert by_stage == [("dedup", "a"), ("train", "c"), ("train", "d")]
    # each payload is the record as read; written back as JSON lines it parses with the same flags
    replay = tmp_path / "replay.jsonl"
    write_json_lines(str(replay), [d["payload"] for d in dead])
    for d in dead:
        assert d["payload"] in expected
    parser = ExampleParser("userId", "eventTime")
    for line in replay.read_bytes().splitlines():
        parsed = parser.parse_json_line(line)
        assert type(parsed).__name__ == "Example", parsed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dead_letters"] == 3 and summary["examples_failed"] == 2 and summary["duplicates"] == 1


# 6. One rule decides which model of an entity is the newest.

def _record(entity, version, means, variances=None, window_end=0):
    return {"modelId": entity, "version": version, "windowEnd": window_end,
            "means": [{"name": n, "term": t, "value": v} for (n, t), v in means.items()],
            "variances": None if variances is None else
            [{"name": n, "term": t, "value": v} for (n, t), v in variances.items()]}


def test_newer_and_the_snapshot_rule_agree_on_ties_whatever_the_order():
    parser = ModelParser(penalty=10.0)
    same_version = [
        _record("e", 3, {("(INTERCEPT)", ""): 0.5, ("a", ""): 1.0}, {("(INTERCEPT)", ""): 0.1, ("a", ""): 0.2}),
        _record("e", 3, {("(INTERCEPT)", ""): 0.5, ("a", ""): -1.0}, {("(INTERCEPT)", ""): 0.1, ("a", ""): 0.2}),
        _record("e", 3, {("(INTERCEPT)", ""): 0.5, ("a", ""): 1.0}, {("(INTERCEPT)", ""): 0.1, ("a", ""): 0.3}),
        _record("e", 3, {("(INTERCEPT)", ""): 0.5}),
    ]
    models = [parser.parse(r) for r in same_version]
    rng = np.random.default_rng(0)
    chosen_models, chosen_records = set(), set()
    for _ in range(20):
        order = rng.permutation(len(models))
        model = models[order[0]]
        for i in order[1:]:
            model = newer(model, models[i])
        records = [initial_model_record(models[i], "sequential_bayesian_logistic") for i in order]
        chosen_models.add(json.dumps(initial_model_record(model, "sequential_bayesian_logistic"), sort_keys=True))
        chosen_records.add(json.dumps(latest_record(records), sort_keys=True))
    assert len(chosen_models) == 1 and chosen_models == chosen_records
    # the primary order is the version, then the window end
    later = parser.parse(_record("e", 3, {("(INTERCEPT)", ""): 0.0}, window_end=60_000))
    assert newer(models[0], later) is later and newer(later, models[0]) is later


def test_two_initial_records_of_one_version_give_one_snapshot_in_either_order(tmp_path):
    examples, inputs = make_inputs(tmp_path / "in", num_users=4, hours=0.1, seed=9)
    twins = [_record("idle", 2, {("(INTERCEPT)", ""): 0.25, ("f", ""): s}, {("(INTERCEPT)", ""): 1.0, ("f", ""): 2.0})
             for s in (1.0, -1.0)]
    active = examples[0]["userId"]
    twins += [_record(active, 5, {("(INTERCEPT)", ""): 0.1, ("f", ""): s}) for s in (0.5, -0.5)]
    outputs = []
    for name, order in (("ab", twins), ("ba", twins[::-1])):
        models = tmp_path / f"models-{name}.jsonl"
        write_json_lines(str(models), order)
        run_job(dict(inputs, models=str(models)), tmp_path / name)
        first_update = updates_by_entity(tmp_path / name)[active][0]
        outputs.append((snapshot(tmp_path / name), first_update["means"], first_update["version"]))
    assert outputs[0] == outputs[1]
    assert outputs[0][2] == 6  # the active entity continued from the version-5 record


# 7. A quiet start: no warning from Beam's imports, no packaging warning, a wheel with the schemas.

def test_a_job_start_prints_no_warnings(tmp_path):
    _, inputs = make_inputs(tmp_path / "in", num_users=3, hours=0.1)
    proc = run_cli(*_job_args(inputs, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING" not in proc.stderr and "apitools" not in proc.stderr, proc.stderr[-2000:]


def test_the_package_requires_what_beams_import_needs_to_stay_quiet():
    from importlib.metadata import requires

    plain = [r for r in requires("lambda-learner-beam") if "extra ==" not in r]
    assert any(r.startswith("google-apitools") for r in plain), plain


def test_a_wheel_builds_without_packaging_warnings_and_ships_the_schemas(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "absent from the `packages` configuration" not in output
    assert "would be ignored" not in output
    wheel = next(tmp_path.glob("lambda_learner_beam-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    schemas = {os.path.basename(n) for n in names if n.startswith("transforms/schemas/") and n.endswith(".avsc")}
    assert schemas == {p.name for p in (ROOT / "transforms" / "schemas").glob("*.avsc")} and len(schemas) == 5
