"""``make demo``: simulate an ads click stream, run the real job on it, and show what it learned.

    python -m pipeline.demo [--size SCALE] [--output-dir demo-output]

It writes a realistic stream as Photon Avro files (a few thousand users over four simulated hours,
a global model's score as each impression's offset, drifting per-user preferences, users arriving
mid-stream, a sprinkling of malformed records) plus initial models for part of the users in
Photon's GAME layout, then runs ``python -m pipeline`` on them in streaming mode on the
DirectRunner and reports progressive log loss and AUC per simulated hour, how close the learned
per-user effects are to the true ones, one user's model before and after, and a plot.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from transforms.formats import write_avro
from transforms.models import load_models, write_id_info
from transforms.update import UpdateConfig

from .simulation import CATEGORIES, START_MS, ClickStream, StreamConfig, true_coefficient_map

COORDINATE = "per-user"
VALIDATION_BUCKET_SECONDS = 3600


def malformed(examples, rng, fraction=0.004):
    """Copies of a few real records, each broken in one way a real pipeline sees."""
    breakers = [
        ("label 3", lambda e: dict(e, label=3.0)),
        ("NaN offset", lambda e: dict(e, offset=float("nan"))),
        ("negative weight", lambda e: dict(e, weight=-1.0)),
        ("no user id", lambda e: dict(e, metadataMap={"timestamp": e["metadataMap"]["timestamp"]})),
        ("bad timestamp", lambda e: dict(e, metadataMap=dict(e["metadataMap"], timestamp="yesterday"))),
        ("repeated feature", lambda e: dict(e, features=e["features"] + e["features"][:1])),
    ]
    picks = rng.choice(len(examples), size=max(len(breakers), int(len(examples) * fraction)), replace=False)
    return [dict(breakers[i % len(breakers)][1](examples[p]), uid=f"broken-{i}") for i, p in enumerate(picks)]


def write_inputs(stream: ClickStream, base: str):
    """Hourly Avro files of examples (ids in metadataMap, Photon's convention) and the offline models."""
    rng = np.random.default_rng(stream.config.seed + 7)
    examples = []
    for e in stream.examples():
        meta = {"userId": e.pop("userId"), "timestamp": str(e.pop("timestamp")), "page": "feed"}
        e["metadataMap"] = meta
        examples.append(e)
    broken = malformed(examples, rng)
    records = examples + broken
    by_hour = {}
    for r in records:
        ts = r["metadataMap"].get("timestamp", "")
        hour = (int(ts) - START_MS) // 3_600_000 if ts.isdigit() else 0
        by_hour.setdefault(hour, []).append(r)
    for hour, rs in sorted(by_hour.items()):
        write_avro(os.path.join(base, "events", f"clicks-hour-{hour:02d}.avro"), "TrainingExampleAvro", rs)
    offline = os.path.join(base, "offline-model", "random-effect", COORDINATE)
    write_id_info(offline, "userId", "features")
    initial = list(stream.initial_models())
    write_avro(os.path.join(offline, "coefficients", "part-00000.avro"), "BayesianLinearModelAvro", initial)
    counts = {}
    for e in examples:
        user = e["metadataMap"]["userId"]
        counts[user] = counts.get(user, 0) + 1
    return len(examples), len(broken), len(initial), offline, counts


def correlation(stream: ClickStream, models: dict, min_examples: dict):
    """Pearson correlation of learned vs true category effects + bias, over users with data."""
    learned, truth = [], []
    end_hours = stream.config.hours
    for user, model in models.items():
        if min_examples.get(user, 0) < 8:
            continue
        true = true_coefficient_map(stream.users[user], end_hours)
        means = dict(zip(model.feature_names, model.means))
        for nt in [("intercept", "intercept")] + [("ad_category", c) for c in CATEGORIES]:
            if nt in means:
                learned.append(means[nt])
                truth.append(true[nt])
    if len(learned) < 3:
        return float("nan"), 0
    return float(np.corrcoef(learned, truth)[0, 1]), len(learned)


def plot(report: dict, path: str) -> bool:
    """PNG of progressive log loss per bucket, offset-only vs with random effects."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    buckets = report["buckets"]
    hours = [(b["start_ms"] - START_MS) / 3_600_000 for b in buckets]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(hours, [b["log_loss_offset_only"] for b in buckets], marker="o", label="fixed effect (offset) only")
    ax.plot(hours, [b["log_loss_with_random_effects"] for b in buckets], marker="o",
            label="offset + per-user random effects")
    ax.set_xlabel("simulated hours since start")
    ax.set_ylabel("progressive log loss (lower is better)")
    ax.set_title("Each mini-batch scored before the model trains on it")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def user_story(stream, offline_dir, after: dict, penalty, counts):
    """One user with an offline model and many events: their model before and after, with the truth."""
    before, _ = load_models(offline_dir, penalty)
    candidates = [u for u in before if u in after]
    if not candidates:
        return []
    user = max(candidates, key=lambda u: (counts.get(u, 0), u))
    truth = true_coefficient_map(stream.users[user], stream.config.hours)
    b = dict(zip(before[user].feature_names, zip(before[user].means, before[user].variances())))
    a = dict(zip(after[user].feature_names, zip(after[user].means, after[user].variances())))
    lines = [f"User {user} ({counts.get(user, 0)} impressions): coefficient mean ± sd, before -> after (true at the end)"]
    for nt in [("intercept", "intercept"), ("price_level", "")] + [("ad_category", c) for c in CATEGORIES]:
        if nt not in a:
            continue
        name = "intercept" if nt[0] == "intercept" else ":".join(x for x in nt if x)
        bm, bv = b.get(nt, (0.0, 1.0 / penalty))
        am, av = a[nt]
        lines.append(f"  {name:<22}{bm:>7.2f} ± {np.sqrt(bv):.2f}  ->  {am:>6.2f} ± {np.sqrt(av):.2f}   ({truth[nt]:+.2f})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1.0, help="scale the number of users (1.0 = 2,000 users)")
    parser.add_argument("--output-dir", default="demo-output", help="everything is written here (cleaned first)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    if args.size <= 0:
        print("error: --size must be > 0.", file=sys.stderr)
        return 2
    base = os.path.abspath(args.output_dir)
    started = time.time()
    if os.path.exists(base):
        print(f"Cleaning {base} from a previous run.")
        shutil.rmtree(base)
    config = StreamConfig(num_users=max(20, int(2000 * args.size)), hours=4.0, impressions_per_user_hour=4.0,
                          seed=args.seed)
    stream = ClickStream(config)
    n_examples, n_broken, n_models, offline, counts = write_inputs(stream, base)
    print(f"Simulated {n_examples:,} impressions from {config.num_users:,} users over {config.hours:g} hours "
          f"(+{n_broken} malformed records), and offline models for {n_models:,} users.")

    output = os.path.join(base, "job")
    # The learner at the job's defaults (penalty, forgetting), chosen on other streams than this one
    # (README, "Model quality"); 10-minute mini-batches, as a user seen every few minutes suggests.
    penalty = UpdateConfig.penalty
    command = [sys.executable, "-m", "pipeline", "--input", os.path.join(base, "events", "*.avro"),
               "--output", output, "--initial-models", offline, "--entity-field", "userId",
               "--timestamp-field", "timestamp", "--coordinate", COORDINATE, "--minibatch-seconds", "600",
               "--streaming",
               "--validation-bucket-seconds", str(VALIDATION_BUCKET_SECONDS), "--progress-seconds", "5"]
    print("\nRunning the job (streaming, DirectRunner):\n  python " + " ".join(
        os.path.relpath(c) if c.startswith(base) else c for c in command[1:]) + "\n", flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(proc.stdout)
        print(f"error: the job failed with exit code {proc.returncode}.", file=sys.stderr)
        return 1
    print(proc.stdout)

    summary = json.load(open(os.path.join(output, "summary.json")))
    report = summary["progressive_validation"]
    snapshot_dir = os.path.join(output, "random-effect", COORDINATE)
    learned, _ = load_models(snapshot_dir, penalty)
    print(f"Entities: {len(learned):,} in the snapshot ({len(counts):,} with impressions, the rest only "
          "known from the offline model).")
    corr, pairs = correlation(stream, learned, counts)
    print(f"\nLearned vs true per-user effects (bias and ad-category affinities, users with >= 8 impressions): "
          f"correlation {corr:.2f} over {pairs:,} coefficients.")
    print()
    print("\n".join(user_story(stream, offline, learned, penalty, counts)))
    png = os.path.join(base, "progressive-logloss.png")
    if plot(report, png):
        print(f"\nPlot of progressive log loss over time: {png}")
    else:
        print("\n(matplotlib is not installed: pip install -e '.[demo]' for the plot)")
    overall = report["overall"]
    print(f"\nOverall: log loss {overall['log_loss_offset_only']:.4f} offset-only -> "
          f"{overall['log_loss_with_random_effects']:.4f} with random effects; AUC {overall['auc_offset_only']:.4f} -> "
          f"{overall['auc_with_random_effects']:.4f}.")
    print(f"Inputs: {os.path.join(base, 'events')} and {offline}; job outputs: {output}. "
          f"Done in {time.time() - started:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
