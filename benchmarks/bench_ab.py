"""The job at an earlier commit against the working tree: same input, alternating runs, same outputs?

How a change to the job is measured before it lands: ``git worktree`` checks out ``--base`` beside
this tree, and ``python -m pipeline`` runs from each tree in turn (the tree a run starts in comes
first on ``sys.path``, so each imports its own ``lambda_core``, ``transforms`` and ``pipeline``; both
use this environment's packages) on ``bench_pipeline``'s synthetic input, alternating which goes
first, so that a drift in the machine's load hits both alike. It prints each run's wall and CPU
seconds (the child's user + system time), the medians, the ratio base / head, and whether the two
trees' last outputs are the same: every snapshot and update record, global update, validation
number and summary count (times left out). Exit status 1 when they differ.

    python benchmarks/bench_ab.py --base HEAD~1 [--mode batch|streaming] [--repeat 4]
        [--records 30000] [--entities 3000] [--intervals 5] [--job-flags '...'] [--keep DIR]
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_pipeline import job_command, run_child_usage, write_examples  # noqa: E402

# Avro record files of a job's output, by kind (directories under --output).
AVRO_OUTPUTS = {"snapshot": "random-effect", "updates": "updates", "global updates": "global-updates",
                "global snapshot": "fixed-effect"}
# Summary fields that measure the run rather than its result.
_RUN_FIELDS = {"seconds", "outputs", "input", "output", "options", "command", "update_train_micros",
               "global_update_train_micros", "update_latency_ms"}


def _avro_records(directory):
    from transforms.formats import iter_avro

    records = []
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.avro"), recursive=True)):
        records.extend(iter_avro(path))
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def compare_outputs(a, b):
    """{what: (records in a, records in b, the same)} for two job output directories: each kind of
    Avro output (compared as sets of records, whatever the file sharding), the validation report,
    and the summary without its run-time fields."""
    result = {}
    for what, sub in AVRO_OUTPUTS.items():
        ra, rb = _avro_records(os.path.join(a, sub)), _avro_records(os.path.join(b, sub))
        result[what] = (len(ra), len(rb), ra == rb)
    # The job's own reader of its JSON reports (an empty dict when there is none).
    from pipeline.job import SUMMARY_FILE, VALIDATION_FILE, read_validation

    va, vb = (read_validation(os.path.join(d, VALIDATION_FILE)) for d in (a, b))
    result["validation"] = (int(bool(va)), int(bool(vb)), va == vb)
    sa, sb = (read_validation(os.path.join(d, SUMMARY_FILE)) for d in (a, b))
    sa, sb = ({k: v for k, v in s.items() if k not in _RUN_FIELDS} for s in (sa, sb))
    result["summary"] = (len(sa), len(sb), sa == sb)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to measure against (e.g. HEAD~1, main)")
    parser.add_argument("--mode", choices=("batch", "streaming"), default="batch")
    parser.add_argument("--repeat", type=int, default=4, help="runs of each tree (medians are reported)")
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--entities", type=int, default=3_000)
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--job-flags", default="", help="more flags for both jobs")
    parser.add_argument("--keep", help="write the input and outputs here and keep them")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True)
    if base_rev.returncode != 0:
        parser.error(f"--base {args.base!r} is not a commit of this repository: {base_rev.stderr.strip()}")
    work = args.keep or tempfile.mkdtemp(prefix="bench-ab-")
    os.makedirs(work, exist_ok=True)
    base_tree = os.path.join(work, "base-tree")
    subprocess.run(["git", "worktree", "add", "--detach", "--force", base_tree, args.base], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        data = os.path.join(work, "examples.jsonl")
        if not os.path.exists(data):
            write_examples(data, args.records, args.entities, args.features, args.intervals)
        extra = (["--streaming"] if args.mode == "streaming" else []) + args.job_flags.split()
        trees = {f"base {base_rev.stdout.strip()}": base_tree, "head (this tree)": ROOT}
        outputs = {name: os.path.join(work, f"out-{i}") for i, name in enumerate(trees)}
        print(f"{args.records:,} records, {args.entities:,} entities, {args.intervals} one-minute intervals, "
              f"{args.mode}{' ' + args.job_flags if args.job_flags else ''}")
        times = {name: [] for name in trees}
        for run in range(args.repeat):
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for name in order:
                shutil.rmtree(outputs[name], ignore_errors=True)
                wall, usage = run_child_usage(job_command(data, outputs[name], *extra), cwd=trees[name])
                cpu = usage.ru_utime + usage.ru_stime
                times[name].append((wall, cpu))
                print(f"  run {run + 1}  {name:<20} wall {wall:6.2f}s  cpu {cpu:6.2f}s", flush=True)
        medians = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
                   for name, ts in times.items()}
        for name, (wall, cpu) in medians.items():
            print(f"{name:<20} median wall {wall:6.2f}s  cpu {cpu:6.2f}s")
        (base_wall, base_cpu), (head_wall, head_cpu) = medians.values()
        print(f"base / head: wall {base_wall / head_wall:.3f}, cpu {base_cpu / head_cpu:.3f} (above 1: head is faster)")
        compared = compare_outputs(*outputs.values())
        for what, (na, nb, same) in compared.items():
            print(f"  {what:<16} {na:>7,} vs {nb:>7,}  {'same' if same else 'DIFFERENT'}")
        same = all(s for _, _, s in compared.values())
        print("outputs identical" if same else "outputs DIFFER")
        return 0 if same else 1
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT, capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
