"""The job against Beam's own floor for its data flow, measured in the same run.

(a) ``python -m pipeline`` on synthetic keyed examples, whole process, DirectRunner;
(b) a no-op stateful Beam job over the same JSON lines: key by entity, buffer in bag state, flush
    on an event-time timer per mini-batch interval, write one line per flush. That is what any
    per-entity mini-batch job on Beam pays before doing any work.

Prints wall times and the ratio floor / ours, batch and streaming; with ``--repeat N`` each pair
runs N times and the medians are reported (the machine is shared). The requirements: batch ratio
>= 0.5 (the performance issue's bar), streaming ratio >= 0.6 (the streaming issue's, median of 3);
aim 0.8 for both. The verdict line says how each mode stands; the exit status is 0 only when every
mode run meets its bar.

    python benchmarks/bench_pipeline.py [--records 30000] [--entities 3000] [--features 3] [--intervals 5] [--repeat 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_MS = 1_764_028_800_000
MINUTE_MS = 60_000
# Required floor / ours ratios per mode (see the module docstring).
REQUIRED = {"batch": 0.5, "streaming": 0.6}


def example_line(rng, i, entity, ts, features):
    """One synthetic example as a JSON line: uid ``e<i>``, entity ``n<entity>``, event time ``ts`` (ms),
    ``features`` of 50 random terms, a 30% click rate and a random offset."""
    feats = [{"name": "f", "term": str(int(t)), "value": float(np.round(rng.normal(), 4))}
             for t in rng.choice(50, size=features, replace=False)]
    return json.dumps({"uid": f"e{i}", "entity": f"n{entity}", "ts": ts, "label": int(rng.random() < 0.3),
                       "offset": float(np.round(rng.normal(scale=0.5), 4)), "features": feats})


def write_examples(path, records, entities, features, intervals, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(records):
            entity = int(rng.integers(entities))
            ts = START_MS + int(rng.integers(intervals * MINUTE_MS))
            f.write(example_line(rng, i, entity, ts, features) + "\n")


def floor_job(argv):
    """The no-op stateful job (run in a subprocess by ``main``)."""
    import apache_beam as beam
    from apache_beam.coders import BytesCoder, VarIntCoder
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.timeutil import TimeDomain
    from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
    from apache_beam.transforms.window import GlobalWindows, TimestampedValue
    from apache_beam.utils.timestamp import Timestamp

    from pipeline.job import disable_local_state_cache

    input_path, output, extra = argv[0], argv[1], argv[2:]

    def key(line):
        record = json.loads(line)
        return TimestampedValue((record["entity"], line), record["ts"] / 1000.0)

    class Buffer(beam.DoFn):
        BAG = BagStateSpec("bag", BytesCoder())
        NEXT = ReadModifyWriteStateSpec("next", VarIntCoder())
        FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

        def process(self, kv, ts=beam.DoFn.TimestampParam, bag=beam.DoFn.StateParam(BAG),
                    nxt=beam.DoFn.StateParam(NEXT), timer=beam.DoFn.TimerParam(FLUSH)):
            end = (ts.micros // 1000 // MINUTE_MS + 1) * MINUTE_MS
            bag.add(end.to_bytes(8, "little") + kv[1].encode("utf-8"))
            pending = nxt.read()
            if pending is None or end < pending:
                timer.set(Timestamp(micros=end * 1000))
                nxt.write(end)

        @on_timer(FLUSH)
        def flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam, bag=beam.DoFn.StateParam(BAG),
                  nxt=beam.DoFn.StateParam(NEXT), timer=beam.DoFn.TimerParam(FLUSH)):
            now = fired.micros // 1000
            entries = list(bag.read())
            bag.clear()
            due = [e for e in entries if int.from_bytes(e[:8], "little") <= now]
            rest = [e for e in entries if int.from_bytes(e[:8], "little") > now]
            for e in rest:
                bag.add(e)
            if rest:
                nxt_end = min(int.from_bytes(e[:8], "little") for e in rest)
                timer.set(Timestamp(micros=nxt_end * 1000))
                nxt.write(nxt_end)
            else:
                nxt.clear()
            yield f"{key}\t{now}\t{len(due)}"

    disable_local_state_cache()  # the same local-runner setting our job uses, so the floor is fair
    with beam.Pipeline(options=PipelineOptions(extra)) as p:
        (p | beam.io.ReadFromText(input_path) | beam.Map(key) | beam.WindowInto(GlobalWindows())
         | beam.ParDo(Buffer()) | beam.io.WriteToText(os.path.join(output, "flushes")))


def job_command(data, output, *extra, module="pipeline"):
    """``python -m <module>`` (the job, or its replay) on ``write_examples``' data."""
    return [sys.executable, "-m", module, "--input", data, "--output", output, "--entity-field", "entity",
            "--timestamp-field", "ts", "--minibatch-seconds", "60", *extra]


def run_child_usage(cmd, show_stderr=False, cwd=ROOT):
    """(wall seconds, ``resource`` usage) of one child process started in ``cwd``; exits with its
    stderr if it fails."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=None if show_stderr else err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed in {cwd}: {' '.join(cmd)}\n{stderr[-2000:]}")
    return seconds, usage


def run_child(cmd, show_stderr=False):
    """(wall seconds, peak RSS in MB) of one child process; exits with its stderr if it fails."""
    seconds, usage = run_child_usage(cmd, show_stderr)
    return seconds, usage.ru_maxrss / 1024


def timed(cmd):
    """Wall seconds of one child process."""
    return run_child(cmd)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--entities", type=int, default=3_000)
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--modes", default="batch,streaming")
    parser.add_argument("--job-flags", default="",
                        help="more flags for our job, e.g. '--global-correction none' (default: its defaults)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each pair this many times (alternating which goes first) and report medians")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        data = os.path.join(work, "examples.jsonl")
        write_examples(data, args.records, args.entities, args.features, args.intervals)
        print(f"{args.records:,} records, {args.entities:,} entities, {args.features} features each, "
              f"{args.intervals} one-minute intervals")
        results = {}
        for mode in args.modes.split(","):
            extra = ["--streaming"] if mode == "streaming" else []
            floor_cmd = [sys.executable, os.path.abspath(__file__), "--floor", data, os.path.join(work, f"floor-{mode}"),
                         *extra]
            ours_cmd = job_command(data, os.path.join(work, f"ours-{mode}"), *extra, *args.job_flags.split())
            floors, ours_times, ratios = [], [], []
            for run in range(args.repeat):
                # Alternate which one goes first, so that a drift in the machine's load hits both alike.
                if run % 2:
                    ours = timed(ours_cmd)
                    floor = timed(floor_cmd)
                else:
                    floor = timed(floor_cmd)
                    ours = timed(ours_cmd)
                floors.append(floor)
                ours_times.append(ours)
                ratios.append(floor / ours)
                if args.repeat > 1:
                    print(f"  {mode} run {run + 1}: floor {floor:6.1f}s   ours {ours:6.1f}s   ratio {floor / ours:.2f}")
            floor, ours, ratio = statistics.median(floors), statistics.median(ours_times), statistics.median(ratios)
            results[mode] = ratio
            label = "" if args.repeat == 1 else f" (medians of {args.repeat})"
            print(f"{mode:<10} floor {floor:6.1f}s   ours {ours:6.1f}s   ratio floor/ours {ratio:.2f}"
                  f"   (required >= {REQUIRED[mode]}, aim >= 0.8){label}")
        for mode, ratio in results.items():
            standing = "meets" if ratio >= REQUIRED[mode] else "is below"
            print(f"{mode}: ratio {ratio:.2f} {standing} {REQUIRED[mode]}")
        ok = all(ratio >= REQUIRED[mode] for mode, ratio in results.items())
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        sys.path.insert(0, ROOT)
        floor_job(sys.argv[2:])
    else:
        sys.exit(main())
