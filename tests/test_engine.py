"""The learning engine: loss families, the forgetting prior, the registry, and the incremental contracts."""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

import lambda_core
from lambda_core import (
    BINARY,
    COUNT,
    FORGETTING_TARGETS,
    GAUSSIAN,
    LOGISTIC,
    POISSON,
    TRAINERS,
    HessianType,
    IndexedDataset,
    IndexedModel,
    QuadraticPrior,
    TrainerSequentialBayesianPoissonLossWithL2,
    TrainerSequentialBayesianSquareLossWithL2,
    forgetting_factor,
    trainer_spec,
)
from transforms.examples import Example, ExampleParser
from transforms.models import model_class, model_record
from transforms.update import UpdateConfig, train_minibatch

FAMILIES = (LOGISTIC, GAUSSIAN, POISSON)


def _labels(rng, family, n):
    if family is LOGISTIC:
        return rng.integers(0, 2, size=n).astype(float)
    if family is POISSON:
        return rng.poisson(2.0, size=n).astype(float)
    return rng.normal(size=n) * 2


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_plain_python_terms_are_the_vectorised_terms(family):
    rng = np.random.default_rng(len(family.name))
    margins = np.concatenate([rng.normal(scale=3, size=200), [0.0, -40.0, 40.0, 700.0, -800.0]])
    if family is LOGISTIC:
        margins = np.concatenate([margins, [1e4, -1e4]])
    n = len(margins)
    raw = _labels(rng, family, n)
    w = rng.uniform(0, 3, size=n)
    y = family.labels(raw)
    assert family.small_labels(raw.tolist()) == y.tolist()
    value, d1, d2 = family.terms(margins, y, w)
    small_value, small_d1, small_d2 = family.terms_small(margins.tolist(), y.tolist(), w.tolist())
    np.testing.assert_allclose(small_d1, d1, rtol=1e-15, atol=0)
    np.testing.assert_allclose(small_d2, d2, rtol=1e-15, atol=0)
    assert small_value == pytest.approx(value, rel=1e-13)
    assert family.value(margins, y, w) == pytest.approx(value, rel=1e-15)
    # The derivatives are those of the value (central differences).
    h = 1e-6
    for i in rng.choice(200, size=20, replace=False):
        one = slice(i, i + 1)
        up, down = margins[one] + h, margins[one] - h
        fd = (family.value(up, y[one], w[one]) - family.value(down, y[one], w[one])) / (2 * h)
        assert fd == pytest.approx(d1[i], rel=1e-5, abs=1e-7)
        fd2 = (family.terms(up, y[one], w[one])[1][0] - family.terms(down, y[one], w[one])[1][0]) / (2 * h)
        assert fd2 == pytest.approx(d2[i], rel=1e-5, abs=1e-7)


def test_label_rules():
    assert LOGISTIC.small_labels([0.5]) is None and POISSON.small_labels([-1.0]) is None
    labels = np.array([0.0, 1.0, -1.0, -0.0, 0.5, 2.0, -2.0, 1e200, -1e200, np.inf, -np.inf, np.nan, 1e-300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on huge labels
        accepted = BINARY.accepts_array(labels)
    assert accepted.tolist() == [BINARY.accepts(v) for v in labels.tolist()] == [True] * 4 + [False] * 9
    with pytest.raises(ValueError, match=r"Logistic labels must be in \{0, 1\} or \{-1, \+1\}; got 1e\+200"):
        LOGISTIC.labels(np.array([1.0, 1e200]))
    assert POISSON.small_labels([0.0, 3.0, 2.5]) == [0.0, 3.0, 2.5]
    with pytest.raises(ValueError, match="Poisson labels must be finite numbers >= 0"):
        POISSON.labels(np.array([1.0, -2.0]))
    parser = ExampleParser("u", "t", label_rule=COUNT)
    assert parser.parse({"u": "a", "t": 1, "label": 4, "features": []}).label == 4.0
    dead = parser.parse({"u": "a", "t": 1, "label": -1, "features": []})
    assert dead.category == "label" and "finite numbers >= 0" in dead.reason


def test_poisson_trainer_reaches_the_optimum_of_its_objective():
    rng = np.random.default_rng(4)
    n, d = 80, 6
    X = np.column_stack([np.ones(n), rng.normal(scale=0.5, size=(n, d - 1))])
    offsets = rng.normal(scale=0.2, size=n)
    y = rng.poisson(np.exp(X @ rng.normal(scale=0.5, size=d) + offsets)).astype(float)
    w = rng.uniform(0.5, 2, size=n)
    theta0, h0 = rng.normal(scale=0.2, size=d), rng.uniform(1, 5, size=d)
    lam, delta = 2.0, 0.7
    trainer = TrainerSequentialBayesianPoissonLossWithL2(
        training_data=IndexedDataset(X, y, w, offsets), initial_model=IndexedModel(theta0, h0), penalty=lam,
        delta=delta, hessian_type=HessianType.FULL)
    model, loss, meta = trainer.train()

    def objective(t):
        m = X @ t + offsets
        dev = t - theta0
        return w @ (np.exp(m) - y * m) + 0.5 * (1 - delta) * lam * t @ t + 0.5 * delta * dev @ (h0 * dev)

    best = minimize(objective, theta0, method="BFGS", options={"gtol": 1e-10})
    assert meta["warnflag"] == 0
    assert loss == pytest.approx(objective(model.theta), rel=1e-12)
    assert loss <= best.fun + 1e-9 * abs(best.fun)
    mu = np.exp(X @ model.theta + offsets)
    expected = X.T @ (X * (w * mu)[:, None]) + np.diag((1 - delta) * lam + delta * h0)
    np.testing.assert_allclose(model.hessian.toarray(), expected, rtol=1e-10)


def test_registry_maps_every_job_trainer_and_refuses_the_memoryless_ones():
    assert set(TRAINERS) == {"sequential_bayesian_logistic", "sequential_bayesian_linear",
                             "sequential_bayesian_poisson"}
    for name, spec in TRAINERS.items():
        assert spec.name == name and issubclass(spec.trainer_class, lambda_core._trainer.SequentialBayesianTrainer)
        assert spec.trainer_class.family is spec.family and spec.label_rule is spec.family.label_rule
        assert model_class(name) == spec.model_class
        assert spec.model_class.startswith("com.linkedin.photon.ml.supervised.")
    assert TRAINERS["sequential_bayesian_poisson"].model_class == \
        "com.linkedin.photon.ml.supervised.regression.PoissonRegressionModel"
    for old, new in (("logistic", "sequential_bayesian_logistic"), ("linear", "sequential_bayesian_linear")):
        with pytest.raises(ValueError, match=f"trainer '{old}' is memoryless.*use '{new}'"):
            UpdateConfig(trainer=old)
        assert model_class(old) == TRAINERS[new].model_class
    with pytest.raises(ValueError, match="trainer must be one of sequential_bayesian_logistic"):
        trainer_spec("forest")


# --------------------------------------------------------------------------------------------------
# The linear trainer's contract: with no forgetting, incremental == batch ridge regression


def _regression_batches(rng, n_batches, max_features=8):
    batches, t = [], 0
    for b in range(n_batches):
        t += int(rng.integers(1, 5))  # idle intervals between updates: no forgetting must mean none
        examples = []
        features = min(max_features, 2 + b)  # new features keep appearing
        for i in range(int(rng.integers(1, 12))):
            chosen = rng.choice(features, size=int(rng.integers(1, features + 1)), replace=False)
            examples.append(Example("e", t * 60_000 - 1, f"u{b}-{i}", float(rng.normal() * 3),
                                    float(rng.uniform(0.2, 3.0)), float(rng.normal()),
                                    tuple(("f", str(int(c)), float(rng.normal())) for c in sorted(chosen))))
        batches.append((t * 60_000, examples))
    return batches


def _batch_ridge(batches, names, penalty):
    index = {nt: i for i, nt in enumerate(names)}
    rows, y, w, o = [], [], [], []
    for _, examples in batches:
        for ex in examples:
            x = np.zeros(len(names))
            x[0] = 1.0
            for name, term, value in ex.features:
                x[index[(name, term)]] = value
            rows.append(x)
            y.append(ex.label)
            w.append(ex.weight)
            o.append(ex.offset)
    X, y, w, o = np.array(rows), np.array(y), np.array(w), np.array(o)
    H = X.T @ (X * w[:, None]) + penalty * np.eye(len(names))
    return np.linalg.solve(H, X.T @ (w * (y - o))), H


@pytest.mark.parametrize("seed", range(6))
def test_linear_trainer_without_forgetting_is_batch_ridge_regression(seed):
    rng = np.random.default_rng(seed)
    batches = _regression_batches(rng, 7)
    penalty = float(rng.choice([0.1, 1.0, 10.0]))
    results = {}
    for hessian in ("full", "diagonal"):
        # Forgetting is on by default (a half-life); --forgetting-factor 1 turns it off whatever else.
        cfg = UpdateConfig(trainer="sequential_bayesian_linear", penalty=penalty, forgetting_factor=1.0,
                           hessian=hessian, forgetting_target=str(rng.choice(FORGETTING_TARGETS)))
        model = None
        for end, examples in batches:
            result = train_minibatch(model, "e", examples, end, cfg)
            assert result.failure is None and result.converged
            model = result.model
        results[hessian] = model
    model = results["full"]
    theta, H = _batch_ridge(batches, model.feature_names, penalty)
    scale = 1.0 + np.abs(theta)
    assert np.all(np.abs(model.means - theta) <= 1e-9 * scale)
    assert np.all(np.abs(model.precisions - np.diagonal(H)) <= 1e-9 * np.diagonal(H))
    np.testing.assert_allclose(model.precision_matrix, H, rtol=1e-12, atol=1e-12 * np.max(np.abs(H)))
    # With a diagonal Hessian the precision diagonal is still exact (it only adds up); the means are
    # those of a prior without its off-diagonal terms, so they are not the batch solution in general.
    diagonal = results["diagonal"]
    assert diagonal.feature_names == model.feature_names
    assert np.all(np.abs(diagonal.precisions - np.diagonal(H)) <= 1e-9 * np.diagonal(H))


def test_linear_trainer_diagonal_means_are_exact_after_one_minibatch():
    rng = np.random.default_rng(9)
    end, examples = _regression_batches(rng, 1)[0]
    cfg = UpdateConfig(trainer="sequential_bayesian_linear", penalty=2.0, forgetting_factor=1.0)
    model = train_minibatch(None, "e", examples, end, cfg).model
    theta, H = _batch_ridge([(end, examples)], model.feature_names, 2.0)
    np.testing.assert_allclose(model.means, theta, rtol=1e-10, atol=1e-12)


def test_the_job_with_forgetting_factor_one_is_batch_ridge_regression(tmp_path):
    rng = np.random.default_rng(21)
    batches = _regression_batches(rng, 6)
    records = [{"userId": "e", "timestamp": ex.timestamp_ms, "uid": ex.uid, "label": ex.label, "weight": ex.weight,
                "offset": ex.offset, "features": [{"name": n, "term": t, "value": v} for n, t, v in ex.features]}
               for _, examples in batches for ex in examples]
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--input", str(path), "--output", str(out),
                           "--entity-field", "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", "60",
                           "--trainer", "sequential_bayesian_linear", "--forgetting-factor", "1", "--hessian", "full",
                           "--penalty", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from jobutil import snapshot
    means, variances = snapshot(out)["e"]
    names = [("intercept", "intercept") if nt == ("(INTERCEPT)", "") else nt for nt in means]
    theta, H = _batch_ridge(batches, names, 3.0)
    assert np.all(np.abs(np.array(list(means.values())) - theta) <= 1e-9 * (1 + np.abs(theta)))
    precisions = 1.0 / np.array(list(variances.values()))
    assert np.all(np.abs(precisions - np.diagonal(H)) <= 1e-9 * np.diagonal(H))


def test_the_job_refuses_memoryless_trainers_naming_the_incremental_one(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--input", str(path), "--output", str(tmp_path / "o"),
                           "--entity-field", "u", "--timestamp-field", "t", "--trainer", "linear"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "sequential_bayesian_linear" in proc.stderr and "memoryless" in proc.stderr


# --------------------------------------------------------------------------------------------------
# Forgetting by event time, and where it pulls


def test_forgetting_factor_by_elapsed_time_and_half_life():
    assert forgetting_factor(60_000, 60_000, 0.8) == 0.8
    assert forgetting_factor(180_000, 60_000, 0.8) == pytest.approx(0.8 ** 3, rel=1e-15)
    assert forgetting_factor(0, 60_000, 0.0) == 1.0  # chunks of one interval: no time has passed
    assert forgetting_factor(10**12, 60_000, 1.0) == 1.0
    assert forgetting_factor(7200_000, 60_000, 0.5, half_life_ms=3600_000) == 0.25
    assert forgetting_factor(10**12, 60_000, 0.5, half_life_ms=math.inf) == 1.0
    cfg = UpdateConfig(forgetting_factor=0.5, minibatch_seconds=60)
    model = train_minibatch(None, "e", [Example("e", 1, "a", 1.0, 1.0, 0.0, ())], 60_000, cfg).model
    assert cfg.delta(model, 60_000 * 4) == 0.125  # three intervals later
    assert UpdateConfig(forgetting_factor=0.5, forgetting_clock="update").delta(model, 60_000 * 4) == 0.5
    assert UpdateConfig(forgetting_half_life_seconds=120.0).delta(model, 60_000 * 5) == 0.25
    assert UpdateConfig().delta(model._replace(window_end_ms=0), 60_000) == UpdateConfig().delta(model, 120_000)


def test_an_idle_entity_forgets_as_much_as_the_time_it_was_idle():
    # Linear trainer: the prior precision after k idle intervals is delta^k H + (1 - delta^k) lambda.
    cfg = UpdateConfig(trainer="sequential_bayesian_linear", penalty=2.0, forgetting_factor=0.7)
    ex = [Example("e", 1, "a", 3.0, 1.0, 0.0, (("f", "x", 1.0),))]
    first = train_minibatch(None, "e", ex, 60_000, cfg).model
    later = train_minibatch(first, "e", [Example("e", 1, "b", 1.0, 1.0, 0.0, ())], 60_000 * 4, cfg).model
    delta = 0.7 ** 3
    # ("f", "x") is not in the second mini-batch: its precision is the forgotten prior alone.
    assert later.precisions[1] == pytest.approx(delta * first.precisions[1] + (1 - delta) * 2.0, rel=1e-14)


@pytest.mark.parametrize("target", FORGETTING_TARGETS)
def test_forgetting_targets(target):
    # A coefficient the mini-batch does not touch ends at the minimiser of the forgotten prior.
    mean, precision = np.array([0.5, 1.5]), np.array([4.0, 6.0])
    reference = (np.array([-1.0]), np.array([3.0]))
    lam, delta = 2.0, 0.25
    prior = QuadraticPrior.sequential(mean, precision, None, lam, delta, target, reference)
    got = prior.minimiser()
    if target == "zero":
        want = delta * precision * mean / (delta * precision + (1 - delta) * lam)
    elif target == "variance":
        want = mean
    else:
        ref_mean, ref_precision = np.array([-1.0, 0.0]), np.array([3.0, lam])
        want = (delta * precision * mean + (1 - delta) * ref_precision * ref_mean) / (
            delta * precision + (1 - delta) * ref_precision)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # delta = 1: every target keeps the posterior exactly.
    same = QuadraticPrior.sequential(mean, precision, None, lam, 1.0, target, reference)
    assert same.minimiser().tolist() == mean.tolist() and same.hessian_diagonal().tolist() == precision.tolist()


@pytest.mark.parametrize("target", FORGETTING_TARGETS)
@pytest.mark.parametrize("kind", ["diagonal", "matrix"])
@pytest.mark.parametrize("delta", [0.0, 0.3, 1.0])
def test_prior_value_and_gradient_are_the_quadratic_and_value_and_gradient_to_the_bit(target, kind, delta):
    # The solver's one call per evaluation: the quadratic of the module docstring, and the very floats
    # of the two separate calls.
    rng = np.random.default_rng(sum(map(ord, target + kind)) + int(delta * 10))
    for d in (1, 3, 8):
        mean, precision = rng.normal(size=d), rng.uniform(0.1, 20.0, d)
        A = rng.normal(size=(d, d))
        matrix = A @ A.T + np.eye(d) if kind == "matrix" else None
        prior = QuadraticPrior.sequential(mean, None if matrix is not None else precision, matrix, 3.0, delta,
                                          target, (rng.normal(size=d // 2), rng.uniform(1.0, 3.0, d // 2)))
        for _ in range(20):
            theta = rng.normal(scale=3.0, size=d)
            value, gradient = prior.value_and_gradient(theta)
            assert value == prior.value(theta)
            assert gradient.tolist() == prior.gradient(theta).tolist()
            P = np.diag(prior.precision) if prior.matrix is None else prior.matrix
            ridge = np.broadcast_to(prior.ridge, (d,))
            anchor = np.zeros(d) if prior.anchor is None else prior.anchor
            dev, rdev = theta - prior.center, theta - anchor
            want = prior.scale / 2 * dev @ P @ dev + 0.5 * np.sum(ridge * rdev * rdev)
            assert value == pytest.approx(want, rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(gradient, prior.scale * P @ dev + ridge * rdev, rtol=1e-12, atol=1e-12)


def test_target_initial_remembers_the_initial_model_across_updates():
    from transforms.models import RandomEffectModel
    from transforms.state import decode_model, encode_model
    initial = RandomEffectModel("e", (("intercept", "intercept"), ("f", "x")), np.array([0.2, 1.0]),
                                np.array([5.0, 8.0]))
    cfg = UpdateConfig(forgetting_factor=0.0, forgetting_target="initial")
    ex = [Example("e", 1, "a", 1.0, 1.0, 0.0, (("g", "y", 1.0),))]
    model = initial
    for step in range(1, 4):
        model = train_minibatch(model, "e", ex, 60_000 * step, cfg).model
        model = decode_model(encode_model(model))  # through the state coder, as in the job
        # delta = 0: the untouched ("f", "x") returns to the initial model every time
        assert model.means[1] == pytest.approx(1.0, rel=1e-14) and model.precisions[1] == pytest.approx(8.0)
    assert model.reference[0].tolist() == [0.2, 1.0]
    assert train_minibatch(None, "e", ex, 60_000, cfg).model.reference[0].tolist() == []  # cold: the cold prior


def test_poisson_job_trainer_learns_counts():
    rng = np.random.default_rng(3)
    cfg = UpdateConfig(trainer="sequential_bayesian_poisson", penalty=1.0, forgetting_factor=1.0)
    model, losses = None, []
    for step in range(1, 40):
        examples = [Example("e", 1, f"u{step}-{i}", float(rng.poisson(np.exp(1.0 + 0.5 * x))), 1.0, 0.0,
                            (("f", "x", float(x)),)) for i, x in enumerate(rng.normal(size=3))]
        result = train_minibatch(model, "e", examples, 60_000 * step, cfg)
        assert result.failure is None
        model = result.model
    assert model.means == pytest.approx([1.0, 0.5], abs=0.15)
    assert model_record(model, "sequential_bayesian_poisson")["modelClass"].endswith("PoissonRegressionModel")


def test_poisson_overflow_fails_cleanly_and_keeps_the_model():
    X = np.array([[1.0, 2.0], [1.0, 0.0]])
    data = IndexedDataset(X, [3.0, 1.0], np.ones(2), np.array([800.0, 0.0]))  # exp(800) overflows
    prior = IndexedModel(np.zeros(2), np.ones(2))
    model, loss, meta = TrainerSequentialBayesianPoissonLossWithL2(training_data=data, initial_model=prior,
                                                                   penalty=1.0, delta=0.5).train()
    assert meta["warnflag"] == 2 and model is prior and not np.isnan(loss)
    cfg = UpdateConfig(trainer="sequential_bayesian_poisson")
    result = train_minibatch(None, "e", [Example("e", 1, "a", 2.0, 1.0, 800.0, ())], 60_000, cfg)
    assert result.failure.startswith("training failed") and result.model.version == 0
