"""The job on a real Apache Flink: the embedded MiniCluster (batch and streaming) and a standalone cluster.

Each Flink run is the plain command a user types (``python -m pipeline --runner=FlinkRunner ...``,
no job-server or version flags: ``pipeline.flink`` finds the jar ``make flink-jar`` cached), run as
a subprocess, on a small input; its outputs are compared with the DirectRunner's on the same input.
"""

import json
import os
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, JobServerOptions

from jobutil import make_inputs, read_avro_dir, run_job, snapshot, updates_by_entity
from pipeline import flink
from pipeline.options import UsageError, parse_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_LINES = [b"not json", b'{"userId": "u1", "label": 1}']
COUNTS = ["records_read", "blank_lines", "examples", "examples_trained", "late_examples", "duplicates",
          "examples_failed", "updates", "failed_updates", "initial_models", "cold_start_entities", "dead_letters",
          "dead_letters_by_reason"]

@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """The DirectRunner's batch run: the reference every Flink run is compared with."""
    base = tmp_path_factory.mktemp("flink")
    examples, inputs = make_inputs(base / "in", num_users=30, hours=0.5, seed=12, bad_lines=BAD_LINES)
    run_job(inputs, base / "direct", "--runner=DirectRunner")
    return examples, inputs, base / "direct"


def run_flink(inputs, output, *extra, timeout=400):
    argv = [sys.executable, "-m", "pipeline", "--runner=FlinkRunner", "--environment_type=LOOPBACK",
            "--input", inputs["examples"], "--initial-models", inputs["models"], "--output", str(output),
            "--entity-field", "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", "300", *extra]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def summary(output):
    return json.loads((output / "summary.json").read_text())


def assert_same_as_direct(direct, output, streaming, corrected=True):
    examples, _, reference = direct
    expected, got = summary(reference), summary(output)
    assert got["runner"] == "FlinkRunner" and got["streaming"] == streaming
    # Every output is written. Beam's WriteToFiles leaves its temporary directory behind, empty
    # (the DirectRunner's output has one too).
    temp = [p for p in output.iterdir() if p.name.startswith(".temp")]
    assert all(not any(p.iterdir()) for p in temp)
    assert sorted(p.name for p in output.iterdir() if p not in temp) == sorted(
        ["dead-letter", "progressive-validation.json", "random-effect", "summary.json", "updates"]
        + (["fixed-effect", "global-updates"] if corrected else []))
    if corrected:  # the global correction (the default): the same global model, updated as often
        assert got["global_updates"] == expected["global_updates"] > 0
        assert read_avro_dir(str(output / "fixed-effect" / "*" / "coefficients" / "*.avro")) == read_avro_dir(
            str(reference / "fixed-effect" / "*" / "coefficients" / "*.avro"))
    assert (output / "random-effect" / "userId" / "id-info").read_text() == "userId\nfeatures\n"
    # The same models, bit for bit: each entity's updates are trained in event-time order by one
    # keyed step, whatever runner runs it, so nothing depends on the order bundles arrive in.
    assert snapshot(output) == snapshot(reference)
    ours = updates_by_entity(output)
    assert ours == updates_by_entity(reference)
    # Flink reports the job's Beam counters and distributions back through the job server; they
    # add up to the DirectRunner's and to what the files hold.
    assert {k: got[k] for k in COUNTS} == {k: expected[k] for k in COUNTS}
    assert got["records_read"] == len(examples) + len(BAD_LINES) == got["examples"] + got["dead_letters"]
    assert got["examples_trained"] == sum(u["numExamples"] for us in ours.values() for u in us) == len(examples)
    assert got["updates"] == sum(len(us) for us in ours.values())
    assert got["minibatch_size"]["count"] == expected["minibatch_size"]["count"] == got["updates"]
    dead = [json.loads(line) for f in (output / "dead-letter").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(dead) == len(BAD_LINES)
    # Progressive validation: the same examples and counts; sums of floats combined in another
    # order may differ in the last bits (1e-12 relative bounds it, one ulp is ~2e-16).
    for ours_b, ref_b in zip(got["progressive_validation"]["buckets"] + [got["progressive_validation"]["overall"]],
                             expected["progressive_validation"]["buckets"]
                             + [expected["progressive_validation"]["overall"]]):
        assert ours_b.keys() == ref_b.keys()
        for key, value in ref_b.items():
            if isinstance(value, float):
                assert ours_b[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
            else:
                assert ours_b[key] == value, key


def test_embedded_flink_batch_gives_the_directrunners_models_and_counts(direct_alone, tmp_path):
    """Flink's batch execution: the entities' stage alone (with the global correction the job runs
    in streaming mode on Flink, below)."""
    run_flink(direct_alone[1], tmp_path / "out", "--flink_master=[local]", "--global-correction", "none")
    assert_same_as_direct(direct_alone, tmp_path / "out", streaming=False, corrected=False)


def test_embedded_flink_streaming_gives_the_directrunners_models_and_counts(direct, tmp_path):
    run_flink(direct[1], tmp_path / "out", "--flink_master=[local]", "--streaming")
    assert_same_as_direct(direct, tmp_path / "out", streaming=True)


@pytest.fixture(scope="module")
def direct_alone(direct):
    """The DirectRunner's batch run without the global correction, on the same input."""
    examples, inputs, reference = direct
    run_job(inputs, reference.parent / "direct-alone", "--runner=DirectRunner", "--global-correction", "none")
    return examples, inputs, reference.parent / "direct-alone"



@pytest.fixture
def cluster(tmp_path):
    """A standalone Flink cluster from flink/cluster.sh, stopped afterwards whatever happens."""
    run_dir = tmp_path / "cluster"
    script = os.path.join(ROOT, "flink", "cluster.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    start = subprocess.run(["bash", script, "start", str(run_dir)], capture_output=True, text=True, env=env,
                           timeout=180)
    try:
        assert start.returncode == 0, start.stderr + start.stdout
        yield run_dir
    finally:
        subprocess.run(["bash", script, "stop", str(run_dir)], capture_output=True, text=True, env=env, timeout=120)


def test_standalone_cluster_gives_the_directrunners_models(direct, cluster, tmp_path):
    """The plain command, no --streaming: with the global correction (one key) Flink runs it in
    streaming mode, and says so; the models are the DirectRunner's batch ones."""
    proc = run_flink(direct[1], tmp_path / "out", "--flink_master=localhost:8081")
    assert flink.FLINK_STREAMING_NOTE in proc.stderr
    assert_same_as_direct(direct, tmp_path / "out", streaming=True)
    # The job ran on the cluster, not in an embedded one: its JobManager lists it as finished.
    overview = subprocess.run(["bash", os.path.join(ROOT, "flink", "cluster.sh"), "status", str(cluster)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert json.loads(overview.stdout)["jobs-finished"] == 1


BASE = ["--input", "x.jsonl", "--output", "out", "--entity-field", "u", "--timestamp-field", "t"]


def flink_options(*extra):
    return parse_options(BASE + list(extra)).view_as(FlinkRunnerOptions)


def test_flink_runner_gets_the_cached_job_server_and_its_flink_minor(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDA_LEARNER_CACHE", str(tmp_path))
    with pytest.raises(UsageError, match="make flink-jar"):
        flink_options("--runner=FlinkRunner")
    os.makedirs(flink.cache_dir())
    open(flink.job_server_jar(), "wb").close()
    o = flink_options("--runner=FlinkRunner", "--flink_master=[local]")
    assert (o.flink_job_server_jar, o.flink_version) == (flink.job_server_jar(), flink.FLINK_MINOR)
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in o.view_as(JobServerOptions).job_server_jvm_properties
    assert flink_options("--runner=FlinkRunner", f"--flink_version={flink.FLINK_MINOR}").flink_version == "1.19"
    # What the user passes wins; a minor the cached jar is not for is an error, not a silent switch.
    mine = flink_options("--runner=FlinkRunner", "--flink_job_server_jar=/x.jar", "--flink_version=2.0")
    assert (mine.flink_job_server_jar, mine.flink_version) == ("/x.jar", "2.0")
    with pytest.raises(UsageError, match="--flink_version 2.2"):
        flink_options("--runner=FlinkRunner", "--flink_version=2.2")
    # A watched directory is not read on this Flink (see the README): refused, not silently unread.
    with pytest.raises(UsageError, match="--watch does not work on Flink"):
        flink_options("--runner=FlinkRunner", "--watch")
    # Other runners, and a FlinkRunner talking to a job server someone else started, are left alone.
    assert flink_options("--runner=DirectRunner").flink_job_server_jar is None
    assert flink_options("--runner=FlinkRunner", "--job_endpoint=localhost:8099").flink_job_server_jar is None


def test_flink_runs_the_global_correction_in_streaming_mode_and_the_entities_alone_in_batch(capsys):
    from apache_beam.options.pipeline_options import StandardOptions
    assert parse_options(BASE + ["--runner=FlinkRunner"]).view_as(StandardOptions).streaming
    assert flink.FLINK_STREAMING_NOTE in capsys.readouterr().err
    assert not parse_options(BASE + ["--runner=FlinkRunner", "--global-correction", "none"]).view_as(
        StandardOptions).streaming
    assert not parse_options(BASE).view_as(StandardOptions).streaming  # other runners: as given


def test_flink_fault_tolerance_flags_are_accepted_and_unset_ones_are_not_sent():
    options = parse_options(BASE + ["--runner=FlinkRunner", "--flink_job_server_jar=/x.jar",
                                    "--checkpointing_interval=2000", "--savepoint_path=/sp"])
    sent = options.get_all_options()
    assert (sent["checkpointing_interval"], sent["savepoint_path"]) == (2000, "/sp")
    assert sent["execution_retry_delay"] is None  # None is dropped by the PortableRunner's encoder


def test_dockerfile_base_image_is_the_pinned_beam_sdk():
    import re

    pinned = re.search(r'BEAM_VERSION = "([^"]+)"', open(os.path.join(ROOT, "setup.py")).read()).group(1)
    base = re.search(r"^FROM (\S+)", open(os.path.join(ROOT, "Dockerfile")).read(), re.M).group(1)
    assert base == f"apache/beam_python3.11_sdk:{pinned}"
