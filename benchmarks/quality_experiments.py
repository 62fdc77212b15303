"""Experiments that choose the job's default learning settings (issue 13, point 3): penalty,
forgetting (the seed's per-update factor against a half-life in event time), where forgetting pulls
(towards zero, towards the entity's initial model, variance only), the mini-batch length, and a
cold prior learned from the population of initial models.

    python benchmarks/quality_experiments.py [--stage all|penalty|forgetting|cold|minibatch|hessian|variants|peers]
        [--base JSON-of-Candidate-fields] [--jobs 2] [--log bench-output/quality-experiments.md]

Each candidate is run through the job's own update, ``transforms.update.train_minibatch``, with the
replay of benchmarks/bench_quality.py. A forgetting rule by elapsed event time is prototyped as a
rewrite of the prior (the entity's means and precisions) before each update, with the trainer's own
forgetting switched off (``forgetting_factor=1``); with ``f = 0.5 ** (elapsed / half_life)`` and the
pull target ``(m0, p0)``:

- ``zero``: p' = f p + (1-f) penalty, m' = f p m / p'  (the seed's rule with delta = f: pulls to 0);
- ``initial``: p' = f p + (1-f) p0, m' = (f p m + (1-f) p0 m0) / p'  with (m0, p0) the entity's
  initial model (or the cold prior for what it lacks);
- ``variance``: m' = m, p' = f p  (variance only: the uncertainty grows, the mean stays);
- ``variance-bounded``: m' = m, p' = f p + (1-f) p0  (variance only, never looser than the prior);
- ``random-walk``: m' = m, 1/p' = 1/p + q * elapsed_hours  (a random walk with diffusion q per hour).

``elapsed`` is the event time from the end of the entity's previous mini-batch to the end of this
one; a model that was never updated (an initial model, a cold start) forgets nothing before its
first update. The cold prior ``population`` starts an entity without an initial model at the mean of
the initial models' coefficients with precision 1 / their variance (per coefficient; ``penalty``
for coefficients no initial model has). ``rule="job"`` uses the job's own forgetting instead (variance
only by event time, ``--forgetting-half-life-seconds``); ``--stage variants`` changes the job's
defaults one setting at a time (half-life, random walk, a cold intercept precision other than the
penalty, marginal precisions ``1 / diag(H^-1)`` kept instead of ``diag(H)``, and the cold prior
``online-population``: a new entity starts from the population of the entities' current models,
``OnlinePopulation``; and a global correction coordinate, ``global_coordinate``: both in
``bench_quality.replay``, which runs interval by interval across entities). Candidates are ranked on the streams other than the demo's
(mean progressive log loss over streams x with/without offline models); the demo is reported after.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_quality as bq  # noqa: E402
from transforms.models import INTERCEPT, RandomEffectModel  # noqa: E402
from transforms.update import UpdateConfig  # noqa: E402

HOUR_MS = 3_600_000
CHOOSE_ON = ("drift", "new-users", "rare-clicks")
REPORT_ON = ("demo",)


@dataclass(frozen=True)
class Candidate:
    """One setting of the learner. ``forgetting_factor`` is the seed's per-update factor (inside the
    trainer); ``rule`` / ``half_life_hours`` / ``diffusion_per_hour`` the prototyped time rule."""

    penalty: float = 10.0
    forgetting_factor: float = 1.0
    rule: str = "none"
    half_life_hours: float = 0.0
    diffusion_per_hour: float = 0.0
    minibatch_seconds: float = 60.0
    cold_prior: str = "penalty"
    hessian: str = "diagonal"
    # 0: a cold entity's intercept gets the penalty like every coefficient; else this precision.
    cold_intercept_precision: float = 0.0
    # With hessian "full": keep 1 / diag(H^-1) (the marginal precisions) between updates, not H.
    marginal_precisions: bool = False
    # "" (none), "independent" or "residual": a global correction coordinate (bench_quality.replay).
    global_coordinate: str = ""

    def label(self) -> str:
        parts = [f"penalty {self.penalty:g}"]
        if self.rule == "none":
            parts.append(f"per-update factor {self.forgetting_factor:g}" if self.forgetting_factor < 1
                         else "no forgetting")
        elif self.rule == "random-walk":
            parts.append(f"random walk q={self.diffusion_per_hour:g}/h")
        elif self.rule == "job":
            parts.append(f"the job's forgetting, half-life {self.half_life_hours:g} h")
        else:
            parts.append(f"{self.rule}, half-life {self.half_life_hours:g} h")
        parts.append(f"{self.minibatch_seconds:g} s")
        if self.cold_prior != "penalty":
            parts.append(f"cold prior {self.cold_prior}")
        if self.hessian != "diagonal":
            parts.append(f"{self.hessian} Hessian")
        if self.cold_intercept_precision:
            parts.append(f"cold intercept precision {self.cold_intercept_precision:g}")
        if self.marginal_precisions:
            parts.append("marginal precisions")
        if self.global_coordinate:
            parts.append(f"global coordinate ({self.global_coordinate})")
        return ", ".join(parts)


class Population:
    """Per-coefficient mean and variance of the initial models' means: a cold prior."""

    def __init__(self, models: Dict[str, RandomEffectModel], penalty: float):
        values: Dict = {}
        for model in models.values():
            for nt, mean in zip(model.feature_names, model.means):
                values.setdefault(nt, []).append(mean)
        names = [nt for nt, v in values.items() if len(v) >= 2]
        intercept = next(iter(models.values())).feature_names[0]
        names.sort(key=lambda nt: (nt != intercept, nt))
        self.names = tuple(names)
        self.means = np.array([np.mean(values[nt]) for nt in names])
        variances = np.array([np.var(values[nt], ddof=1) for nt in names])
        self.precisions = np.where(variances > 0, 1.0 / np.maximum(variances, 1e-12), penalty)
        self.penalty = penalty

    def model(self, entity: str) -> RandomEffectModel:
        return RandomEffectModel(entity, self.names, self.means.copy(), self.precisions.copy())


class OnlinePopulation:
    """The population of the entities' current models, kept as the stream goes: per coefficient, the
    count, sum and sum of squares of the models' means and the sum of their variances. Its cold prior
    for a new entity: for each coefficient at least ``min_count`` models have, the mean of the
    models' means, with precision 1 / (the variance of those means + their mean variance), the
    total variance of a coefficient across entities (the spread of posterior means alone would
    understate it). Nothing of a mini-batch's own interval is seen: ``fold`` runs after an interval."""

    def __init__(self, min_count: int = 30, precision: str = "total"):
        if precision not in ("total", "spread", "penalty"):
            raise ValueError(f"precision must be total, spread or penalty, got {precision!r}")
        self.min_count = min_count
        # A cold coefficient's precision: "total" as above; "spread" 1 / the variance of the means
        # alone; "penalty" the job's penalty (only the mean is learned from the population).
        self.precision = precision
        self.stats: Dict = {}
        self.contributions: Dict[str, list] = {}

    def fold(self, entity: str, model: RandomEffectModel) -> None:
        for nt, m, v in self.contributions.get(entity, ()):
            s = self.stats[nt]
            s[0] -= 1; s[1] -= m; s[2] -= m * m; s[3] -= v  # noqa: E702
        new = list(zip(model.feature_names, model.means.tolist(), (1.0 / model.precisions).tolist()))
        for nt, m, v in new:
            s = self.stats.setdefault(nt, [0, 0.0, 0.0, 0.0])
            s[0] += 1; s[1] += m; s[2] += m * m; s[3] += v  # noqa: E702
        self.contributions[entity] = new

    def cold_model(self, entity: str, penalty: float = 0.0) -> Optional[RandomEffectModel]:
        table = {}
        for nt, (count, total, squares, variances) in self.stats.items():
            if count >= self.min_count:
                mean = total / count
                spread = max(squares / count - mean * mean, 0.0)
                if self.precision == "total":
                    table[nt] = (mean, 1.0 / (spread + variances / count))
                elif self.precision == "spread":
                    table[nt] = (mean, 1.0 / max(spread, 1e-12))
                else:
                    table[nt] = (mean, penalty)
        if INTERCEPT not in table:
            return None
        names = [INTERCEPT] + sorted(nt for nt in table if nt != INTERCEPT)
        return RandomEffectModel(entity, tuple(names), np.array([table[nt][0] for nt in names]),
                                 np.array([table[nt][1] for nt in names]))


def prior_transform(c: Candidate, initial: Dict[str, RandomEffectModel], population: Optional[Population]):
    """The function the replay calls before each update (see the module docstring)."""
    targets: Dict[str, Dict] = {}

    def target(entity: str, names) -> (np.ndarray, np.ndarray):
        known = targets.get(entity)
        if known is None:
            base = initial.get(entity)
            if base is None and population is not None:
                base = population.model(entity)
            known = {} if base is None else dict(zip(base.feature_names, zip(base.means, base.precisions)))
            targets[entity] = known
        pairs = [known.get(nt, (0.0, c.penalty)) for nt in names]
        return np.array([m for m, _ in pairs]), np.array([p for _, p in pairs])

    def transform(model: Optional[RandomEffectModel], entity: str, end_ms: int) -> Optional[RandomEffectModel]:
        if model is None:
            if population is not None:
                return population.model(entity)
            if c.cold_intercept_precision:
                return RandomEffectModel(entity, (INTERCEPT,), np.zeros(1), np.full(1, c.cold_intercept_precision))
            return None
        if c.marginal_precisions and model.precision_matrix is not None:
            model = model._replace(precisions=1.0 / np.diagonal(np.linalg.inv(model.precision_matrix)),
                                   precision_matrix=None)
        if c.rule in ("none", "job") or model.window_end_ms <= 0 or end_ms <= model.window_end_ms:
            return model
        elapsed_hours = (end_ms - model.window_end_ms) / HOUR_MS
        if model.precision_matrix is not None:
            return transform_matrix(model, entity, elapsed_hours)
        m, p = model.means, model.precisions
        if c.rule == "random-walk":
            return model._replace(precisions=1.0 / (1.0 / p + c.diffusion_per_hour * elapsed_hours))
        f = 0.5 ** (elapsed_hours / c.half_life_hours)
        if c.rule == "variance":
            return model._replace(precisions=f * p)
        if c.rule == "zero":
            p2 = f * p + (1 - f) * c.penalty
            return model._replace(means=f * p * m / p2, precisions=p2)
        m0, p0 = target(entity, model.feature_names)
        if c.rule == "variance-bounded":
            return model._replace(precisions=f * p + (1 - f) * p0)
        if c.rule == "initial":
            p2 = f * p + (1 - f) * p0
            return model._replace(means=(f * p * m + (1 - f) * p0 * m0) / p2, precisions=p2)
        raise ValueError(f"unknown rule {c.rule!r}")

    def transform_matrix(model: RandomEffectModel, entity: str, elapsed_hours: float) -> RandomEffectModel:
        """The same rules on a full precision matrix P (``--hessian full``)."""
        m, P = model.means, model.precision_matrix
        eye = np.eye(len(m))
        if c.rule == "random-walk":
            P2 = np.linalg.inv(np.linalg.inv(P) + c.diffusion_per_hour * elapsed_hours * eye)
            P2 = (P2 + P2.T) / 2
            return model._replace(precisions=np.diagonal(P2).copy(), precision_matrix=P2)
        f = 0.5 ** (elapsed_hours / c.half_life_hours)
        if c.rule == "variance":
            m2, P2 = m, f * P
        elif c.rule == "zero":
            P2 = f * P + (1 - f) * c.penalty * eye
            m2 = np.linalg.solve(P2, f * (P @ m))
        else:
            m0, p0 = target(entity, model.feature_names)
            P2 = f * P + (1 - f) * np.diag(p0)
            m2 = m if c.rule == "variance-bounded" else np.linalg.solve(P2, f * (P @ m) + (1 - f) * p0 * m0)
        return model._replace(means=m2, precisions=np.diagonal(P2).copy(), precision_matrix=P2)

    return transform


STREAMS: Dict[str, bq.Stream] = {}


def evaluate(job):
    """(candidate, stream name, with offline models) -> its log loss, AUC, failures."""
    c, name, with_offline = job
    stream = STREAMS[name]
    initial = stream.initial_models if with_offline else {}
    population = Population(initial, c.penalty) if (c.cold_prior == "population" and initial) else None
    if c.rule == "job":  # the job's own forgetting (variance only, by event time), no prototype
        config = UpdateConfig(penalty=c.penalty, forgetting_half_life_seconds=c.half_life_hours * 3600.0,
                              minibatch_seconds=c.minibatch_seconds, hessian=c.hessian)
    else:
        config = UpdateConfig(penalty=c.penalty, forgetting_factor=c.forgetting_factor,
                              minibatch_seconds=c.minibatch_seconds, hessian=c.hessian)
    rewrites = c.rule not in ("none", "job") or population or c.cold_intercept_precision or c.marginal_precisions
    transform = prior_transform(c, initial, population) if rewrites else None
    online = None
    if c.cold_prior.startswith("online-population"):
        online = OnlinePopulation(precision={"online-population": "total", "online-population-spread": "spread",
                                             "online-population-mean": "penalty"}[c.cold_prior])
    result = bq.replay(stream.examples, initial, config, transform, online, c.global_coordinate)
    labels = bq.labels_of(stream)
    return bq.log_loss(result.margins, labels), bq.auc(result.margins, labels), result.failures


def peers(job):
    """(stream name, with offline models) -> bench_quality's rows (the peers, best of their grids)."""
    name, with_offline = job
    return bq.evaluate_stream(STREAMS[name], with_offline, UpdateConfig(), lambda what: None)


def against_peers(best: Candidate, pool, log) -> bool:
    """The chosen candidate against the best-tuned River and VW, measured in this run, on every stream."""
    cases = [(s, o) for s in REPORT_ON + CHOOSE_ON for o in (False, True)]
    rows = dict(zip(cases, pool.map(peers, cases, chunksize=1)))
    ours = run([best], REPORT_ON + CHOOSE_ON, pool)[best]
    lines = [f"\n### {best.label()} against the best-tuned peers (measured in this run)\n",
             "| stream | offline models | River best | VW best | job defaults | candidate | lead over best peer |",
             "|---|---|---|---|---|---|---|"]
    leads = []
    for case in cases:
        r = rows[case]
        peer = min(r["river_best"].log_loss, r["vw_best"].log_loss)
        lead = peer - ours[case][0]
        leads.append(lead)
        lines.append(f"| {case[0]} | {'yes' if case[1] else 'no'} | {r['river_best'].log_loss:.4f} "
                     f"({r['river_best'].setting}) | {r['vw_best'].log_loss:.4f} ({r['vw_best'].setting}) | "
                     f"{r['ours'].log_loss:.4f} | {ours[case][0]:.4f} | {lead:+.4f} |")
    met = all(lead > 0 for lead in leads)
    lines.append(f"\nTarget {'MET' if met else 'NOT MET'} by the candidate: ahead of the best peer in "
                 f"{sum(lead > 0 for lead in leads)}/{len(leads)} cases, smallest lead {min(leads):+.4f}.")
    text = "\n".join(lines)
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()
    return met


def run(candidates: List[Candidate], streams, pool) -> Dict[Candidate, Dict]:
    jobs = [(c, s, o) for c in candidates for s in streams for o in (False, True)]
    out = pool.map(evaluate, jobs, chunksize=1)
    results: Dict[Candidate, Dict] = {}
    for (c, s, o), value in zip(jobs, out):
        results.setdefault(c, {})[(s, o)] = value
    return results


def score(cases: Dict) -> float:
    """Mean log loss over the cases of the streams defaults are chosen on (the demo's never count)."""
    chosen = [v[0] for (stream, _), v in cases.items() if stream not in REPORT_ON]
    return float(np.mean(chosen if chosen else [v[0] for v in cases.values()]))


def show(title: str, results: Dict[Candidate, Dict], streams, top: Optional[int] = None, log=None):
    ranked = sorted(results, key=lambda c: score(results[c]))
    cols = [(s, o) for s in streams for o in (False, True)]
    lines = [f"\n### {title}\n",
             "| candidate | mean | " + " | ".join(f"{s} {'offline' if o else 'cold'}" for s, o in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for c in ranked[:top] if top else ranked:
        cases = results[c]
        failures = sum(v[2] for v in cases.values())
        lines.append(f"| {c.label()}{f' ({failures} failed updates)' if failures else ''} | {score(cases):.4f} | "
                     + " | ".join(f"{cases[k][0]:.4f}" for k in cols) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    if log is not None:
        log.write(text + "\n")
        log.flush()
    return ranked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="all",
                        choices=["all", "penalty", "forgetting", "cold", "minibatch", "hessian", "variants", "peers"])
    parser.add_argument("--base", default=None,
                        help="JSON of Candidate fields to start the later stages from, instead of the earlier "
                             "stages' winner (e.g. when running one stage alone)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--log", default=os.path.join("bench-output", "quality-experiments.md"),
                        help="the tables are also written here (and all the numbers next to it, as .json)")
    args = parser.parse_args(argv)
    started = time.time()
    for name in CHOOSE_ON + REPORT_ON:
        STREAMS[name] = bq.make_stream(name, bq.STREAMS[name])
    os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
    log = open(args.log, "w")
    raw = {}
    with get_context("fork").Pool(args.jobs) as pool:
        def stage(title, candidates, streams=CHOOSE_ON, top=None):
            results = run(candidates, streams, pool)
            raw[title] = [{"candidate": asdict(c), "cases": {f"{s}|{o}": v for (s, o), v in r.items()}}
                          for c, r in results.items()]
            with open(os.path.splitext(args.log)[0] + ".json", "w") as f:
                json.dump(raw, f, indent=1)
            ranked = show(f"{title} [{time.time() - started:.0f}s]", results, streams, top, log)
            return ranked, results

        best = Candidate(**json.loads(args.base)) if args.base else Candidate(penalty=10.0, forgetting_factor=0.8)
        if args.stage in ("all", "penalty"):
            grid = [Candidate(penalty=lam, forgetting_factor=d) for lam in (1.0, 2.0, 3.0, 5.0, 10.0)
                    for d in (0.8, 0.95, 0.99, 1.0)]
            ranked, _ = stage("Seed rule: penalty x per-update forgetting factor (60 s mini-batches)", grid)
            best = ranked[0]
        if args.stage in ("all", "forgetting"):
            grid = [Candidate(penalty=lam, rule=rule, half_life_hours=h) for lam in (2.0, 3.0, 5.0)
                    for rule in ("zero", "initial", "variance", "variance-bounded") for h in (1.0, 2.0, 4.0, 8.0)]
            grid += [Candidate(penalty=lam, rule="random-walk", diffusion_per_hour=q) for lam in (2.0, 3.0, 5.0)
                     for q in (0.01, 0.03, 0.1, 0.3)]
            grid += [Candidate(penalty=lam) for lam in (2.0, 3.0, 5.0)]
            ranked, _ = stage("Forgetting by event time: rule x half-life x penalty (60 s mini-batches)", grid, top=40)
            best = ranked[0]
        if args.stage in ("all", "cold"):
            base = [best] + [replace(best, penalty=lam) for lam in (1.0, 2.0, 3.0, 5.0) if lam != best.penalty]
            grid = base + [replace(c, cold_prior="population") for c in base]
            ranked, _ = stage("Cold prior: fixed penalty vs learned from the initial models", grid)
            best = ranked[0]
        if args.stage in ("all", "minibatch"):
            grid = [replace(best, minibatch_seconds=s) for s in (10.0, 60.0, 300.0, 600.0, 1800.0)]
            ranked, _ = stage("Mini-batch length", grid)
            best = ranked[0]
        if args.stage == "hessian":  # slow (the general path on every update), so not part of "all"
            ranked, _ = stage("Hessian kept between updates", [best, replace(best, hessian="full")])
            best = ranked[0]
        if args.stage == "variants":  # one change at a time to the job's defaults (see the README)
            job = Candidate(penalty=3.0, rule="job", half_life_hours=1.0)
            grid = [job] + [replace(job, half_life_hours=h) for h in (0.25, 0.5, 2.0)]
            grid += [replace(job, half_life_hours=0.5, penalty=2.0)]
            grid += [Candidate(penalty=3.0, rule="random-walk", diffusion_per_hour=q) for q in (0.1, 0.3, 1.0)]
            grid += [replace(job, cold_intercept_precision=p) for p in (0.3, 1.0, 10.0)]
            grid += [replace(job, hessian="full", marginal_precisions=True)]
            grid += [replace(job, cold_prior="online-population")]
            grid += [replace(job, global_coordinate=g) for g in ("independent", "residual")]
            grid += [replace(job, cold_prior=p) for p in ("online-population-spread", "online-population-mean")]
            # Ranked on the streams other than the demo's (``score``); the demo's columns are shown too.
            ranked, _ = stage("One change at a time to the job's defaults", grid, CHOOSE_ON + REPORT_ON)
            against_peers(ranked[0], pool, log)
            log.close()
            return 0
        if args.stage == "peers":  # only the comparison of --base with the peers
            against_peers(best, pool, log)
            log.close()
            return 0
        # The winner and the seed's defaults on the demo stream, reported after the choice.
        demo = [best, Candidate(penalty=10.0, forgetting_factor=0.8),
                Candidate(penalty=1.0, forgetting_factor=0.98, minibatch_seconds=600.0)]
        stage("Chosen default vs the seed's defaults and the demo's flags, on the demo stream", demo, REPORT_ON)
        stage("Chosen default vs the seed's defaults, on the streams it was chosen on", demo[:2])
        against_peers(best, pool, log)
    print(f"\nBest: {best.label()}. quality_experiments took {time.time() - started:.0f}s.")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
