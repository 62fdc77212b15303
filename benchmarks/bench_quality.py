"""Model quality against the peers: progressive log loss and AUC of the job's learner at its default
flags, of Vowpal Wabbit (user x ad interactions) and of River (one LogisticRegression per user),
each at its defaults and at the best of a small grid, and of the offset (fixed effect) alone, on the
demo's stream and on other simulated streams, with and without the offline (initial) models.

    pip install -e '.[bench]'          # River and Vowpal Wabbit: benchmark-only peers
    python benchmarks/bench_quality.py [--streams demo,drift,...] [--check-beam]

Every learner sees the same examples in the same order and scores each example before it learns
from it (progressive validation). The job's learner is run through the job's own per-entity update,
``transforms.update.train_minibatch``, applied per entity to its mini-batches in event-time order
exactly as the Beam job does (``--minibatch-seconds`` intervals aligned to the epoch, examples
ordered by (timestamp, uid), chunks of at most ``max_minibatch_size``); the job scores a whole
mini-batch with the model from before it, the peers score one example at a time. ``--check-beam``
runs the real Beam job (batch, DirectRunner) on a small stream and checks that this replay gives
the same models and the same progressive scores.

The verdict line checks the target of issue 13: at default flags, a lower progressive log loss than
the best-tuned River and VW on every stream, with and without offline models.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.simulation import ClickStream, StreamConfig  # noqa: E402
from transforms.examples import Example, ExampleParser  # noqa: E402
from transforms.models import ModelParser, RandomEffectModel  # noqa: E402
from transforms.update import (  # noqa: E402
    GLOBAL_MODEL_ID,
    UpdateConfig,
    correct_due,
    correction_scores,
    train_minibatch,
)

# The demo's stream is exactly pipeline/demo.py's at --size 1; the others change one or two settings
# each, with their own seeds. Defaults are chosen on the non-demo streams only.
STREAMS = {
    "demo": StreamConfig(num_users=2000, hours=4.0, impressions_per_user_hour=4.0, seed=2026),
    "drift": StreamConfig(num_users=2000, hours=4.0, impressions_per_user_hour=4.0, drift_per_hour=0.6, seed=11),
    "new-users": StreamConfig(num_users=2000, hours=4.0, impressions_per_user_hour=4.0, late_arrival_fraction=0.7,
                              initial_model_fraction=0.3, seed=12),
    "rare-clicks": StreamConfig(num_users=2000, hours=4.0, impressions_per_user_hour=6.0, global_bias=-3.0,
                                seed=13),
}
ENTITY_FIELD, TIMESTAMP_FIELD = "userId", "timestamp"

VW_DEFAULT = ""
VW_GRID = [f"-l {lr} --power_t {pt}" for lr in (0.1, 0.5, 2.0) for pt in (0.0, 0.25, 0.5)]
RIVER_DEFAULT = {"lr": 0.01, "l2": 0.0}
RIVER_GRID = [{"lr": lr, "l2": l2} for lr in (0.03, 0.1, 0.3, 1.0) for l2 in (0.0, 0.01)]


@dataclass
class Stream:
    """A simulated stream: examples in stream order (the order every learner sees) and offline models."""

    name: str
    examples: List[Example]
    initial_models: Dict[str, RandomEffectModel]
    initial_records: List[dict]
    num_users: int


def make_stream(name: str, config: StreamConfig, penalty_for_records: float = 1.0) -> Stream:
    """Generate a stream and parse it with the job's own parsers (examples and initial models)."""
    sim = ClickStream(config)
    parser = ExampleParser(ENTITY_FIELD, TIMESTAMP_FIELD)
    examples = []
    for record in sim.examples():
        example = parser.parse(record)
        if not isinstance(example, Example):
            raise RuntimeError(f"the simulated stream {name} produced an invalid record: {example.reason}")
        examples.append(example)
    records = list(sim.initial_models())
    models = {}
    for record in records:
        model = ModelParser(penalty_for_records).parse(record)
        if not isinstance(model, RandomEffectModel):
            raise RuntimeError(f"the simulated stream {name} produced an invalid model: {model.reason}")
        models[model.entity_id] = model
    return Stream(name, examples, models, records, config.num_users)


# ---------------------------------------------------------------------------------------------------
# Metrics

def log_loss(margins: np.ndarray, labels: np.ndarray) -> float:
    """Mean logistic loss of margins (log-odds) against labels in {0, 1}."""
    signs = np.where(labels > 0, 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -signs * margins)))


def auc(margins: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, from ranks (ties count one half)."""
    positive = labels > 0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(margins)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def labels_of(stream: Stream) -> np.ndarray:
    return np.array([e.label for e in stream.examples])


# ---------------------------------------------------------------------------------------------------
# The job's learner, replayed through its own per-entity update

PriorTransform = Callable[[Optional[RandomEffectModel], str, int], Optional[RandomEffectModel]]


@dataclass
class Replay:
    """What a replay produced: the final model per entity, each example's progressive margin (in
    stream order), and how many updates failed (and kept the previous model)."""

    models: Dict[str, RandomEffectModel]
    margins: np.ndarray
    updates: int
    failures: int


def minibatches(examples: Sequence[Example], minibatch_ms: int):
    """{entity: [(window_end_ms, [stream positions in training order]), ...] in interval order}: the
    job's epoch-aligned event-time intervals, examples ordered by (timestamp, uid) within each."""
    groups = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[(ex.entity_id, (ex.timestamp_ms // minibatch_ms + 1) * minibatch_ms)].append(i)
    per_entity = defaultdict(list)
    for (entity, end), positions in groups.items():
        positions.sort(key=lambda i: (examples[i].timestamp_ms, examples[i].uid or ""))
        per_entity[entity].append((end, positions))
    for batches in per_entity.values():
        batches.sort(key=lambda b: b[0])
    return per_entity


def replay(examples: Sequence[Example], initial_models: Dict[str, RandomEffectModel], config: UpdateConfig,
           prior_transform: Optional[PriorTransform] = None, population=None,
           global_coordinate: str = "") -> Replay:
    """Apply ``train_minibatch`` to every entity's mini-batches in order, as the Beam job does.

    Interval by interval across entities (each entity's updates in the job's order, which is all the
    job's result depends on), so that the prototypes of cross-entity learning in
    benchmarks/quality_experiments.py see nothing of a mini-batch's own interval or later:

    * ``prior_transform(model, entity_id, window_end_ms)`` rewrites the model before each update
      (``None`` for an entity not seen yet): prototypes of forgetting rules and cold priors;
    * ``population`` (``fold(entity, model)``, ``cold_model(entity, penalty)``): a cold entity starts
      from the population of the models as of the end of the previous interval;
    * ``global_coordinate``: a second GAME coordinate, one global model of the same features learned
      interval by interval with the same update; every example's offset is raised by its score under
      the global model as of the end of the previous interval, for scoring and training alike.
      ``"independent"`` is the job's ``--global-correction independent`` (``update.correct_due``:
      the global model learns from the examples' own offsets), and what a ``config`` with that
      setting runs; ``"residual"`` (a prototype) learns from the offset plus the entity's score
      (coordinate descent).
    """
    global_coordinate = global_coordinate or ("independent" if config.corrects else "")
    chunk = int(getattr(config, "max_minibatch_size", 0) or len(examples) or 1)
    per_interval: Dict[int, list] = defaultdict(list)
    for entity, batches in minibatches(examples, int(round(config.minibatch_seconds * 1000))).items():
        for end, positions in batches:
            per_interval[end].append((entity, positions))
    margins = np.full(len(examples), np.nan)
    models, updates, failures, glob, global_uids = dict(initial_models), 0, 0, None, {}
    if population is not None:
        for entity, model in models.items():
            population.fold(entity, model)
    for end in sorted(per_interval):
        trained, residual_offsets = [], {}
        for entity, positions in sorted(per_interval[end]):
            model, updated = models.get(entity), None
            for start in range(0, len(positions), chunk):
                part = positions[start:start + chunk]
                prior = prior_transform(model, entity, end) if prior_transform is not None else model
                if prior is None and population is not None:
                    prior = population.cold_model(entity, config.penalty)
                batch = [examples[i] for i in part]
                if global_coordinate:
                    raised = correction_scores(glob, batch)
                    batch = [ex._replace(correction=g) for ex, g in zip(batch, raised)]
                result = train_minibatch(prior, entity, batch, end, config)
                margins[part] = result.model_scores
                updates += 1
                if global_coordinate == "residual":  # the offset plus the entity's score
                    for i, score, g in zip(part, result.model_scores, raised):
                        residual_offsets[i] = score - g
                if result.failure is None:
                    model = updated = result.model
                else:
                    failures += 1
            if updated is not None:
                trained.append((entity, updated))
        for entity, model in trained:  # seen by others only from the next interval on
            models[entity] = model
            if population is not None:
                population.fold(entity, model)
        if global_coordinate == "independent":  # the job's own step, trained on this interval
            flushed = correct_due(glob, global_uids, {end: [examples[i] for _, positions in per_interval[end]
                                                             for i in positions]}, config)
            glob, global_uids, failures = flushed.model, flushed.recent_uids, failures + flushed.failed_updates
        elif global_coordinate == "residual":
            order = sorted((i for _, positions in per_interval[end] for i in positions),
                           key=lambda i: (examples[i].timestamp_ms, examples[i].uid or ""))
            batch = [examples[i]._replace(offset=residual_offsets[i]) for i in order]
            for start in range(0, len(batch), chunk):
                result = train_minibatch(glob, GLOBAL_MODEL_ID, batch[start:start + chunk], end, config.global_config)
                if result.failure is None:
                    glob = result.model
                else:
                    failures += 1
    seen = sorted({entity for batches in per_interval.values() for entity, _ in batches})
    return Replay({entity: models.get(entity) for entity in seen}, margins, updates, failures)


# ---------------------------------------------------------------------------------------------------
# The peers (imported here only: benchmark-only dependencies)

def offline_margin(model: Optional[RandomEffectModel], ex: Example) -> float:
    """x . theta of an offline model (intercept included); 0 without one."""
    if model is None:
        return 0.0
    means = dict(zip(model.feature_names, model.means))
    total = means.get(model.feature_names[0], 0.0)
    for name, term, value in ex.features:
        total += value * means.get((name, term), 0.0)
    return total


def _vw_token(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def run_vw(stream: Stream, args: str, with_offline: bool) -> np.ndarray:
    """Vowpal Wabbit, logistic loss, user namespace x ad namespace (-q ua). The offset, plus the
    offline model's margin when there is one, is each example's base (VW's initial prediction), so
    VW learns the residual on top of what the offline models know."""
    from vowpalwabbit import pyvw

    vw = pyvw.Workspace(f"--loss_function logistic -q ua --quiet {args}".strip())
    margins = np.empty(len(stream.examples))
    try:
        for i, ex in enumerate(stream.examples):
            base = ex.offset
            if with_offline:
                base += offline_margin(stream.initial_models.get(ex.entity_id), ex)
            ad = " ".join(f"{_vw_token(n + '=' + t)}:{v!r}" for n, t, v in ex.features)
            line = f"{1 if ex.label > 0 else -1} 1 {base!r} |u {_vw_token(ex.entity_id)} |a {ad}"
            parsed = vw.parse(line)
            margins[i] = vw.predict(parsed)
            vw.learn(parsed)
            vw.finish_example(parsed)
    finally:
        vw.finish()
    return margins


OFFSET_FEATURE = "__offset__"


def run_river(stream: Stream, lr: float, l2: float, with_offline: bool) -> np.ndarray:
    """River: one LogisticRegression per user (SGD at rate ``lr``, the intercept at the same rate).
    The offset enters as a feature whose weight is held at 1; with offline models, a user's
    weights and intercept start at its offline means."""
    from river import linear_model, optim

    users = {}
    margins = np.empty(len(stream.examples))
    for i, ex in enumerate(stream.examples):
        model = users.get(ex.entity_id)
        if model is None:
            model = users[ex.entity_id] = linear_model.LogisticRegression(
                optimizer=optim.SGD(lr), intercept_lr=lr, l2=l2)
            offline = stream.initial_models.get(ex.entity_id) if with_offline else None
            if offline is not None:
                model.intercept = float(offline.means[0])
                for (name, term), mean in zip(offline.feature_names[1:], offline.means[1:]):
                    model._weights[f"{name}={term}"] = float(mean)
        model._weights[OFFSET_FEATURE] = 1.0
        x = {f"{n}={t}": v for n, t, v in ex.features}
        x[OFFSET_FEATURE] = ex.offset
        p = min(max(model.predict_proba_one(x)[True], 1e-15), 1 - 1e-15)
        margins[i] = math.log(p / (1 - p))
        model.learn_one(x, ex.label > 0)
        model._weights[OFFSET_FEATURE] = 1.0
    return margins


# ---------------------------------------------------------------------------------------------------
# The table

@dataclass
class Row:
    learner: str
    setting: str
    log_loss: float
    auc: float
    seconds: float


def measure(name: str, setting: str, fn, labels) -> Row:
    started = time.perf_counter()
    margins = fn()
    seconds = time.perf_counter() - started
    return Row(name, setting, log_loss(margins, labels), auc(margins, labels), seconds)


def best(rows: List[Row]) -> Row:
    return min(rows, key=lambda r: r.log_loss)


def evaluate_stream(stream: Stream, with_offline: bool, config: UpdateConfig, progress) -> Dict[str, Row]:
    """Every learner's row on one stream, with or without the offline models."""
    labels = labels_of(stream)
    initial = stream.initial_models if with_offline else {}
    rows = {"offset": measure("offset only", "", lambda: np.array([e.offset for e in stream.examples]), labels)}
    if with_offline:
        rows["offline"] = measure("offline models, never updated", "", lambda: np.array(
            [e.offset + offline_margin(initial.get(e.entity_id), e) for e in stream.examples]), labels)
    progress("VW")
    rows["vw_default"] = measure("Vowpal Wabbit -q ua", "defaults", lambda: run_vw(stream, VW_DEFAULT, with_offline),
                                 labels)
    vw_grid = [measure("Vowpal Wabbit -q ua", args, lambda a=args: run_vw(stream, a, with_offline), labels)
               for args in VW_GRID]
    rows["vw_best"] = best(vw_grid + [rows["vw_default"]])
    progress("River")
    rows["river_default"] = measure("River LogisticRegression per user", "defaults (SGD 0.01, l2 0)",
                                    lambda: run_river(stream, with_offline=with_offline, **RIVER_DEFAULT), labels)
    river_grid = [measure("River LogisticRegression per user", f"SGD {g['lr']}, l2 {g['l2']}",
                          lambda g=g: run_river(stream, with_offline=with_offline, **g), labels) for g in RIVER_GRID]
    rows["river_best"] = best(river_grid + [rows["river_default"]])
    progress("this job")
    rows["ours"] = measure("this job", "default flags", lambda: replay(stream.examples, initial, config).margins, labels)
    return rows


def describe(config: UpdateConfig) -> str:
    fields = getattr(config, "__dataclass_fields__", {})
    keep = [f for f in fields if f not in ("coordinate", "dedup_horizon_seconds", "max_minibatch_size")]
    return ", ".join(f"{f}={getattr(config, f)}" for f in keep)


def print_table(results, streams):
    header = "| stream | offline models | learner | setting | progressive log loss | AUC | seconds |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for (stream, with_offline), rows in results.items():
        for key in ("offset", "offline", "vw_default", "vw_best", "river_default", "river_best", "ours"):
            if key not in rows:
                continue
            r = rows[key]
            label = {"vw_best": " (best of grid)", "river_best": " (best of grid)"}.get(key, "")
            print(f"| {stream} | {'yes' if with_offline else 'no'} | {r.learner}{label} | {r.setting} | "
                  f"{r.log_loss:.4f} | {r.auc:.4f} | {r.seconds:.1f} |")


def verdict(results) -> bool:
    misses = []
    for (stream, with_offline), rows in results.items():
        peer = min(rows["vw_best"].log_loss, rows["river_best"].log_loss)
        if not rows["ours"].log_loss < peer:
            misses.append(f"{stream} {'with' if with_offline else 'without'} offline models "
                          f"({rows['ours'].log_loss:.4f} vs {peer:.4f})")
    met = not misses
    margins = [min(r["vw_best"].log_loss, r["river_best"].log_loss) - r["ours"].log_loss for r in results.values()]
    print(f"\nVerdict: target {'MET' if met else 'NOT MET'} -- at default flags, lower progressive log loss than "
          f"the best-tuned River and VW on every stream, with and without offline models "
          f"({sum(m > 0 for m in margins)}/{len(margins)} cases; smallest lead {min(margins):+.4f}"
          + ("" if met else "; behind on: " + "; ".join(misses)) + ").")
    return met


# ---------------------------------------------------------------------------------------------------
# Cross-check against the real Beam job

def check_beam(config: UpdateConfig) -> bool:
    """Run ``python -m pipeline`` (batch, DirectRunner) on a small stream with its offline models and
    compare its snapshot and its per-update progressive scores with this benchmark's replay."""
    from transforms.models import load_models

    small = StreamConfig(num_users=60, hours=2.0, impressions_per_user_hour=6.0, seed=7)
    stream = make_stream("check", small, config.penalty)
    sim = ClickStream(small)
    work = tempfile.mkdtemp(prefix="bench-quality-")
    try:
        events = os.path.join(work, "events.jsonl")
        with open(events, "w") as f:
            for record in sim.examples():
                f.write(json.dumps(record) + "\n")
        offline = os.path.join(work, "offline")
        os.makedirs(os.path.join(offline, "coefficients"))
        with open(os.path.join(offline, "coefficients", "part-00000.jsonl"), "w") as f:
            for record in stream.initial_records:
                f.write(json.dumps(record) + "\n")
        output = os.path.join(work, "job")
        command = [sys.executable, "-m", "pipeline", "--input", events, "--output", output,
                   "--initial-models", offline, "--entity-field", ENTITY_FIELD, "--timestamp-field",
                   TIMESTAMP_FIELD, "--coordinate", config.coordinate]
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:])
            print("Beam cross-check: the job failed.")
            return False
        job_models, _ = load_models(os.path.join(output, "random-effect", config.coordinate), config.penalty)
        ours = replay(stream.examples, stream.initial_models, config)
        worst, compared = 0.0, 0
        for entity, model in ours.models.items():
            other = job_models.get(entity)
            if other is None or dict(zip(other.feature_names, other.means)).keys() != set(model.feature_names):
                print(f"Beam cross-check: entity {entity} differs in its features or is missing from the job.")
                return False
            theirs = dict(zip(other.feature_names, zip(other.means, other.precisions)))
            for nt, mean, precision in zip(model.feature_names, model.means, model.precisions):
                worst = max(worst, abs(theirs[nt][0] - mean), abs(1 / theirs[nt][1] - 1 / precision))
            compared += 1
        summary = json.load(open(os.path.join(output, "summary.json")))
        job_loss = summary["progressive_validation"]["overall"]["log_loss_with_random_effects"]
        our_loss = log_loss(ours.margins, labels_of(stream))
        # The job's snapshot also holds the initial models of entities without examples, unchanged.
        expected = set(ours.models) | set(stream.initial_models)
        ok = worst < 1e-9 and abs(job_loss - our_loss) < 1e-9 and set(job_models) == expected
        print(f"Beam cross-check (batch DirectRunner, {len(stream.examples)} examples, {compared} entities): "
              f"largest |mean or variance difference| {worst:.2e}; progressive log loss job {job_loss:.6f}, "
              f"replay {our_loss:.6f}: {'identical' if ok else 'DIFFERENT'}.")
        return ok
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=",".join(STREAMS), help=f"comma-separated, from {', '.join(STREAMS)}")
    parser.add_argument("--check-beam", action="store_true", help="also cross-check the replay against the Beam job")
    args = parser.parse_args(argv)
    names = [s for s in args.streams.split(",") if s]
    unknown = [s for s in names if s not in STREAMS]
    if unknown:
        print(f"error: unknown stream(s) {', '.join(unknown)}; choose from {', '.join(STREAMS)}.", file=sys.stderr)
        return 2
    try:
        import river  # noqa: F401
        import vowpalwabbit  # noqa: F401
    except ImportError:
        print("error: River and Vowpal Wabbit are needed: pip install -e '.[bench]'.", file=sys.stderr)
        return 2
    config = UpdateConfig()
    started = time.time()
    if args.check_beam and not check_beam(config):
        return 1
    print(f"This job at its default flags: {describe(config)}.\n")
    results = {}
    for name in names:
        stream = make_stream(name, STREAMS[name], config.penalty)
        print(f"[{time.time() - started:6.0f}s] stream {name}: {len(stream.examples):,} impressions, "
              f"{stream.num_users:,} users, click rate {labels_of(stream).mean():.3f}, "
              f"{len(stream.initial_models):,} offline models", flush=True)
        for with_offline in (False, True):
            def progress(what, name=name, with_offline=with_offline):
                print(f"[{time.time() - started:6.0f}s]   {name}, {'with' if with_offline else 'without'} "
                      f"offline models: {what}", flush=True)
            results[(name, with_offline)] = evaluate_stream(stream, with_offline, config, progress)
    print()
    print_table(results, names)
    verdict(results)
    print(f"\nbench_quality took {time.time() - started:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
