"""``make demo``: simulate an ads click stream and watch per-user random effects learn.

    python -m pipeline.demo [--size SCALE]

This version drives ``lambda_core`` directly, one sequential Bayesian update per user and
five-minute mini-batch, and prints progressive (score-before-train) log loss and AUC per simulated
hour for the fixed effect alone and with the random effects.
"""

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

from lambda_core import (
    HessianType,
    IndexedDataset,
    IndexedModel,
    TrainerSequentialBayesianLogisticLossWithL2,
    evaluate,
)

from .simulation import CATEGORIES, FORMATS, START_MS, ClickStream, StreamConfig

PENALTY, DELTA, MINIBATCH_MS = 10.0, 0.8, 300_000
FEATURES = [("intercept", "intercept")] + [("ad_category", c) for c in CATEGORIES] + \
    [("ad_format", f) for f in FORMATS] + [("price_level", "")]
COLUMN = {nt: i for i, nt in enumerate(FEATURES)}


def design_row(example):
    row = np.zeros(len(FEATURES))
    row[0] = 1.0
    for f in example["features"]:
        row[COLUMN[(f["name"], f["term"])]] = f["value"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description="Simulate a click stream and learn per-user random effects.")
    parser.add_argument("--size", type=float, default=1.0, help="scale the number of users (1.0 = 2,000 users)")
    args = parser.parse_args(argv)
    config = StreamConfig(num_users=max(10, int(2000 * args.size)))
    stream = ClickStream(config)
    started = time.time()
    examples = list(stream.examples())
    print(f"Generated {len(examples):,} impressions from {config.num_users:,} users over {config.hours:g} hours.")

    batches = defaultdict(list)
    for ex in examples:
        batches[((ex["timestamp"] - START_MS) // MINIBATCH_MS, ex["userId"])].append(ex)
    models = {}
    hourly = defaultdict(lambda: {"y": [], "offset": [], "re": []})
    for count, ((interval, user), batch) in enumerate(sorted(batches.items())):
        X = np.array([design_row(ex) for ex in batch])
        y = np.array([ex["label"] for ex in batch])
        offsets = np.array([ex["offset"] for ex in batch])
        prior = models.get(user) or IndexedModel(np.zeros(len(FEATURES)), np.full(len(FEATURES), PENALTY))
        bucket = hourly[int(interval * MINIBATCH_MS // 3_600_000)]
        bucket["y"].extend(y)
        bucket["offset"].extend(offsets)
        bucket["re"].extend(X @ prior.theta + offsets)
        trainer = TrainerSequentialBayesianLogisticLossWithL2(
            training_data=IndexedDataset(X, y, np.ones(len(y)), offsets), initial_model=prior,
            hessian_type=HessianType.DIAGONAL, penalty=PENALTY, delta=DELTA,
        )
        model, _, _ = trainer.train()
        models[user] = IndexedModel(model.theta, model.hessian_diagonal())
        if count % 5000 == 0:
            print(f"  {count:,} updates, {time.time() - started:.1f}s", flush=True)

    print(f"\n{len(batches):,} updates of {len(models):,} users in {time.time() - started:.1f}s\n")
    print("hour  examples  logloss offset-only  logloss +random effects  AUC offset-only  AUC +random effects")
    for hour in sorted(hourly):
        b = hourly[hour]
        base = evaluate(["log_loss", "auc"], np.array(b["offset"]), np.array(b["y"]))
        full = evaluate(["log_loss", "auc"], np.array(b["re"]), np.array(b["y"]))
        print(f"{hour:>4}  {len(b['y']):>8,}  {base['log_loss']:>19.4f}  {full['log_loss']:>23.4f}  "
              f"{base['auc']:>15.4f}  {full['auc']:>19.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
