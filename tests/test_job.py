"""The job end to end: CLI, outputs, batch vs streaming vs portable runner, replays, Dataflow build."""

import json
import os
import subprocess
import sys
from pathlib import Path
from collections import defaultdict

import numpy as np
import pytest
from apache_beam.options.pipeline_options import StandardOptions

from jobutil import make_inputs, read_avro_dir, run_job, snapshot, updates_by_entity
from lambda_core import INTERCEPT
from transforms.examples import ExampleParser
from transforms.models import PHOTON_INTERCEPT, ModelParser
from transforms.formats import write_json_lines
from transforms.update import UpdateConfig, chunks, correction_scores, order_minibatch, train_minibatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("batch")
    examples, inputs = make_inputs(base / "in", bad_lines=[b"not json", b'{"userId": "u1", "label": 1}'])
    run_job(inputs, base / "out")
    return examples, inputs, base / "out"


def test_batch_job_writes_every_output(batch_run):
    examples, _, out = batch_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_read"] == len(examples) + 2
    assert summary["examples"] == len(examples) == summary["examples_trained"]
    assert summary["dead_letters"] == 2
    assert summary["dead_letters_by_reason"] == {"parse/not_json": 1, "parse/timestamp": 1}
    updates = [u for us in updates_by_entity(out).values() for u in us]
    assert len(updates) == summary["updates"] > 0
    assert sum(u["numExamples"] for u in updates) == len(examples)
    dead = [json.loads(line) for f in (out / "dead-letter").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(d["payload"] if isinstance(d["payload"], str) else "obj" for d in dead) == ["not json", "obj"]
    assert all(d["stage"] == "parse" and d["reason"].endswith(".") for d in dead)
    assert (out / "random-effect" / "userId" / "id-info").read_text() == "userId\nfeatures\n"
    report = summary["progressive_validation"]["overall"]
    assert report["examples"] == len(examples)
    # 309 examples in 45 minutes are too few to tell the random effects from the offset (their log
    # losses differ in the third decimal either way); that they win is tested on a larger stream in
    # test_random_effects.py::test_progressive_validation_random_effects_beat_offset_only.
    assert 0 < report["log_loss_with_random_effects"] < 0.7 and 0 < report["log_loss_offset_only"] < 0.7
    assert 0.5 < report["auc_with_random_effects"] < 1 and 0.5 < report["auc_offset_only"] < 1


def test_snapshot_holds_latest_model_of_every_entity_including_untouched_initial_models(batch_run):
    examples, inputs, out = batch_run
    snap = snapshot(out)
    updates = updates_by_entity(out)
    initial_ids = {json.loads(line)["modelId"] for line in open(inputs["models"])}
    active = {e["userId"] for e in examples}
    assert set(snap) == active | initial_ids
    for entity, records in updates.items():
        means, variances = snap[entity]
        last = records[-1]
        assert [r["version"] for r in records] == list(range(1, len(records) + 1))
        assert means == {(m["name"], m["term"]): m["value"] for m in last["means"]}
        assert variances == {(v["name"], v["term"]): v["value"] for v in last["variances"]}
        assert list(means)[0] == PHOTON_INTERCEPT


def replay(examples, initial_models, config):
    """lambda_core applied per entity and mini-batch in plain Python: what the job must equal.

    With the global correction (the default), the global model is trained first, interval by
    interval on every example of the interval (its own offsets), and each example carries its
    score under the global model of the intervals before its own."""
    parser = ExampleParser("userId", "timestamp")
    models = {}
    for record in initial_models:
        m = ModelParser(config.penalty).parse(record)
        models[m.entity_id] = m
    parsed = [parser.parse(record) for record in examples]
    if config.corrects:
        by_interval, glob, corrected = defaultdict(list), None, {}
        for ex in parsed:
            by_interval[config.batch_end(ex.timestamp_ms)].append(ex)
        for end in sorted(by_interval):
            interval = order_minibatch(by_interval[end])
            for ex, score in zip(interval, correction_scores(glob, interval)):
                corrected[ex.uid] = ex._replace(correction=score)
            for chunk in chunks(interval, config.max_minibatch_size):
                glob = train_minibatch(glob, "global", chunk, end, config.global_config).model
        parsed = [corrected[ex.uid] for ex in parsed]
    batches = defaultdict(list)
    for ex in parsed:
        batches[(ex.entity_id, config.batch_end(ex.timestamp_ms))].append(ex)
    for (entity, end) in sorted(batches, key=lambda k: (k[0], k[1])):
        for chunk in chunks(order_minibatch(batches[(entity, end)]), config.max_minibatch_size):
            result = train_minibatch(models.get(entity), entity, chunk, end, config)
            models[entity] = result.model
    return models


def test_job_equals_plain_python_replay_of_lambda_core(batch_run):
    examples, inputs, out = batch_run
    initial = [json.loads(line) for line in open(inputs["models"])]
    expected = replay(examples, initial, UpdateConfig(minibatch_seconds=300, coordinate="userId"))
    snap = snapshot(out)
    assert set(snap) == set(expected)
    for entity, model in expected.items():
        means, variances = snap[entity]
        for i, nt in enumerate(model.feature_names):
            key = PHOTON_INTERCEPT if nt == INTERCEPT else nt
            assert means[key] == pytest.approx(model.means[i], rel=1e-12, abs=1e-15)
            assert variances[key] == pytest.approx(1.0 / model.precisions[i], rel=1e-12)


def test_streaming_and_portable_runner_give_the_same_models_as_batch(batch_run, tmp_path):
    _, inputs, out = batch_run
    expected = snapshot(out)
    run_job(inputs, tmp_path / "streaming", "--streaming")
    assert snapshot(tmp_path / "streaming") == expected
    # a streaming job reports how long after its interval's end each update was made (wall clock)
    latency = json.loads((tmp_path / "streaming" / "summary.json").read_text())["update_latency_ms"]
    assert latency["count"] == json.loads((out / "summary.json").read_text())["updates"] and latency["min"] > 0
    run_job(inputs, tmp_path / "portable", "--runner=PortableRunner", "--job_endpoint=embed",
            "--environment_type=LOOPBACK")
    assert snapshot(tmp_path / "portable") == expected


def test_avro_input_with_ids_in_metadata_map_gives_the_same_models(batch_run, tmp_path):
    examples, inputs, out = batch_run
    _, avro_inputs = make_inputs(tmp_path / "in", avro=True)
    run_job(avro_inputs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(out)


def test_job_matches_lambda_learner_0_1_0_replayed_by_hand(tmp_path):
    from linkedin.learner.ds.feature import Feature
    from linkedin.learner.ds.index_map import IndexMap
    from linkedin.learner.ds.record import TrainingRecord
    from linkedin.learner.ds.representation_utils import (
        index_domain_coeffs_to_nt_domain_coeffs,
        nt_domain_coeffs_to_index_domain_coeffs,
        nt_domain_data_to_index_domain_data,
    )
    from linkedin.learner.prediction.hessian_type import HessianType
    from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
        TrainerSequentialBayesianLogisticLossWithL2,
    )

    examples, inputs = make_inputs(tmp_path / "in", num_users=12, hours=0.5, seed=9)
    # lambda-learner's rule: delta = 0.8 at every update, whatever the time since the last one.
    # lambda-learner's own settings, and no global correction: lambda-learner has none.
    run_job(inputs, tmp_path / "out", "--forgetting-factor", "0.8", "--forgetting-clock", "update",
            "--forgetting-target", "zero", "--penalty", "10", "--global-correction", "none", with_models=False)
    batches = defaultdict(list)
    for e in examples:
        batches[(e["userId"], e["timestamp"] // 300_000)].append(e)
    state = {}
    for entity, interval in sorted(batches):
        rows = sorted(batches[(entity, interval)], key=lambda e: (e["timestamp"], e["uid"]))
        records = [TrainingRecord(e["label"], e["weight"], e["offset"],
                                  [Feature(f["name"], f["term"], f["value"]) for f in e["features"]]) for e in rows]
        means, variances = state.get(entity, ({("intercept", "intercept"): 0.0}, {("intercept", "intercept"): 0.1}))
        mean_f = [Feature(n, t, v) for (n, t), v in means.items()]
        var_f = [Feature(n, t, v) for (n, t), v in variances.items()]
        imap, _ = IndexMap.from_records_means_and_variances(records, mean_f, var_f)
        model, _, _ = TrainerSequentialBayesianLogisticLossWithL2(
            training_data=nt_domain_data_to_index_domain_data(records, imap),
            initial_model=nt_domain_coeffs_to_index_domain_coeffs(mean_f, var_f, imap, 10.0),
            hessian_type=HessianType.DIAGONAL, penalty=10.0, delta=0.8).train()
        state[entity] = index_domain_coeffs_to_nt_domain_coeffs(model, imap)
    snap = snapshot(tmp_path / "out")
    assert set(snap) == set(state)
    for entity, (means, variances) in state.items():
        ours_means, ours_vars = snap[entity]
        for nt, value in means.items():
            key = PHOTON_INTERCEPT if nt == ("intercept", "intercept") else nt
            # The reference stops L-BFGS at factr=1e7; we solve to machine precision.
            assert ours_means[key] == pytest.approx(value, abs=2e-4)
            assert ours_vars[key] == pytest.approx(variances[nt], rel=1e-3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--bogus-flag", "1"], "unknown flag"),
    (["--input", "/nonexistent/*.jsonl"], "matches no files"),
    (["--penalty", "-1"], "--penalty must be"),
    (["--forgetting-factor", "1.5"], "--forgetting-factor must be in [0, 1]"),
    (["--forgetting-half-life-seconds", "0"], "--forgetting-half-life-seconds must be > 0"),
    (["--forgetting-factor", "1", "--forgetting-half-life-seconds", "60"], "not both"),
    (["--forgetting-target", "one"], "--forgetting-target must be one of zero, initial, variance"),
    (["--forgetting-clock", "wall"], "--forgetting-clock must be one of event-time, update"),
    (["--trainer", "logistic"], "use 'sequential_bayesian_logistic', which learns incrementally"),
    (["--trainer", "forest"], "--trainer must be one of"),
])
def test_bad_command_lines_exit_2_with_one_line(args, message, batch_run, tmp_path):
    _, inputs, _ = batch_run
    base = {"--input": inputs["examples"], "--output": str(tmp_path / "o"), "--entity-field": "userId",
            "--timestamp-field": "timestamp"}
    for i in range(0, len(args) - 1, 2):
        if args[i] in base:
            base[args[i]] = args[i + 1]
    argv = [x for kv in base.items() for x in kv] + [a for i, a in enumerate(args)
                                                      if not (a in base or (i > 0 and args[i - 1] in base))]
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_required_flag_exits_2():
    proc = run_cli("--input", "x.jsonl")
    assert proc.returncode == 2 and "--output is required" in proc.stderr


def test_compact_builds_the_snapshot_from_the_update_stream(batch_run, tmp_path):
    _, inputs, out = batch_run
    from pipeline.compact import main as compact_main

    assert compact_main(["--updates", str(out / "updates" / "*.avro"), "--initial-models", inputs["models"],
                         "--output", str(tmp_path), "--coordinate", "userId", "--entity-field", "userId"]) == 0
    assert snapshot(tmp_path) == snapshot(out)


def test_dataflow_translation_builds(batch_run, tmp_path):
    _, inputs, _ = batch_run
    proc = run_cli("--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
                   "--timestamp-field", "timestamp", "--runner=DataflowRunner", "--dry_run=True", "--no_auth",
                   "--project", "lambda-learner-test", "--region", "us-central1",
                   "--temp_location", "gs://lambda-learner-test/t", "--streaming")
    # (A bucket or project id too short to be valid, like gs://b or p, makes Beam contact GCS to
    # create a default bucket, which needs the network; valid-looking ids keep the dry run offline.)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dry run" in proc.stdout


def test_dataflow_translation_builds_with_a_pubsub_source(tmp_path):
    proc = run_cli("--input-subscription", "projects/lambda-learner-test/subscriptions/events", "--output",
                   str(tmp_path), "--entity-field", "userId", "--timestamp-field", "timestamp",
                   "--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--project", "lambda-learner-test",
                   "--region", "us-central1", "--temp_location", "gs://lambda-learner-test/t")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dry run" in proc.stdout


def test_watch_picks_up_files_that_arrive_while_the_job_runs(tmp_path):
    import time

    examples, inputs = make_inputs(tmp_path / "first", num_users=10, hours=0.25, seed=21)
    watched = tmp_path / "watched"
    watched.mkdir()
    os.rename(inputs["examples"], watched / "a.jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--input", str(watched / "*.jsonl"), "--output", str(tmp_path / "out"),
         "--entity-field", "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", "300", "--watch",
         "--watch-interval-seconds", "2", "--watch-duration-seconds", "25", "--output-window-seconds", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The file appears right after launch: after the pipeline was built, before its first poll.
    time.sleep(0.5)
    later = [dict(e, userId="late-" + e["userId"], uid="late-" + e["uid"]) for e in examples[:30]]
    (watched / "b.jsonl.tmp").write_text("".join(json.dumps(e) + "\n" for e in later))
    os.rename(watched / "b.jsonl.tmp", watched / "b.jsonl")  # appear atomically, as a producer should
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    updates = [u for us in updates_by_entity(tmp_path / "out").values() for u in us]
    assert sum(u["numExamples"] for u in updates) == len(examples) + len(later)
    assert {u["modelId"] for u in updates} >= {e["userId"] for e in later}


def start_local_watch(tmp_path, *flags):
    """``python -m pipeline --watch --streaming`` on the local runner, following ``tmp_path/watched``
    (created) and writing to ``tmp_path/out``, its stdout and stderr to files (a pipe left unread
    could fill and stall it): (process, watched directory, a function returning its stderr)."""
    watched = tmp_path / "watched"
    watched.mkdir()
    out_log, err_log = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--input", str(watched / "*.jsonl"), "--output", str(tmp_path / "out"),
             "--entity-field", "userId", "--timestamp-field", "timestamp", "--watch", "--watch-interval-seconds", "1",
             "--streaming", *flags],
            cwd=ROOT, stdout=out, stderr=err, text=True)
    return proc, watched, err_log.read_text


def drop_live_examples(watched, name, users, first=0, bad_lines=()):
    """A file of one live example (event time: now) per entry of ``users``, then ``bad_lines``,
    appearing atomically; the ``first + i``-th example is labelled ``(first + i) % 2``."""
    import time

    now_ms = int(time.time() * 1000)
    lines = [json.dumps({"uid": f"{name}-{i}", "userId": user, "timestamp": now_ms, "label": (first + i) % 2,
                         "offset": 0.0, "features": [{"name": "f", "term": f"{name}{i}", "value": 1.0}]})
             for i, user in enumerate(users)]
    (watched / f"{name}.jsonl.tmp").write_text("\n".join(lines + list(bad_lines)) + "\n")
    os.rename(watched / f"{name}.jsonl.tmp", watched / f"{name}.jsonl")


def test_a_watch_on_the_local_runner_keeps_a_live_mini_batch_open_until_it_ends(tmp_path):
    """Beam's local runner fires the flush timer as soon as an example arrives; the job holds the
    mini-batch until the clock passes its end (here: until the watch stops), so three live examples
    arriving in three polls are one update, not three (the second and third trained as late)."""
    import time

    hour_ms = 3_600_000
    if hour_ms - time.time() * 1000 % hour_ms < 90_000:  # all three examples must fall in one hour
        time.sleep(hour_ms / 1000 - time.time() % (hour_ms / 1000) + 1)
    proc, watched, stderr = start_local_watch(tmp_path, "--minibatch-seconds", "3600", "--watch-duration-seconds",
                                              "30", "--output-window-seconds", "5")
    time.sleep(8)  # the job's start-up: the examples should arrive in separate polls
    for i in range(3):
        drop_live_examples(watched, str(i), ["u1"], first=i)
        time.sleep(3)
    proc.wait(timeout=240)
    assert proc.returncode == 0, stderr()[-3000:]
    assert "closes each mini-batch when the clock passes its end" in stderr()
    updates = updates_by_entity(tmp_path / "out")["u1"]
    assert [u["numExamples"] for u in updates] == [3]


@pytest.mark.parametrize("with_models", [False, True])
def test_a_watch_with_the_global_correction_writes_updates_while_it_runs(tmp_path, with_models):
    """The global correction is on by default, and its stage and the entities' are fused on the local
    runner: an update of a mini-batch that closed is in a finalised file before the watch stops (a
    fusion break there held every update back until the end). With initial models too, which reach
    the stages as a side input there (a Flatten with them held every update back as well), and are
    the prior of the first update (its version follows theirs): an entity's and the global model.
    Dead letters too, which come from several steps and are written step by step there."""
    import time

    flags = []
    if with_models:
        models = tmp_path / "models.jsonl"
        write_json_lines(str(models), [{
            "modelId": "u0", "modelClass": "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel",
            "means": [{"name": "(INTERCEPT)", "term": "", "value": 0.5}],
            "variances": [{"name": "(INTERCEPT)", "term": "", "value": 0.1}], "lossFunction": "", "version": 7}])
        global_model = tmp_path / "global.jsonl"
        write_json_lines(str(global_model), [{
            "modelId": "global", "means": [{"name": "f", "term": "live0", "value": 0.2}],
            "variances": [{"name": "f", "term": "live0", "value": 0.01}], "version": 4}])
        flags = ["--initial-models", str(models), "--initial-global-model", str(global_model)]
    proc, watched, stderr = start_local_watch(tmp_path, "--minibatch-seconds", "2", "--watch-duration-seconds",
                                              "120", "--output-window-seconds", "1", *flags)
    out = tmp_path / "out"
    written = [(out / "updates", "updates-"), (out / "global-updates", "global-updates-"),
               (out / "dead-letter", "dead-letter-")]
    seen_while_running = False
    try:
        time.sleep(8)  # the job's start-up
        drop_live_examples(watched, "live", ["u0", "u1", "u0", "u1"], bad_lines=["not json"])
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if all(d.is_dir() and any(n.startswith(prefix) for n in os.listdir(d)) for d, prefix in written):
                seen_while_running = proc.poll() is None
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert seen_while_running, stderr()[-3000:]
    updates = [u for us in updates_by_entity(tmp_path / "out").values() for u in us]
    assert sorted(u["modelId"] for u in updates) == ["u0", "u1"]
    assert sum(u["numExamples"] for u in updates) == 4
    assert {u["modelId"]: u["version"] for u in updates} == {"u0": 8 if with_models else 1, "u1": 1}
    global_updates = read_avro_dir(str(out / "global-updates" / "*.avro"))
    assert [g["version"] for g in global_updates] == [5 if with_models else 1]
    dead = [json.loads(line) for f in sorted((out / "dead-letter").glob("dead-letter-*.jsonl"))
            for line in f.read_text().splitlines()]
    assert [d["payload"] for d in dead] == ["not json"]


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_replaying_the_same_file_twice_gives_the_same_models_as_once(batch_run, tmp_path, mode):
    """At-least-once sources redeliver: a second copy of every example is a 'duplicate' dead letter."""
    examples, inputs, out = batch_run
    replayed = tmp_path / "in"
    replayed.mkdir()
    for name in ("first.jsonl", "again.jsonl"):
        with open(inputs["examples"], "rb") as src, open(replayed / name, "wb") as dst:
            dst.write(src.read())
    run_job(dict(inputs, examples=str(replayed / "*.jsonl")), tmp_path / "out",
            *(["--streaming"] if mode == "streaming" else []))
    assert snapshot(tmp_path / "out") == snapshot(out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    n, bad = len(examples), 2  # the fixture's input has two bad lines, now read twice
    assert summary["records_read"] == 2 * (n + bad)
    assert (summary["examples"], summary["examples_trained"], summary["duplicates"]) == (2 * n, n, n)
    assert summary["dead_letters_by_reason"] == {"dedup/duplicate": n, "parse/not_json": 2, "parse/timestamp": 2}
    dead = [json.loads(line) for f in (tmp_path / "out" / "dead-letter").glob("*.jsonl")
            for line in f.read_text().splitlines()]
    duplicates = sorted(d["payload"]["uid"] for d in dead if d["reason"] == "duplicate")
    assert duplicates == sorted(e["uid"] for e in examples)


def test_restart_from_a_snapshot_in_two_halves_gives_the_same_models_as_one_run(tmp_path):
    examples, inputs = make_inputs(tmp_path / "in", num_users=30, hours=1.0, seed=9)
    minibatch_ms = 300_000
    # cut at a mini-batch boundary; some users are idle in the second half
    cut = (sorted(e["timestamp"] for e in examples)[len(examples) // 2] // minibatch_ms) * minibatch_ms
    users = sorted({e["userId"] for e in examples})
    idle = set(users[::4])
    first = [e for e in examples if e["timestamp"] < cut]
    second = [e for e in examples if e["timestamp"] >= cut and e["userId"] not in idle]
    assert first and second and idle & {e["userId"] for e in first}
    for name, part in (("first", first), ("second", second), ("whole", first + second)):
        write_json_lines(str(tmp_path / "in" / f"{name}.jsonl"), part)

    # The entities' models alone (tests/test_global_correction.py restarts the global model too).
    alone = ("--global-correction", "none")
    run_job(dict(inputs, examples=str(tmp_path / "in" / "whole.jsonl")), tmp_path / "one", *alone)
    run_job(dict(inputs, examples=str(tmp_path / "in" / "first.jsonl")), tmp_path / "half1", *alone)
    seeded = dict(inputs, examples=str(tmp_path / "in" / "second.jsonl"),
                  models=str(tmp_path / "half1" / "random-effect" / "userId"))
    run_job(seeded, tmp_path / "half2", *alone)

    one, half1, half2 = snapshot(tmp_path / "one"), snapshot(tmp_path / "half1"), snapshot(tmp_path / "half2")
    assert set(half2) == set(one)
    for entity in idle & set(half1):
        assert half2[entity] == half1[entity]  # untouched in the second half, still in its snapshot
    for entity, (means, variances) in one.items():
        got_means, got_variances = half2[entity]
        assert got_means.keys() == means.keys()
        # the snapshot stores variances, so the restarted prior's precision is 1/(1/p): last-bit differences
        for key, value in means.items():
            assert got_means[key] == pytest.approx(value, rel=1e-12, abs=1e-14)
            assert got_variances[key] == pytest.approx(variances[key], rel=1e-12)


class _Trap:
    """Unpickling this creates a file: proof that something unpickled input data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_input_and_model_files_are_never_unpickled_and_never_name_paths(tmp_path):
    import pickle

    trap = tmp_path / "unpickled"
    examples, inputs = make_inputs(tmp_path / "in", num_users=5, hours=0.25, seed=3)
    payload = pickle.dumps(_Trap(str(trap)))
    escape = "../../escaped"
    with open(inputs["examples"], "ab") as f:
        f.write(payload.replace(b"\n", b" ") + b"\n")
        f.write(json.dumps({"uid": "p1", "userId": escape, "timestamp": examples[0]["timestamp"], "label": 1,
                            "features": [{"name": "/etc/passwd", "term": "../x", "value": 1.0}]}).encode() + b"\n")
    with open(inputs["models"], "ab") as f:
        f.write(payload.replace(b"\n", b" ") + b"\n")
        f.write(json.dumps({"modelId": "../../model", "means": [{"name": "(INTERCEPT)", "term": "", "value": 0.5}]})
                .encode() + b"\n")
    before = {p for p in tmp_path.parent.rglob("*")}
    run_job(inputs, tmp_path / "out")
    assert not trap.exists()
    created = {p for p in tmp_path.parent.rglob("*")} - before
    assert created and all(tmp_path / "out" in p.parents or p == tmp_path / "out" for p in created)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["examples"] == len(examples) + 1  # the odd names are just names
    assert summary["dead_letters_by_reason"] == {"model/model": 1, "parse/not_json": 1}
    assert escape in snapshot(tmp_path / "out") and "../../model" in snapshot(tmp_path / "out")


def test_our_packages_do_not_import_deserializers_that_run_code():
    import ast

    banned = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "yaml", "jsonpickle"}
    for package in ("lambda_core", "transforms", "pipeline"):
        for path in sorted((Path(ROOT) / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module.split(".")[0]]
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                    names = [node.func.id]
                assert not set(names) & (banned | {"eval", "exec"}), f"{path}:{node.lineno} uses {names}"


def test_the_default_local_runner_is_explicit_and_never_prism(batch_run, tmp_path, monkeypatch):
    """Beam's DirectRunner tries Prism first (a binary it downloads at run time) and falls back when it
    cannot: the job names Beam's Python runner itself, so what runs does not depend on the network."""
    from apache_beam.runners.portability import prism_runner

    from pipeline.job import choose_local_runner
    from pipeline.options import parse_options

    tried = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: tried.append(a))
    _, inputs, _ = batch_run
    run_job(inputs, tmp_path / "out", "--streaming")
    assert not tried
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runner"] == "FnApiRunner" and summary["streaming"] is True
    base = ["--output", "o", "--entity-field", "u", "--timestamp-field", "t"]
    for argv, runner in ((["--input", "x.jsonl"], "FnApiRunner"),
                         (["--input", "x.jsonl", "--runner", "DirectRunner"], "FnApiRunner"),
                         (["--input-subscription", "projects/p/subscriptions/s"], "BundleBasedDirectRunner"),
                         (["--input", "x.jsonl", "--runner", "PrismRunner"], "PrismRunner")):
        options = parse_options(argv + base)
        choose_local_runner(options)
        assert options.view_as(StandardOptions).runner == runner, argv
