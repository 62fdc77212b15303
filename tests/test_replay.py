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


@pytest.mark.parametrize("lateness", ["-1", "3600"])
def test_replay_equals_the_batch_job(messy_inputs, tmp_path, lateness):
    inputs, base = messy_inputs
    job_out = base / "job"
    if not job_out.exists():
        run_job(inputs, job_out)
    args = ["--input", inputs["examples"], "--output", str(tmp_path), "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--minibatch-seconds", "300", "--initial-models", inputs["models"],
            "--lateness-seconds", lateness]
    assert replay_main(args) == 0
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
    assert (tmp_path / "random-effect" / "userId" / "id-info").read_text() == "userId\nfeatures\n"


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

    events, watermark = TestStream(), None
    for r in records:
        events.add_elements([TimestampedValue(r, r["timestamp"] / 1000.0)])
        mark = r["timestamp"] - lateness_ms
        if watermark is None or mark > watermark:
            watermark = mark
            events.advance_watermark_to(watermark / 1000.0)
    events.advance_watermark_to((T0 + 3_600_000) / 1000.0).advance_watermark_to_infinity()
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
                                                      "--forgetting-factor", winner["forgetting-factor"]]),
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
