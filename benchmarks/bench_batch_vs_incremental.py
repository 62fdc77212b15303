"""Lambda Learner's central claim, measured: incremental updates against periodic batch retraining.

On simulated click streams (``pipeline.simulation``) without drift, with drift, and with many users
arriving mid-stream, every example is scored before anything learns from it, by:

* the offset alone (the fixed effect);
* a periodic batch baseline: every 1 h and every 6 h of event time each user's model is retrained
  from its initial model on all its data so far, and used until the next retrain
  (``python -m pipeline.replay --batch-baseline-hours N``);
* the job's incremental updates at its default flags (``python -m pipeline.replay``).

Prints the progressive log loss of each per stream and the CPU seconds of its learner (scoring
and training: the retrains and the scoring between them, or the incremental updates), and writes
a plot of log loss per hour of event time (``--plot``, default ``benchmarks/results/batch-vs-incremental.png``).

    python benchmarks/bench_batch_vs_incremental.py [--users 300] [--hours 12] [--plot PATH]
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.options import parse_options  # noqa: E402
from pipeline.replay import replay  # noqa: E402
from pipeline.simulation import ClickStream, StreamConfig  # noqa: E402
from transforms.formats import write_json_lines  # noqa: E402

STREAMS = {
    "no drift": dict(drift_per_hour=0.0, late_arrival_fraction=0.0),
    "drift": dict(drift_per_hour=0.25, late_arrival_fraction=0.0),
    "drift + new users": dict(drift_per_hour=0.25, late_arrival_fraction=0.7),
}
MODES = [("batch every 6 h", 6.0), ("batch every 1 h", 1.0), ("incremental (defaults)", 0.0)]
# The paper's claim is about each entity's model: the batch baseline retrains the entities alone,
# so the incremental mode runs without the global correction too.
ENTITIES_ALONE = ["--global-correction", "none"]


def run_mode(examples: str, models: str, work: str, baseline_hours: float):
    argv = ["--input", examples, "--initial-models", models, "--output", work, "--entity-field", "userId",
            "--timestamp-field", "timestamp", "--minibatch-seconds", "600", "--validation-bucket-seconds", "3600",
            "--processes", "1", *ENTITIES_ALONE]  # in this process, so that its CPU time is all counted here
    if baseline_hours:
        argv += ["--batch-baseline-hours", str(baseline_hours)]
    started = time.process_time()
    counts, validation = replay(parse_options(argv), write_outputs=False)
    return validation.report(), counts["learner_cpu_seconds"], time.process_time() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--hours", type=float, default=12.0)
    parser.add_argument("--plot", default=os.path.join(ROOT, "benchmarks", "results", "batch-vs-incremental.png"))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as work:
        for name, knobs in STREAMS.items():
            stream = ClickStream(StreamConfig(num_users=args.users, hours=args.hours, seed=7, **knobs))
            examples = os.path.join(work, "examples.jsonl")
            models = os.path.join(work, "models.jsonl")
            n = write_json_lines(examples, stream.examples())
            write_json_lines(models, stream.initial_models())
            print(f"{name}: {n:,} impressions, {args.users} users, {args.hours:g} h", flush=True)
            rows = {}
            for mode, hours in MODES:
                report, train_cpu, total_cpu = run_mode(examples, models, os.path.join(work, "out"), hours)
                rows[mode] = (report, train_cpu, total_cpu)
                print(f"  {mode:<24} log loss {report['overall']['log_loss_with_random_effects']:.4f}   "
                      f"AUC {report['overall']['auc_with_random_effects']:.4f}   learner {train_cpu:6.1f} CPU s"
                      f"   (whole replay {total_cpu:5.1f} CPU s)", flush=True)
            offset = rows[MODES[0][0]][0]["overall"]
            print(f"  {'offset only':<24} log loss {offset['log_loss_offset_only']:.4f}   "
                  f"AUC {offset['auc_offset_only']:.4f}")
            results[name] = rows
    plot(results, args.plot)
    print(f"Plot: {args.plot}")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), sharey=True)
    for ax, (name, rows) in zip(axes, results.items()):
        first = next(iter(rows.values()))[0]
        hours = [(b["start_ms"] - first["buckets"][0]["start_ms"]) / 3_600_000 for b in first["buckets"]]
        ax.plot(hours, [b["log_loss_offset_only"] for b in first["buckets"]], color="grey", label="offset only")
        for mode, (report, train_cpu, _) in rows.items():
            ax.plot(hours, [b["log_loss_with_random_effects"] for b in report["buckets"]],
                    label=f"{mode} ({train_cpu:.0f} CPU s)")
        ax.set_title(name)
        ax.set_xlabel("hour of event time")
    axes[0].set_ylabel("progressive log loss (per hour)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
