"""``python -m pipeline.replay`` against the Beam job (batch DirectRunner), same input, same run.

All run as whole processes on the same synthetic keyed examples (``bench_pipeline``'s generator):
the job, the replay in one process (``--processes 1``) and the replay split across ``--processes``
(default: one per core); prints records/s of each, the ratios replay / job, peak RSS, and checks
that all three snapshots hold the same models. The requirement is a ratio >= 5 (aim 20). With
``--replay-only`` it runs the replay alone (e.g. on 10 M records, for its memory), still printing
records/s and peak RSS (peak RSS: the largest process, its shards' included).

    python benchmarks/bench_replay.py [--records 30000] [--entities 3000] [--features 3] [--intervals 5]
        [--repeat 3] [--processes N] [--replay-only]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_pipeline import job_command, run_child as run, write_examples  # noqa: E402


def write_ordered_examples(path, records, entities, features, minutes, vocabulary=50, seed=0):
    """Examples in event-time order (a few seconds of jitter), ``minutes`` of stream: the input a
    long backfill reads, for the replay's memory (bounded by the open intervals, not the input)."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    span = minutes * 60_000
    start = 1_764_028_800_000
    chunk = 100_000
    with open(path, "w") as f:
        for first in range(0, records, chunk):
            n = min(chunk, records - first)
            users = rng.integers(entities, size=n)
            labels = rng.random(n) < 0.3
            offsets = np.round(rng.normal(scale=0.5, size=n), 4)
            terms = rng.integers(vocabulary, size=(n, features))
            values = np.round(rng.normal(size=(n, features)), 4)
            jitter = rng.integers(-5_000, 5_000, size=n)
            lines = []
            for j in range(n):
                i = first + j
                ts = start + i * span // records + int(jitter[j])
                feats = [{"name": "f", "term": str(int(t)), "value": float(v)}
                         for t, v in zip(dict.fromkeys(terms[j].tolist()), values[j].tolist())]
                lines.append(json.dumps({"uid": f"e{i}", "entity": f"n{int(users[j])}", "ts": ts,
                                         "label": int(labels[j]), "offset": float(offsets[j]), "features": feats}))
            f.write("\n".join(lines) + "\n")


def snapshot_models(output):
    from transforms.models import load_models

    models, dead = load_models(os.path.join(output, "random-effect", "entity"), penalty=10.0)
    assert not dead
    return {e: (m.feature_names, m.means.tobytes(), m.precisions.tobytes()) for e, m in models.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--entities", type=int, default=3_000)
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--processes", type=int, default=0, help="the split replay's processes (0: one per core)")
    parser.add_argument("--replay-only", action="store_true",
                        help="run the replay alone, on examples in event-time order over --intervals minutes")
    parser.add_argument("--minibatch-seconds", default="60")
    parser.add_argument("--vocabulary", type=int, default=50, help="--replay-only: distinct feature terms")
    parser.add_argument("--keep", help="write the data and outputs here and keep them")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="bench-replay-")
    os.makedirs(work, exist_ok=True)
    try:
        data = os.path.join(work, "examples.jsonl")
        if not os.path.exists(data):
            if args.replay_only:
                write_ordered_examples(data, args.records, args.entities, args.features, args.intervals,
                                       args.vocabulary)
            else:
                write_examples(data, args.records, args.entities, args.features, args.intervals)
        print(f"{args.records:,} records, {args.entities:,} entities, {args.features} features each, "
              f"{args.intervals} minutes of event time, {args.minibatch_seconds} s mini-batches")
        mb = ["--minibatch-seconds", args.minibatch_seconds]  # the later flag wins over job_command's 60 s
        processes = args.processes or os.cpu_count() or 1
        commands = {
            "job": job_command(data, os.path.join(work, "job"), *mb),
            "replay, 1 process": job_command(data, os.path.join(work, "replay-1"), *mb, "--processes", "1",
                                             module="pipeline.replay"),
            f"replay, {processes} processes": job_command(data, os.path.join(work, "replay-n"), *mb, "--processes",
                                                          str(processes), module="pipeline.replay"),
        }
        if args.replay_only:
            name = list(commands)[2]
            seconds, rss = run(commands[name] + ["--progress-seconds", "60"], show_stderr=True)
            print(f"{name}  {seconds:8.1f}s  {args.records / seconds:10,.0f} records/s  peak RSS {rss:,.0f} MB")
            return 0
        times = {name: [] for name in commands}
        for i in range(args.repeat):
            order = list(commands) if i % 2 == 0 else list(reversed(commands))  # a drift in load hits all alike
            line = []
            for name in order:
                seconds, rss = run(commands[name])
                times[name].append(seconds)
                line.append(f"{name} {seconds:.1f}s ({args.records / seconds:,.0f} records/s, peak RSS {rss:,.0f} MB)")
            print(f"  run {i + 1}: " + ";  ".join(line))
        snapshots = [snapshot_models(os.path.join(work, d)) for d in ("job", "replay-1", "replay-n")]
        same = snapshots[0] == snapshots[1] == snapshots[2]
        job = statistics.median(times["job"])
        ratios = {name: job / statistics.median(ts) for name, ts in times.items() if name != "job"}
        for name, ratio in ratios.items():
            print(f"{name}: {statistics.median(times[name]):.1f}s against the job's {job:.1f}s: "
                  f"records/s ratio {ratio:.2f}")
        best = max(ratios.values())
        print(f"best replay/job records/s ratio {best:.2f} (required >= 5, aim 20); snapshots identical: {same}")
        ok = best >= 5 and same
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
