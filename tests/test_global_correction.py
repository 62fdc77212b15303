"""The global correction coordinate (``--global-correction independent``): one global model learned
interval by interval from every example, whose score raises each example's offset before its
entity's model sees it. The step itself (``update.correct_due``), the example encoding that carries
the correction, and the Beam job against ``pipeline.replay``: batch and streaming, late examples,
several processes and a restart from the snapshot included."""

import json
import random
from pathlib import Path

import pytest

from jobutil import make_inputs, read_avro_dir, run_job, snapshot
from pipeline.__main__ import main as job_main
from pipeline.replay import main as replay_main
from test_random_effects import T0, config, counter, per_bundle_metrics, rec, run  # noqa: F401 (fixture)
from test_replay import COUNTS, _dead_letters, _updates, messy_inputs, watermarked_stream  # noqa: F401 (fixture)
from transforms.examples import DeadLetter, ExampleParser
from transforms.replay import EntityReplay, GlobalReplay
from transforms.state import EXAMPLE_VERSION, decode_example, encode_example
from transforms.update import (
    GLOBAL_COORDINATE,
    GLOBAL_MODEL_ID,
    correct_due,
    correction_scores,
    train_due,
    train_minibatch,
)

GLOBAL = ["--global-correction", "independent"]


def _examples(n, seed, start=T0, span_ms=180_000):
    rng = random.Random(seed)
    parser = ExampleParser("userId", "timestamp")
    out = []
    for i in range(n):
        r = rec(f"e{rng.randrange(5)}", start + rng.randrange(span_ms), f"u{seed}-{i}", float(rng.random() < 0.4),
                offset=round(rng.uniform(-1, 1), 3), features=((f"f{rng.randrange(3)}", "", 1.0), ("x", "", 0.5)))
        out.append(parser.parse(r))
    return out


def test_each_interval_is_scored_by_the_global_model_of_the_intervals_before_it_then_trained():
    cfg = config(minibatch_seconds=60, global_correction="independent")
    first, second = _examples(30, 1, T0, 60_000), _examples(20, 2, T0 + 60_000, 60_000)
    flushed = correct_due(None, {}, {T0 + 120_000: second, T0 + 60_000: first}, cfg)
    # the first interval had no global model yet; the second is scored by the model trained on the first
    after_first = train_minibatch(None, GLOBAL_MODEL_ID, sorted(first, key=lambda e: (e.timestamp_ms, e.uid)),
                                  T0 + 60_000, cfg.global_config).model
    assert [e.correction for e in flushed.examples[:30]] == [0.0] * 30
    ordered_second = sorted(second, key=lambda e: (e.timestamp_ms, e.uid))
    assert [e.correction for e in flushed.examples[30:]] == correction_scores(after_first, ordered_second)
    assert any(e.correction != 0.0 for e in flushed.examples[30:])
    # it learns from the examples' own offsets: the same as the global model trained alone, in order
    alone = train_due(after_first, {}, GLOBAL_MODEL_ID, {T0 + 120_000: second}, cfg.global_config).model
    assert flushed.model.means.tolist() == alone.means.tolist()
    assert flushed.model.precisions.tolist() == alone.precisions.tolist()
    assert [u["coordinate"] for u in flushed.updates] == [GLOBAL_COORDINATE] * 2
    assert [u["version"] for u in flushed.updates] == [1, 2] and flushed.failed_updates == 0


def test_an_entity_trains_on_offset_plus_correction_and_validates_against_the_offset_alone():
    cfg = config(minibatch_seconds=60)
    batch = _examples(8, 3, T0, 60_000)
    corrected = [e._replace(correction=0.25 * (i - 3)) for i, e in enumerate(batch)]
    raised = [e._replace(offset=e.offset + e.correction, correction=0.0) for e in corrected]
    got = train_minibatch(None, "e0", corrected, T0 + 60_000, cfg)
    want = train_minibatch(None, "e0", raised, T0 + 60_000, cfg)
    assert got.model.means.tolist() == want.model.means.tolist()
    assert got.model_scores.tolist() == want.model_scores.tolist()
    assert got.offset_scores.tolist() == [e.offset for e in batch]  # the baseline stays the offset as read


def test_the_correction_travels_in_the_example_encoding_and_uncorrected_bytes_are_unchanged():
    ex = _examples(1, 4)[0]._replace(source=b'{"a": 1}')
    plain = encode_example(ex)
    assert plain[0] == EXAMPLE_VERSION and decode_example(plain) == ex
    corrected = ex._replace(correction=-0.125)
    data = encode_example(corrected)
    assert data[0] == EXAMPLE_VERSION + 1 and len(data) == len(plain) + 8
    assert decode_example(data) == corrected


def test_the_batch_job_with_a_global_correction_equals_the_replay_in_any_number_of_processes(messy_inputs, tmp_path):
    inputs, _ = messy_inputs
    job_out = tmp_path / "job"
    run_job(inputs, job_out, *GLOBAL)
    theirs = json.loads((job_out / "summary.json").read_text())
    assert theirs["global_updates"] > 0 and theirs["global_correction"] == "independent"
    # the default ("auto", with the logistic trainer) is the same job
    run_job(inputs, tmp_path / "default")
    assert snapshot(tmp_path / "default") == snapshot(job_out)
    global_job = read_avro_dir(str(job_out / "fixed-effect" / GLOBAL_COORDINATE / "coefficients" / "*.avro"))
    assert len(global_job) == 1 and global_job[0]["version"] == theirs["global_updates"]
    # the entities learned something else than without the correction
    plain = tmp_path / "plain"
    run_job(inputs, plain, "--global-correction", "none")
    assert snapshot(plain) != snapshot(job_out)
    assert theirs["progressive_validation"]["overall"]["log_loss_offset_only"] == json.loads(
        (plain / "summary.json").read_text())["progressive_validation"]["overall"]["log_loss_offset_only"]
    for lateness, processes in (("-1", "1"), ("3600", "3")):
        out = tmp_path / f"replay-{lateness}-{processes}"
        assert replay_main(["--input", inputs["examples"], "--output", str(out), "--entity-field", "userId",
                            "--timestamp-field", "timestamp", "--minibatch-seconds", "300", "--initial-models",
                            inputs["models"], "--lateness-seconds", lateness, "--processes", processes, *GLOBAL]) == 0
        assert snapshot(out) == snapshot(job_out)
        assert _updates(out) == _updates(job_out)
        assert _dead_letters(out) == _dead_letters(job_out)
        ours = json.loads((out / "summary.json").read_text())
        for key in COUNTS + ("global_updates", "global_failed_updates", "global_late_examples"):
            assert ours[key] == theirs[key], key
        replayed = read_avro_dir(str(out / "fixed-effect" / GLOBAL_COORDINATE / "coefficients" / "*.avro"))
        assert replayed == global_job
        assert sorted(read_avro_dir(str(out / "global-updates" / "*.avro")), key=lambda r: r["version"]) == sorted(
            read_avro_dir(str(job_out / "global-updates" / "*.avro")), key=lambda r: r["version"])


def test_the_two_stages_timers_have_different_names():
    """Beam's local runner files timers by name alone: one name for both and no entity trained."""
    from transforms.random_effects import GlobalCorrectionFn, UpdateRandomEffectsFn

    assert UpdateRandomEffectsFn.FLUSH.name != GlobalCorrectionFn.FLUSH.name


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_without_initial_models_every_example_still_reaches_its_entity(tmp_path, mode):
    """Without initial models nothing comes between the two stages (the initial models' Flatten does,
    in the other tests), so the local runner fuses them: with one timer name for both it handed the
    entities' timers to the global stage's callback, and no entity trained."""
    examples, inputs = make_inputs(tmp_path / "in", num_users=15, hours=0.5, seed=4)
    run_job(inputs, tmp_path / "job", *GLOBAL, *(["--streaming"] if mode == "streaming" else []), with_models=False)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["examples_trained"] == len(examples) and summary["global_updates"] > 0
    assert replay_main(["--input", inputs["examples"], "--output", str(tmp_path / "replay"), "--entity-field",
                        "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", "300", *GLOBAL]) == 0
    assert snapshot(tmp_path / "replay") == snapshot(tmp_path / "job")


def test_a_streaming_job_with_a_global_correction_equals_the_replay_late_examples_included(per_bundle_metrics):
    cfg = config(minibatch_seconds=60, global_correction="independent")
    rng = random.Random(8)
    lateness_ms = 90_000
    records = []
    for i in range(160):
        ts = T0 + 3 + 10 * rng.randrange(0, 60_000)
        records.append(rec(f"e{rng.randrange(6)}", ts, f"uid-{i}", float(rng.random() < 0.4),
                           offset=round(rng.uniform(-1, 1), 3), features=((f"f{rng.randrange(4)}", "", 1.0),)))
    records.sort(key=lambda r: r["timestamp"])
    for _ in range(12):  # some records move far back in the stream: late, at both stages
        r = records.pop(rng.randrange(20, 60))
        records.insert(rng.randrange(100, 150), r)
    records.insert(120, dict(records[30]))  # a duplicate
    events = watermarked_stream(records, lateness_ms)
    outputs, result = run([], cfg, streaming_events=events)

    glob, state = GlobalReplay(cfg, lateness_ms), EntityReplay(cfg, lateness_ms)
    parser = ExampleParser("userId", "timestamp")
    flushes, global_updates = [], []

    def passed_on(corrected):
        if corrected is not None:
            global_updates.extend(corrected.updates)
            for ex in corrected.examples:
                state.buffer_example(ex)

    for r in records:
        parsed = parser.parse(r)
        assert not isinstance(parsed, DeadLetter)
        glob.add_example(parsed)
        passed_on(glob.advance(parsed.timestamp_ms))
        flushes.extend(state.advance(parsed.timestamp_ms))
    passed_on(glob.finish())
    flushes.extend(state.finish())

    def key(u):
        return u["modelId"], u["version"], u["windowEnd"], u["numExamples"], json.dumps(u["means"]), json.dumps(
            u["variances"])

    assert sorted(map(key, outputs["updates"])) == sorted(key(u) for _, f in flushes for u in f.updates)
    assert sorted(map(key, outputs["global_updates"])) == sorted(map(key, global_updates))
    assert glob.late_examples > 0 and counter(result, "global_late_examples") == glob.late_examples
    assert state.late_examples > 0 and counter(result, "late_examples") == state.late_examples
    assert counter(result, "duplicates") == 1


def test_a_restart_from_the_snapshot_continues_the_global_model(tmp_path):
    """Two halves, the second started from the first's snapshot (entities and global model alike),
    give the models of one run (to the last bits the snapshot's variances round)."""
    examples, inputs = make_inputs(tmp_path / "in", num_users=20, hours=1.0, seed=9)
    cut = (sorted(e["timestamp"] for e in examples)[len(examples) // 2] // 300_000) * 300_000
    for name, part in (("first", [e for e in examples if e["timestamp"] < cut]),
                       ("second", [e for e in examples if e["timestamp"] >= cut]), ("whole", examples)):
        with open(tmp_path / "in" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in part)
    run_job(dict(inputs, examples=str(tmp_path / "in" / "whole.jsonl")), tmp_path / "one", *GLOBAL)
    run_job(dict(inputs, examples=str(tmp_path / "in" / "first.jsonl")), tmp_path / "half1", *GLOBAL)
    run_job(dict(inputs, examples=str(tmp_path / "in" / "second.jsonl"),
                 models=str(tmp_path / "half1" / "random-effect" / "userId")), tmp_path / "half2", *GLOBAL,
            "--initial-global-model", str(tmp_path / "half1" / "fixed-effect" / GLOBAL_COORDINATE))
    assert json.loads((tmp_path / "half2" / "summary.json").read_text())["global_initial_models"] == 1

    def global_model(out):
        (record,) = read_avro_dir(str(Path(out) / "fixed-effect" / GLOBAL_COORDINATE / "coefficients" / "*.avro"))
        return record

    one, two = global_model(tmp_path / "one"), global_model(tmp_path / "half2")
    assert two["version"] == one["version"] and two["windowEnd"] == one["windowEnd"]
    for a, b in zip(one["means"] + one["variances"], two["means"] + two["variances"]):
        assert (a["name"], a["term"]) == (b["name"], b["term"])
        assert b["value"] == pytest.approx(a["value"], rel=1e-9, abs=1e-12)
    whole, halves = snapshot(tmp_path / "one"), snapshot(tmp_path / "half2")
    assert whole.keys() == halves.keys()
    for entity, (means, _) in whole.items():
        for k, v in means.items():
            assert halves[entity][0][k] == pytest.approx(v, rel=1e-9, abs=1e-12)


def test_the_global_model_remembers_a_uid_per_entity():
    """Two entities may use the same uid: both examples train the global model; a redelivery does not."""
    cfg = config(minibatch_seconds=60, global_correction="independent")
    a, b = _examples(2, 6, T0, 60_000)
    a, b = a._replace(entity_id="a", uid="1"), b._replace(entity_id="b", uid="1")
    once = correct_due(None, {}, {T0 + 60_000: [a, b]}, cfg)
    assert once.updates[0]["numExamples"] == 2 and set(once.recent_uids) == {"a\x1f1", "b\x1f1"}
    again = correct_due(once.model, once.recent_uids, {T0 + 120_000: [a._replace(timestamp_ms=T0 + 60_000)]}, cfg)
    assert again.updates == [] and [e.uid for e in again.examples] == ["1"]  # passed on, uid as it was


def test_an_initial_global_model_of_any_id_becomes_the_global_model_in_job_and_replay(messy_inputs, tmp_path,
                                                                                       capsys):
    """A file of several models (here the entities' initial models): the newest is the start, named
    "global", in the job and the replay alike; and a restart that forgets the global model gets a note."""
    inputs, _ = messy_inputs
    run_job(inputs, tmp_path / "job", "--initial-global-model", inputs["models"])
    assert replay_main(["--input", inputs["examples"], "--output", str(tmp_path / "replay"), "--entity-field",
                        "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", "300",
                        "--initial-models", inputs["models"], "--initial-global-model", inputs["models"]]) == 0
    job, replayed = (read_avro_dir(str(tmp_path / out / "fixed-effect" / GLOBAL_COORDINATE / "coefficients" / "*"))
                     for out in ("job", "replay"))
    assert job == replayed and [r["modelId"] for r in job] == [GLOBAL_MODEL_ID]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    valid = sum(1 for line in open(inputs["models"]) if "NaN" not in line)  # one record is invalid
    assert summary["global_initial_models"] == valid > 1
    updates = read_avro_dir(str(tmp_path / "job" / "global-updates" / "*.avro"))
    assert {r["modelId"] for r in updates} == {GLOBAL_MODEL_ID}
    capsys.readouterr()
    run_job(dict(inputs, models=str(tmp_path / "job" / "random-effect" / "userId")), tmp_path / "again")
    assert "pass --initial-global-model" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--global-correction", "both"], "--global-correction must be one of auto, none, independent"),
    (["--global-correction", "none", "--initial-global-model", "x"],
     "--initial-global-model needs the global correction (--global-correction independent)."),
    (["--trainer", "sequential_bayesian_linear", "--initial-global-model", "x"],
     "--initial-global-model needs the global correction"),
])
def test_global_correction_usage_errors_are_one_line(messy_inputs, tmp_path, capsys, args, message):
    inputs, _ = messy_inputs
    code = job_main(["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
                     "--timestamp-field", "timestamp", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_batch_baseline_refuses_a_global_correction(messy_inputs, tmp_path, capsys):
    inputs, _ = messy_inputs
    code = replay_main(["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
                        "--timestamp-field", "timestamp", "--batch-baseline-hours", "1", *GLOBAL])
    assert code == 2 and "add --global-correction none" in capsys.readouterr().err
