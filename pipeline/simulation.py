"""A realistic ads-like click stream, for the demo, tests and benchmarks.

Each user has true preferences (a per-user bias, ad-category affinities and a price sensitivity)
that drift as a random walk; every impression carries the fixed-effect score of a global model as
its ``offset``; some users arrive mid-stream (cold start); an "offline job" knows a noisy snapshot
of part of the users' preferences at the start, which becomes their initial model.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

import numpy as np

CATEGORIES = ["travel", "fashion", "gaming", "finance", "food", "sports", "tech", "home"]
FORMATS = ["banner", "video", "native"]
START_MS = 1_764_028_800_000  # 2025-11-25T00:00:00Z: a fixed, realistic epoch for reproducible streams


@dataclass
class StreamConfig:
    """Size and shape of the simulated stream."""

    num_users: int = 2000
    hours: float = 3.0
    impressions_per_user_hour: float = 12.0
    late_arrival_fraction: float = 0.3
    initial_model_fraction: float = 0.5
    drift_per_hour: float = 0.25
    seed: int = 2026
    # Log-odds of a click for an average impression (the global model's bias): lower means rarer clicks.
    global_bias: float = -1.6


@dataclass
class UserTruth:
    """A user's true preferences at the start and the drift applied per hour."""

    bias: float
    category: np.ndarray
    price: float
    arrival_ms: int
    drift: np.ndarray = field(repr=False)

    def coefficients(self, hours_elapsed: float) -> Tuple[float, np.ndarray, float]:
        """Preferences after ``hours_elapsed`` of linear-interpolated random-walk drift."""
        steps = self.drift.shape[0] - 1
        pos = min(max(hours_elapsed, 0.0), steps)
        lo = int(np.floor(pos))
        hi = min(lo + 1, steps)
        frac = pos - lo
        shift = (1 - frac) * self.drift[lo] + frac * self.drift[hi]
        return self.bias + shift[0], self.category + shift[1:-1], self.price + shift[-1]


def true_coefficient_map(truth: "UserTruth", hours_elapsed: float) -> Dict[Tuple[str, str], float]:
    """The user's true random-effect coefficients as (name, term) -> value."""
    bias, category, price = truth.coefficients(hours_elapsed)
    coefficients = {("intercept", "intercept"): bias, ("price_level", ""): price}
    coefficients.update({("ad_category", c): float(v) for c, v in zip(CATEGORIES, category)})
    return coefficients


class ClickStream:
    """Generates the stream; ``examples()`` yields TrainingExampleAvro-shaped dicts in time order."""

    def __init__(self, config: StreamConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._rng = rng
        self.duration_ms = int(config.hours * 3_600_000)
        steps = int(np.ceil(config.hours)) + 1
        self.users: Dict[str, UserTruth] = {}
        for u in range(config.num_users):
            late = rng.random() < config.late_arrival_fraction
            arrival = int(rng.uniform(0.1, 0.8) * self.duration_ms) if late else 0
            walk = np.cumsum(rng.normal(scale=config.drift_per_hour, size=(steps, len(CATEGORIES) + 2)), axis=0)
            walk -= walk[0]
            self.users[f"u{u:06d}"] = UserTruth(
                bias=float(rng.normal(scale=0.6)),
                category=rng.normal(scale=0.9, size=len(CATEGORIES)) * (rng.random(len(CATEGORIES)) < 0.6),
                price=float(rng.normal(scale=0.7)),
                arrival_ms=arrival,
                drift=walk,
            )
        # The global (fixed-effect) model: what everybody shares, trained offline.
        self.global_category = rng.normal(scale=0.4, size=len(CATEGORIES))
        self.global_format = np.array([-0.3, 0.4, 0.1])
        self.global_bias = config.global_bias

    def examples(self) -> Iterator[dict]:
        """Every impression as a dict with uid, label, features, offset, weight, userId, timestamp."""
        cfg, rng = self.config, self._rng
        events: List[Tuple[int, str]] = []
        for user_id, truth in self.users.items():
            active_ms = self.duration_ms - truth.arrival_ms
            count = rng.poisson(cfg.impressions_per_user_hour * active_ms / 3_600_000)
            times = truth.arrival_ms + np.sort(rng.integers(0, max(active_ms, 1), size=count))
            events.extend((int(t), user_id) for t in times)
        events.sort()
        for seq, (t, user_id) in enumerate(events):
            truth = self.users[user_id]
            cat = int(rng.integers(len(CATEGORIES)))
            fmt = int(rng.integers(len(FORMATS)))
            price = float(np.round(rng.random(), 3))
            offset = self.global_bias + self.global_category[cat] + self.global_format[fmt] - 0.5 * price
            bias, category, price_pref = truth.coefficients(t / 3_600_000)
            margin = offset + bias + category[cat] + price_pref * price
            label = 1.0 if rng.random() < 1.0 / (1.0 + np.exp(-margin)) else 0.0
            yield {
                "uid": f"imp-{seq:09d}",
                "userId": user_id,
                "timestamp": START_MS + t,
                "label": label,
                "offset": float(np.round(offset, 6)),
                "weight": 1.0,
                "features": [
                    {"name": "ad_category", "term": CATEGORIES[cat], "value": 1.0},
                    {"name": "ad_format", "term": FORMATS[fmt], "value": 1.0},
                    {"name": "price_level", "term": "", "value": price},
                ],
                "metadataMap": {"page": "feed"},
            }

    def initial_models(self) -> Iterator[dict]:
        """BayesianLinearModelAvro-shaped dicts for the users an offline job already knew."""
        rng = np.random.default_rng(self.config.seed + 1)
        for user_id, truth in self.users.items():
            if truth.arrival_ms > 0 or rng.random() >= self.config.initial_model_fraction:
                continue
            noisy = {nt: v + float(rng.normal(scale=0.3)) for nt, v in true_coefficient_map(truth, 0.0).items()}
            means = [{"name": "(INTERCEPT)", "term": "", "value": noisy.pop(("intercept", "intercept"))}]
            means += [{"name": n, "term": t, "value": v} for (n, t), v in noisy.items()]
            variances = [{"name": m["name"], "term": m["term"], "value": 0.09} for m in means]
            yield {
                "modelId": user_id,
                "modelClass": "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel",
                "means": means,
                "variances": variances,
                "lossFunction": "",
            }
