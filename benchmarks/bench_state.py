"""State size: encoded bytes of one entity's model state against the minimum.

The minimum is two float64 arrays (means, Hessian diagonal) plus the UTF-8 bytes of the feature
names and terms. Required: within 2x of it.

    python benchmarks/bench_state.py
"""

import sys

import numpy as np

from lambda_core import INTERCEPT
from transforms.models import RandomEffectModel
from transforms.state import decode_model, encode_model


def model_with(d: int, rng) -> RandomEffectModel:
    names = [INTERCEPT] + [("ad_category" if i % 2 else "query_term", f"t{i:06d}") for i in range(d - 1)]
    return RandomEffectModel("u000001", tuple(names), rng.normal(size=d), rng.uniform(1, 50, size=d), 7, 1_764_028_800_000)


def main() -> int:
    rng = np.random.default_rng(0)
    print(f"{'coefficients':>12}{'encoded bytes':>15}{'minimum bytes':>15}{'ratio':>8}")
    worst = 0.0
    for d in (1, 10, 100, 1000, 10000):
        model = model_with(d, rng)
        encoded = encode_model(model)
        back = decode_model(encoded)
        assert back.feature_names == model.feature_names and np.array_equal(back.means, model.means)
        minimum = 16 * d + sum(len(n.encode()) + len(t.encode()) for n, t in model.feature_names)
        ratio = len(encoded) / minimum
        worst = max(worst, ratio)
        print(f"{d:>12,}{len(encoded):>15,}{minimum:>15,}{ratio:>8.2f}")
    print(f"worst ratio {worst:.2f} (required <= 2)")
    print("PASS" if worst <= 2 else "FAIL")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
