"""``python -m pipeline.replay`` against the Beam job: the same models bit for bit, batch and streaming
alike (late examples, duplicates, initial models and a failed update included), the same outputs."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from jobutil import make_inputs, read_avro_dir, run_job, snapshot
from pipeline.replay import main as replay_main
from test_random_effects import T0, config, counter, per_bundle_metrics, rec, run  # noqa: F401 (fixture)
from transforms.examples import DeadLetter, ExampleParser
from transforms.models import ModelParser
from transforms.replay import EntityReplay


def _updates(output):
    """entity -> [(version, windowEnd, numExamples, means, variances)] from an output's update files."""
    by_entity = {}
    for r in read_avro_dir(str(Path(output) / "updates" / "*.avro")):
        by_entity.setdefault(r["modelId"], []).append(
            (r["version"], r["windowEnd"], r["numExamples"], [(m["name"], m["term"], m["value"]) for m in r["means"]],
             [(v["name"], v["term"], v["value"]) for v in r["variances"]]))
    return {e: sorted(us) for e, us in by_entity.items()}


def _dead_letters(output):
    return Counter(json.dumps(json.loads(line), sort_keys=True)
                   for f in sorted((Path(output) / "dead-letter").glob("*.jsonl"))
                   for line in f.read_text().splitlines())


COUNTS = ("records_read", "examples", "examples_trained", "late_examples", "duplicates", "examples_failed",
          "updates", "failed_updates", "initial_models", "cold_start_entities", "dead_letters",
          "dead_letters_by_reason", "minibatch_size")


@pytest.fixture(scope="module")
def messy_inputs(tmp_path_factory):
    """A stream read twice (every uid redelivered), bad lines, initial models (one invalid), an update that fails."""
    base = tmp_path_factory.mktemp("replay")
    examples, inputs = make_inputs(base / "in", num_users=25, hours=0.75, seed=12,
                                   bad_lines=[b"not json", b'{"userId": "u1", "label": 1}'])
    directory = base / "in" / "events"
    directory.mkdir()
    text = Path(inputs["examples"]).read_bytes()
    (directory / "a.jsonl").write_bytes(text)
    boom = dict(examples[5], uid="boom", features=examples[5]["features"] + [{"name": "boom", "term": "", "value": 1e200}])
    (directory / "b.jsonl").write_bytes(text + (json.dumps(boom) + "\n").encode())
    with open(inputs["models"], "a") as f:
        f.write(json.dumps({"modelId": "bad", "means": [{"name": "x", "term": "", "value": float("nan")}]}) + "\n")
    return dict(inputs, examples=str(directory / "*.jsonl")), base


@pytest.mark.parametrize("lateness, processes", [("-1", "1"), ("3600", "1"), ("3600", "3"), ("-1", "2")])
def test_replay_equals_the_batch_job(messy_inputs, tmp_path, lateness, processes):
    """In one process or split across several (each shard's own entities, every shard's watermark)."""
    inputs, base = messy_inputs
    job_out = base / "job"
    if not job_out.exists():
        run_job(inputs, job_out)
    args = ["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--minibatch-seconds", "300", "--initial-models", inputs["models"],
            "--lateness-seconds", lateness, "--processes", processes]
    assert replay_main(args) == 0
    assert len(list((tmp_path / "updates").glob("*.avro"))) == int(processes)
    assert snapshot(tmp_path) == snapshot(job_out)
    assert _updates(tmp_path) == _updates(job_out)
    assert _dead_letters(tmp_path) == _dead_letters(job_out)
    ours = json.loads((tmp_path / "summary.json").read_text())
    theirs = json.loads((job_out / "summary.json").read_text())
    for key in COUNTS:
        assert ours[key] == theirs[key], key
    assert theirs["duplicates"] > 0 and theirs["failed_updates"] == 1 and theirs["dead_letters_by_reason"]["model/model"] == 1
    for a, b in zip(ours["progressive_validation"]["buckets"], theirs["progressive_validation"]["buckets"]):
        assert a == pytest.approx(b, rel=1e-12)
    # what only a replay has is in its summary.json too
    assert ours["processes"] == int(processes) and ours["learner_cpu_seconds"] > 0
    assert ours["snapshot_models"] == len(snapshot(tmp_path)) and ours["entities_with_initial_models"] > 0
    assert "update_latency_ms" not in theirs  # a batch job over old data: its age, not a latency
    assert (tmp_path / "random-effect" / "userId" / "id-info").read_text() == "userId\nfeatures\n"


def test_replay_shards_see_the_watermark_of_records_they_do_not_own_even_invalid_ones(messy_inputs, tmp_path):
    """A record with a readable entity and event time moves every shard's watermark, valid or not: a
    bad label two hours ahead in the middle of the stream makes the intervals before it due (and what
    follows late) in every shard alike, so 1 and 3 processes give the same outputs."""
    inputs, _ = messy_inputs
    lines = Path(sorted(Path(inputs["examples"]).parent.glob("*.jsonl"))[0]).read_bytes().splitlines()
    middle = json.loads(lines[len(lines) // 2])
    ahead = dict(middle, uid="ahead", label=7, timestamp=middle["timestamp"] + 7_200_000)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines[:len(lines) // 2] + [json.dumps(ahead).encode()] + lines[len(lines) // 2:]))
    outputs = {}
    for processes in ("1", "3"):
        out = tmp_path / f"out-{processes}"
        assert replay_main(["--input", str(events), "--output", str(out), "--entity-field", "userId",
                            "--timestamp-field", "timestamp", "--minibatch-seconds", "300",
                            "--initial-models", inputs["models"], "--lateness-seconds", "600",
                            "--processes", processes]) == 0
        summary = json.loads((out / "summary.json").read_text())
        outputs[processes] = (snapshot(out), _updates(out), _dead_letters(out), {k: summary[k] for k in COUNTS})
    assert outputs["1"] == outputs["3"]
    assert outputs["1"][3]["late_examples"] > 0 and outputs["1"][3]["dead_letters_by_reason"]["parse/label"] == 1


def watermarked_stream(records, lateness_ms):
    """A TestStream of ``records`` in order whose watermark is the replay's: the newest event time
    so far minus ``lateness_ms``; then an hour past T0, then infinity."""
    events, watermark = TestStream(), None
    for r in records:
        events.add_elements([TimestampedValue(r, r["timestamp"] / 1000.0)])
        mark = r["timestamp"] - lateness_ms
        if watermark is None or mark > watermark:
            watermark = mark
            events.advance_watermark_to(watermark / 1000.0)
    return events.advance_watermark_to((T0 + 3_600_000) / 1000.0).advance_watermark_to_infinity()


def test_replay_equals_a_streaming_job_with_the_same_watermark_late_examples_included(per_bundle_metrics):
    """The replay's watermark (newest event time read minus the lateness) drives a TestStream: the
    streaming job then sees exactly what the replay sees, late examples included."""
    cfg = config(minibatch_seconds=60)
    rng = random.Random(3)
    lateness_ms = 90_000
    records = []
    for i in range(160):
        ts = T0 + 3 + 10 * rng.randrange(0, 60_000)  # 10-minute stream; every timestamp is 3 mod 10 ms
        records.append(rec(f"e{rng.randrange(6)}", ts, f"uid-{i}", float(rng.random() < 0.4),
                           offset=round(rng.uniform(-1, 1), 3), features=((f"f{rng.randrange(4)}", "", 1.0),)))
    records.sort(key=lambda r: r["timestamp"])
    # disorder: some records move far back in the stream (late), some arrive twice (duplicates)
    for _ in range(12):
        r = records.pop(rng.randrange(20, 60))
        records.insert(rng.randrange(100, 150), r)
    records.insert(120, dict(records[30]))
    records.insert(140, rec("e1", records[139]["timestamp"], "boom", 1.0, features=(("f0", "", 1.0), ("x", "", 1e200))))
    initial = [{"modelId": "e2", "version": 4, "means": [{"name": "(INTERCEPT)", "term": "", "value": 0.5}],
                "variances": [{"name": "(INTERCEPT)", "term": "", "value": 0.2}]}]

    events = watermarked_stream(records, lateness_ms)
    outputs, result = run([], cfg, initial_models=initial, streaming_events=events)

    state = EntityReplay(cfg, lateness_ms)
    state.add_model(ModelParser(cfg.penalty).parse(initial[0]))
    parser = ExampleParser("userId", "timestamp")
    flushes = []
    for r in records:
        parsed = parser.parse(r)
        assert not isinstance(parsed, DeadLetter)
        flushes.extend(state.add_example(parsed))
    flushes.extend(state.finish())
    replayed = sorted((u["modelId"], u["version"], u["windowEnd"], u["numExamples"], json.dumps(u["means"]),
                       json.dumps(u["variances"])) for _, f in flushes for u in f.updates)
    streamed = sorted((u["modelId"], u["version"], u["windowEnd"], u["numExamples"], json.dumps(u["means"]),
                       json.dumps(u["variances"])) for u in outputs["updates"])
    assert streamed == replayed
    assert state.late_examples > 0 and counter(result, "late_examples") == state.late_examples
    assert counter(result, "duplicates") == sum(f.duplicates for _, f in flushes) == 1
    assert counter(result, "failed_updates") == sum(f.failed_updates for _, f in flushes) == 1
    assert any(u[0] == "e2" and u[1] == 5 for u in replayed)  # continued from the initial model's version 4


@pytest.mark.parametrize("args, message", [
    (["--watch"], "replay reads files"),
    (["--lateness-seconds", "-5"], "--lateness-seconds must be >= 0"),
    (["--input", "/nonexistent/*.jsonl"], "matches no files"),
    (["--processes", "-2"], "--processes must be >= 1"),
    (["--processes", "2", "--batch-baseline-hours", "1", "--global-correction", "none"], "runs in one process"),
])
def test_replay_usage_errors_are_one_line(messy_inputs, tmp_path, capsys, args, message):
    inputs, _ = messy_inputs
    base = {"--input": inputs["examples"], "--output": str(tmp_path), "--entity-field": "userId",
            "--timestamp-field": "timestamp"}
    if args[0] in base:
        base[args[0]] = args[1]
        args = []
    argv = [x for kv in base.items() for x in kv] + args
    assert replay_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# pipeline.tune: a grid of replays, ranked on an earlier slice, judged on a later one

def test_tune_ranks_a_grid_of_replays_and_prints_the_winners_job_command(tmp_path, capsys):
    from pipeline.tune import TUNE_FILE, main as tune_main

    examples, inputs = make_inputs(tmp_path / "in", num_users=15, hours=2, seed=21)
    out = tmp_path / "tune"
    argv = ["--input", inputs["examples"], "--output", str(out), "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--minibatch-seconds", "300", "--validation-bucket-seconds", "1800",
            "--grid", "penalty=1,10", "--grid", "forgetting-factor=0.5,1", "--processes", "2"]
    assert tune_main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads((out / TUNE_FILE).read_text())
    results = report["results"]
    assert len(results) == 4
    assert sorted(r["setting"]["penalty"] + "/" + r["setting"]["forgetting-factor"] for r in results) == [
        "1/0.5", "1/1", "10/0.5", "10/1"]
    losses = [r["selection"]["log_loss_with_random_effects"] for r in results]
    assert losses == sorted(losses) and len(set(losses)) == 4
    # the selection slice holds about half of the examples, the later slice the rest
    first = results[0]
    assert first["split_ms"] is not None
    n = first["selection"]["examples"] + first["later"]["examples"]
    assert n == len(examples) and 0.3 * n <= first["selection"]["examples"] <= 0.8 * n
    # each setting's selection score is that replay's own progressive validation over the slice
    from pipeline.options import parse_options
    from pipeline.replay import replay

    winner = report["winner"]
    _, validation = replay(parse_options(argv[:12] + ["--penalty", winner["penalty"],
                                                      "--forgetting-factor", winner["forgetting-factor"],
                                                      "--processes", "1"]),  # as tune's replays run
                           write_outputs=False)
    assert validation.report_between(None, first["split_ms"]) == first["selection"]
    assert f"--penalty {winner['penalty']} --forgetting-factor {winner['forgetting-factor']}" in captured.out
    assert "python -m pipeline " in captured.out and "[4/4]" in captured.err


@pytest.mark.parametrize("grid, message", [
    (["pen=1,2"], "'pen' is not a flag of the job"),
    (["penalty"], "is not NAME=V1,V2"),
    (["penalty=1,,2"], "has an empty value"),
    (["penalty=1,x"], "grid setting --penalty x"),
    (["input=a,b"], "names the data"),
    (["watch=1,2"], "on/off flag"),
    ([], "give at least one --grid"),
])
def test_tune_bad_grid_specs_are_one_line(messy_inputs, tmp_path, capsys, grid, message):
    from pipeline.tune import main as tune_main

    inputs, _ = messy_inputs
    argv = ["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
            "--timestamp-field", "timestamp"] + [x for g in grid for x in ("--grid", g)]
    assert tune_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# the periodic batch baseline: retrain from scratch every N hours, score with the last retrain

def test_the_batch_baseline_scores_each_example_with_the_last_retrain_on_all_earlier_data():
    import dataclasses

    from transforms.replay import PeriodicBatchReplay
    from transforms.update import order_minibatch, score_examples, train_minibatch

    cfg = config(minibatch_seconds=600)
    hour = 3_600_000
    parser = ExampleParser("userId", "timestamp")
    records = [rec("u", T0 + h * hour + 60_000 * i, f"{h}-{i}", float((h + i) % 2), offset=0.1 * i,
                   features=(("f", str(i % 3), 1.0),)) for h in range(3) for i in range(4)]
    records.append(rec("v", T0 + 2 * hour + 5, "v-0", 1.0))
    examples = [parser.parse(r) for r in records]
    baseline = PeriodicBatchReplay(cfg, hour)
    got = [baseline.add_example(ex) for ex in examples]
    batch_cfg = dataclasses.replace(cfg, forgetting_factor=1.0)
    expected = []
    for ex in examples:
        earlier = [e for e in examples if e.entity_id == ex.entity_id and
                   e.timestamp_ms < ex.timestamp_ms // hour * hour]
        model = None
        if earlier:
            boundary = ex.timestamp_ms // hour * hour
            model = train_minibatch(None, ex.entity_id, order_minibatch(earlier), boundary, batch_cfg).model
        expected.append(float(score_examples(model, [ex])[0]))
    assert [g["modelScores"][0] for g in got] == expected
    assert expected[0] == records[0]["offset"] and expected[4] != records[4]["offset"]
    assert baseline.retrains == 2 and baseline.train_seconds > 0  # u at hour 1 and at hour 2; v never
    assert [g["windowEnd"] for g in got] == [cfg.batch_end(ex.timestamp_ms) for ex in examples]


def test_replay_runs_the_batch_baseline_from_the_command_line(messy_inputs, tmp_path, capsys):
    inputs, _ = messy_inputs
    assert replay_main(["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
                        "--timestamp-field", "timestamp", "--initial-models", inputs["models"],
                        "--batch-baseline-hours", "0.25", "--global-correction", "none"]) == 0
    out = capsys.readouterr().out
    assert "Periodic batch baseline (every 0.25 h)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["retrains"] > 0 and summary["examples"] == summary["progressive_validation"]["overall"]["examples"]
    assert not (tmp_path / "updates").exists()
