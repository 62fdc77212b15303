"""Helpers for the job tests: a small simulated input, running the job in-process, reading outputs."""

import glob
import os
from collections import defaultdict

import fastavro

from pipeline.__main__ import main as job_main
from pipeline.simulation import ClickStream, StreamConfig
from transforms.formats import write_avro, write_json_lines

PHOTON_MODEL_SCHEMA = {
    "type": "record", "name": "BayesianLinearModelAvro", "namespace": "com.linkedin.photon.avro.generated",
    "fields": [
        {"name": "modelId", "type": "string"},
        {"name": "modelClass", "type": ["null", "string"], "default": None},
        {"name": "means", "type": {"type": "array", "items": {
            "type": "record", "name": "NameTermValueAvro", "fields": [
                {"name": "name", "type": "string"}, {"name": "term", "type": "string"},
                {"name": "value", "type": "double"}]}}},
        {"name": "variances", "type": ["null", {"type": "array", "items": "NameTermValueAvro"}], "default": None},
        {"name": "lossFunction", "type": ["null", "string"], "default": None},
    ],
}


def make_inputs(directory, num_users=40, hours=0.75, seed=5, bad_lines=(), avro=False):
    """Write a simulated stream (+ initial models) under ``directory``; return (examples, paths)."""
    stream = ClickStream(StreamConfig(num_users=num_users, hours=hours, seed=seed))
    examples = list(stream.examples())
    os.makedirs(directory, exist_ok=True)
    if avro:
        path = os.path.join(directory, "examples.avro")
        photon = [dict(e, metadataMap={"userId": e["userId"], "timestamp": str(e["timestamp"])}) for e in examples]
        write_avro(path, "TrainingExampleAvro", photon)
    else:
        path = os.path.join(directory, "examples.jsonl")
        write_json_lines(path, examples)
        if bad_lines:
            with open(path, "ab") as f:
                for line in bad_lines:
                    f.write(line + b"\n")
    models_path = os.path.join(directory, "models.jsonl")
    write_json_lines(models_path, list(stream.initial_models()))
    return examples, {"examples": path, "models": models_path}


def run_job(inputs, output, *extra, minibatch_seconds=300, with_models=True):
    argv = ["--input", inputs["examples"], "--output", str(output), "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--minibatch-seconds", str(minibatch_seconds)]
    if with_models:
        argv += ["--initial-models", inputs["models"]]
    assert job_main(argv + list(extra)) == 0


def read_avro_dir(pattern, reader_schema=None):
    records = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            records.extend(fastavro.reader(f, reader_schema=reader_schema))
    return records


def snapshot(output, coordinate="userId"):
    """modelId -> (means dict, variances dict) from the job's GAME snapshot, read with Photon's schema."""
    records = read_avro_dir(os.path.join(str(output), "random-effect", coordinate, "coefficients", "part-*.avro"),
                            PHOTON_MODEL_SCHEMA)
    out = {}
    for r in records:
        assert r["modelId"] not in out
        out[r["modelId"]] = ({(m["name"], m["term"]): m["value"] for m in r["means"]},
                             {(v["name"], v["term"]): v["value"] for v in r["variances"]})
    return out


def updates_by_entity(output):
    by_entity = defaultdict(list)
    for r in read_avro_dir(os.path.join(str(output), "updates", "*.avro")):
        by_entity[r["modelId"]].append(r)
    for rs in by_entity.values():
        rs.sort(key=lambda r: r["version"])
    return by_entity
