"""How the job scales: records/s and peak RSS as entities and features per entity grow.

Each run is ``python -m pipeline`` (batch, DirectRunner, whole process) on synthetic JSON lines:
every entity has the same number of records, one per one-minute interval, and every record carries
all of its entity's features (so a model has features + 1 coefficients). Two sweeps:

* entities 1k -> 10k -> 100k at a fixed number of records per entity and features;
* features per entity 10 -> 100 -> 1,000 at a fixed number of entities.

A run of a single record measures the fixed cost of a job (interpreter, Beam, pipeline
construction: seconds whatever the data); throughput is computed net of it, so that small runs are
not dominated by it. The baseline of each sweep is its first row, measured in the same run: the
ratio column is that row's net throughput over the baseline's (records/s for the entity sweep, feature values/s for the
feature sweep, since a record with 1,000 features is 100 times the data of one with 10). "Flat or
degrading gently" means ratios near 1. Peak RSS is the job process's own maximum resident set
(``wait4``), which on the DirectRunner includes all entities' state: one process holds everything.

    python benchmarks/bench_scaling.py [--records-per-entity 4] [--entities 1000,10000,100000]
                                       [--features 10,100,1000] [--feature-entities 1000]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_MS = 1_764_028_800_000
MINUTE_MS = 60_000


def write_examples(path: str, entities: int, records_per_entity: int, features: int, seed: int = 0) -> int:
    """Write the synthetic stream; return the number of feature values written."""
    rng = random.Random(seed)
    values = 0
    with open(path, "w") as f:
        for r in range(records_per_entity):
            for e in range(entities):
                feats = [{"name": "f", "term": str(t), "value": round(rng.gauss(0, 1), 4)} for t in range(features)]
                values += features
                f.write(json.dumps({
                    "uid": f"e{e}-{r}", "entity": f"n{e}", "ts": START_MS + r * MINUTE_MS + rng.randrange(MINUTE_MS),
                    "label": int(rng.random() < 0.3), "offset": round(rng.gauss(0, 0.5), 4), "features": feats,
                }) + "\n")
    return values


def run_job(data: str, output: str):
    """(wall seconds, peak RSS in MB) of one ``python -m pipeline`` run."""
    cmd = [sys.executable, "-m", "pipeline", "--input", data, "--output", output, "--entity-field", "entity",
           "--timestamp-field", "ts", "--minibatch-seconds", "60"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"job failed: {' '.join(cmd)}\n{stderr[-2000:]}")
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    return seconds, usage.ru_maxrss / 1024.0, summary


def sweep(title, rows, work, records_per_entity, per_value, fixed_seconds):
    print(title)
    print(f"  {'entities':>9}{'features':>9}{'records':>10}{'updates':>10}{'seconds':>9}{'records/s':>11}"
          f"{'values/s':>11}{'ratio':>7}{'peak RSS MB':>13}")
    baseline = None
    for entities, features in rows:
        data = os.path.join(work, f"in-{entities}-{features}.jsonl")
        values = write_examples(data, entities, records_per_entity, features)
        output = os.path.join(work, f"out-{entities}-{features}")
        seconds, rss, summary = run_job(data, output)
        records = entities * records_per_entity
        if summary["examples_trained"] != records:
            sys.exit(f"expected {records} examples trained, the job trained {summary['examples_trained']}")
        net = max(seconds - fixed_seconds, 1e-3)
        throughput = (values if per_value else records) / net
        baseline = baseline or throughput
        print(f"  {entities:>9,}{features:>9,}{records:>10,}{summary['updates']:>10,}{seconds:>9.1f}"
              f"{records / net:>11,.0f}{values / net:>11,.0f}{throughput / baseline:>7.2f}{rss:>13,.0f}")
        shutil.rmtree(output, ignore_errors=True)
        os.remove(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records-per-entity", type=int, default=4)
    parser.add_argument("--entities", default="1000,10000,100000")
    parser.add_argument("--entity-features", type=int, default=10, help="features per entity in the entity sweep")
    parser.add_argument("--features", default="10,100,1000")
    parser.add_argument("--feature-entities", type=int, default=1000, help="entities in the feature sweep")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-scaling-")
    try:
        print(f"{args.records_per_entity} records per entity, one per one-minute interval; batch DirectRunner")
        data = os.path.join(work, "one.jsonl")
        write_examples(data, 1, 1, 1)
        fixed = sorted(run_job(data, os.path.join(work, f"one-{i}"))[0] for i in range(3))[1]
        print(f"fixed cost of a job (median of 3 one-record runs): {fixed:.1f} s; records/s and values/s are net of it")
        sweep("Entities (ratio: records/s against the first row)",
              [(int(n), args.entity_features) for n in args.entities.split(",")], work, args.records_per_entity,
              per_value=False, fixed_seconds=fixed)
        sweep("Features per entity (ratio: feature values/s against the first row)",
              [(args.feature_entities, int(f)) for f in args.features.split(",")], work, args.records_per_entity,
              per_value=True, fixed_seconds=fixed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
