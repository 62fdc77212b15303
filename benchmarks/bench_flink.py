"""The job on the embedded Flink against the DirectRunner and against a no-op stateful job on the same Flink.

Whole processes, same input, same run: (a) ``python -m pipeline`` on the DirectRunner; (b) the same
command on ``--runner=FlinkRunner --flink_master=[local]`` (job server and MiniCluster start
included, as a user pays them); (c) the no-op stateful job of ``bench_pipeline.py`` (key by entity,
bag state, an event-time timer per mini-batch interval) on the same Flink. Prints records/s of each,
Flink / DirectRunner, and floor / ours on Flink; with ``--repeat N``, medians of N runs (the
machine is shared). Needs ``make flink-jar``.

    python benchmarks/bench_flink.py [--records 30000] [--entities 3000] [--modes batch,streaming] [--repeat 3]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_pipeline import job_command, timed, write_examples  # noqa: E402
from pipeline import flink  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = os.path.join(ROOT, "benchmarks", "bench_pipeline.py")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--entities", type=int, default=3_000)
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--modes", default="batch,streaming")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if not os.path.exists(flink.job_server_jar()):
        sys.exit(f"no Flink job server at {flink.job_server_jar()}: run `make flink-jar` first")
    # The floor job is plain Beam, without our flag defaults: give it the cached jar explicitly.
    flink_args = ["--runner=FlinkRunner", "--flink_master=[local]", "--environment_type=LOOPBACK"]
    floor_flink_args = flink_args + [f"--flink_job_server_jar={flink.job_server_jar()}",
                                      f"--flink_version={flink.FLINK_MINOR}"] + [
        f"--job_server_jvm_property={flag}" for flag in flink.JAVA_17_OPENS]
    work = tempfile.mkdtemp(prefix="bench-flink-")
    try:
        data = os.path.join(work, "examples.jsonl")
        write_examples(data, args.records, args.entities, args.features, args.intervals)
        print(f"{args.records:,} records, {args.entities:,} entities, {args.features} features each; "
              f"Flink {flink.FLINK_VERSION} embedded, Beam {flink.JOB_SERVER_BEAM_VERSION} job server")
        for mode in args.modes.split(","):
            extra = ["--streaming"] if mode == "streaming" else []

            def ours(runner_args, name):
                return job_command(data, os.path.join(work, name), *runner_args, *extra)

            cmds = {
                "direct": ours(["--runner=DirectRunner"], f"direct-{mode}"),
                "flink": ours(flink_args, f"flink-{mode}"),
                "floor": [sys.executable, FLOOR, "--floor", data, os.path.join(work, f"floor-{mode}"),
                          *floor_flink_args, *extra],
            }
            times = {name: [] for name in cmds}
            for run in range(args.repeat):
                order = list(cmds) if run % 2 == 0 else list(reversed(cmds))  # a load drift hits all alike
                for name in order:
                    times[name].append(timed(cmds[name]))
                if args.repeat > 1:
                    print(f"  {mode} run {run + 1}: " + "   ".join(f"{n} {times[n][-1]:6.1f}s" for n in cmds))
            t = {name: statistics.median(v) for name, v in times.items()}
            rate = {name: args.records / s for name, s in t.items()}
            label = "" if args.repeat == 1 else f" (medians of {args.repeat})"
            print(f"{mode:<10} DirectRunner {t['direct']:6.1f}s ({rate['direct']:8,.0f} rec/s)   "
                  f"Flink {t['flink']:6.1f}s ({rate['flink']:8,.0f} rec/s)   "
                  f"no-op on Flink {t['floor']:6.1f}s ({rate['floor']:8,.0f} rec/s){label}")
            print(f"{mode:<10} Flink / DirectRunner (records/s) {rate['flink'] / rate['direct']:.2f}   "
                  f"floor / ours on Flink (time) {t['floor'] / t['flink']:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
