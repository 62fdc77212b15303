"""benchmarks/bench_ab.py's output comparison: what it calls the same and what it calls different."""

import json
import os
import sys

from transforms.formats import write_avro

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_ab  # noqa: E402


def _record(entity, version, mean):
    return {"modelId": entity, "modelClass": "x", "lossFunction": "", "version": version, "windowEnd": 60_000 * version,
            "means": [{"name": "(INTERCEPT)", "term": "", "value": mean}], "variances": None,
            "numExamples": 2, "loss": 0.5, "converged": True, "coordinate": "entity"}


def _write_output(root, updates, summary, parts=1):
    """A job output directory: updates in ``parts`` files, the snapshot, validation and summary."""
    for i in range(parts):
        write_avro(os.path.join(root, "updates", f"updates-{i}.avro"), "ModelUpdateAvro", updates[i::parts])
    latest = {}
    for r in updates:
        if r["modelId"] not in latest or r["version"] > latest[r["modelId"]]["version"]:
            latest[r["modelId"]] = r
    write_avro(os.path.join(root, "random-effect", "entity", "coefficients", "part-00000.avro"), "ModelUpdateAvro",
               list(latest.values()))
    with open(os.path.join(root, "progressive-validation.json"), "w") as f:
        json.dump({"overall": {"examples": len(updates)}}, f)
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(summary, f)


def test_outputs_are_the_same_whatever_the_files_and_run_times_and_different_when_a_record_is(tmp_path):
    updates = [_record("a", 1, 0.25), _record("b", 1, -0.5), _record("a", 2, 0.125)]
    a, b, c = (str(tmp_path / name) for name in "abc")
    _write_output(a, updates, {"examples": 6, "seconds": 3.5})
    _write_output(b, list(reversed(updates)), {"examples": 6, "seconds": 9.25}, parts=2)  # other files, other time
    same = bench_ab.compare_outputs(a, b)
    assert same["updates"] == (3, 3, True) and same["snapshot"] == (2, 2, True)
    assert same["validation"] == (1, 1, True) and same["summary"] == (1, 1, True)
    assert same["global updates"] == (0, 0, True)  # neither run had the global correction

    changed = [_record("a", 1, 0.25), _record("b", 1, -0.5 + 2 ** -50), _record("a", 2, 0.125)]
    _write_output(c, changed, {"examples": 7, "seconds": 3.5})
    different = bench_ab.compare_outputs(a, c)
    assert different["updates"] == (3, 3, False) and different["snapshot"] == (2, 2, False)
    assert different["summary"] == (1, 1, False)
    assert different["validation"] == (1, 1, True)
