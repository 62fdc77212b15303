"""Where the plain-Python small-problem update stops paying: per-update time of
``train_minibatch_small`` against ``train_minibatch_general`` (the lambda_core trainers) on cold
entities, by mini-batch size. ``lambda_core._newton.SMALL_MAX_ENTRIES`` (examples x active columns)
is set from this table.

    python benchmarks/bench_small.py
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lambda_core import _newton  # noqa: E402
from transforms import update  # noqa: E402
from transforms.examples import Example  # noqa: E402
from transforms.models import cold_model  # noqa: E402

SHAPES = [(1, 3, 50), (2, 3, 50), (4, 3, 50), (8, 3, 50), (16, 3, 50), (2, 10, 50), (4, 10, 50), (8, 10, 50),
          (4, 30, 100), (16, 5, 8), (32, 5, 8)]


def minibatch(rng, n, per_row, features):
    return [Example("e", 0, f"u{i}", float(rng.random() < 0.3), 1.0, float(rng.normal()),
                    tuple(("f", str(int(f)), float(rng.normal())) for f in rng.choice(features, per_row, replace=False)))
            for i in range(n)]


def per_call(fn, repeat=5, number=50):
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


def main():
    rng = np.random.default_rng(0)
    config = update.UpdateConfig()
    limit, _newton.SMALL_MAX_ENTRIES = _newton.SMALL_MAX_ENTRIES, 10**9  # time the small path everywhere
    print(f"{'examples':>8} {'columns':>7} {'n x k':>6} {'small':>9} {'general':>9} {'speed-up':>8}")
    for n, per_row, features in SHAPES:
        examples = minibatch(rng, n, per_row, features)
        model = cold_model("e", config.penalty)
        k = len(update.train_minibatch_small(model, "e", examples, 1, config).model.feature_names)
        small = per_call(lambda: update.train_minibatch_small(model, "e", examples, 1, config))
        general = per_call(lambda: update.train_minibatch_general(model, "e", examples, 1, config))
        print(f"{n:>8} {k:>7} {n * k:>6} {small * 1e6:>7.0f}us {general * 1e6:>7.0f}us {general / small:>7.1f}x")
    print(f"SMALL_MAX_ENTRIES = {limit}: the small path is used up to that many examples x active columns")


if __name__ == "__main__":
    main()
