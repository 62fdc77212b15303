"""Unit tests of lambda_core: the tutorial API, labels, numerics, sampling, metrics."""

import warnings

import numpy as np
import pytest
from scipy import sparse

import lambda_core
from lambda_core import (
    Feature,
    HessianType,
    IndexedDataset,
    IndexedModel,
    IndexMap,
    TrainerLogisticLossWithL2,
    TrainerSequentialBayesianLogisticLossWithL2,
    TrainerSequentialBayesianPoissonLossWithL2,
    TrainerSquareLossWithL2,
    TrainingRecord,
    evaluate,
    index_domain_coeffs_to_nt_domain_coeffs,
    nt_domain_coeffs_to_index_domain_coeffs,
    nt_domain_data_to_index_domain_data,
    score_linear_model,
)

SEASONS = ["winter", "spring", "summer", "fall"]


def season_records(rng, n, true_effects):
    records = []
    for _ in range(n):
        season = rng.integers(4)
        offset = float(rng.normal(scale=0.8))
        margin = offset + true_effects[season]
        label = 1.0 if rng.random() < 1 / (1 + np.exp(-margin)) else 0.0
        features = [Feature("season", s, 1.0 if i == season else 0.0) for i, s in enumerate(SEASONS)]
        records.append(TrainingRecord(label=label, weight=1.0, offset=offset, features=features))
    return records


def test_tutorial_cycle_runs_unchanged_and_learns():
    rng = np.random.default_rng(3)
    true_effects = np.array([1.5, -1.0, 0.5, -0.5])
    training_data = season_records(rng, 400, true_effects)
    test_data = season_records(rng, 400, true_effects)
    model_coefficients = [Feature("intercept", "intercept", 1.0), Feature("season", "winter", 0.423)]
    model_coefficient_variances = [Feature("intercept", "intercept", 0.5), Feature("season", "winter", 0.2)]

    index_map, index_map_metadata = IndexMap.from_records_means_and_variances(
        training_data, model_coefficients, model_coefficient_variances
    )
    assert index_map_metadata == {"num_nts_in_both": 1, "num_nts_in_coeffs_only": 0, "num_nts_in_records_only": 3}
    indexed_training_data = nt_domain_data_to_index_domain_data(training_data, index_map)
    indexed_test_data = nt_domain_data_to_index_domain_data(test_data, index_map)
    initial_model = nt_domain_coeffs_to_index_domain_coeffs(
        model_coefficients, model_coefficient_variances, index_map, 10.0
    )
    trainer = TrainerSequentialBayesianLogisticLossWithL2(
        training_data=indexed_training_data, initial_model=initial_model, penalty=10.0, delta=0.8
    )
    updated_model, updated_model_loss, training_metadata = trainer.train()
    assert training_metadata["warnflag"] == 0
    assert np.isclose(updated_model_loss, trainer.loss(updated_model.theta))

    before = evaluate(["auc"], score_linear_model(initial_model, indexed_test_data), indexed_test_data.y)["auc"]
    after = evaluate(["auc"], score_linear_model(updated_model, indexed_test_data), indexed_test_data.y)["auc"]
    assert after > before + 0.02

    means, variances = index_domain_coeffs_to_nt_domain_coeffs(updated_model, index_map)
    assert set(means) == {("intercept", "intercept")} | {("season", s) for s in SEASONS}
    # The learned season effects order like the true ones.
    learned = np.array([means[("season", s)] for s in SEASONS])
    assert list(np.argsort(learned)) == list(np.argsort(true_effects))
    # Written variance is 1/H_ii.
    diag = updated_model.hessian_diagonal()
    for i, nt in enumerate(index_map.name_terms):
        assert variances[nt] == pytest.approx(1.0 / diag[i])


def test_every_public_name_is_exported():
    for name in lambda_core.__all__:
        assert getattr(lambda_core, name) is not None
    assert {m.name for m in HessianType} == {"FULL", "DIAGONAL", "IDENTITY", "NONE"}


def test_intercept_is_index_zero_and_value_one():
    records = [TrainingRecord(1.0, 1.0, 0.0, [Feature("a", "x", 2.0)]), TrainingRecord(0.0, 1.0, 0.0, [])]
    imap, _ = IndexMap.from_records_means_and_variances(records, [Feature("b", "y", 0.1)], [])
    assert imap.get_index(("intercept", "intercept")) == 0 == imap.intercept_index
    assert imap.name_terms == [("intercept", "intercept"), ("b", "y"), ("a", "x")]
    X = nt_domain_data_to_index_domain_data(records, imap).X.toarray()
    assert X.tolist() == [[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]]
    with pytest.raises(IndexError):
        imap.get_index(("missing", "term"))
    with pytest.raises(IndexError):
        nt_domain_data_to_index_domain_data([TrainingRecord(1.0, 1.0, 0.0, [Feature("z", "z", 1.0)])], imap)


def test_missing_variance_gets_prior_precision_penalty():
    imap = IndexMap()
    imap.batch_push([("a", "1"), ("b", "2")])
    model = nt_domain_coeffs_to_index_domain_coeffs(
        [Feature("a", "1", 0.5)], [Feature("a", "1", 0.25)], imap, regularization_penalty=7.0
    )
    assert model.theta.tolist() == [0.0, 0.5, 0.0]
    assert model.hessian_diagonal().tolist() == [7.0, 4.0, 7.0]
    assert model.hessian.diagonal().tolist() == [7.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="positive"):
        nt_domain_coeffs_to_index_domain_coeffs([], [Feature("a", "1", 0.0)], imap, 1.0)
    means, variances = index_domain_coeffs_to_nt_domain_coeffs(IndexedModel(model.theta), imap)
    assert variances is None and means[("a", "1")] == 0.5


def small_problem(seed=0, n=40, d=5, labels01=True):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, d - 1))])
    y = (rng.random(n) < 0.5).astype(float)
    if not labels01:
        y = 2 * y - 1
    return IndexedDataset(X, y, np.ones(n), rng.normal(size=n) * 0.3)


@pytest.mark.parametrize("trainer_cls", [TrainerLogisticLossWithL2, TrainerSequentialBayesianLogisticLossWithL2])
def test_logistic_labels_zero_one_and_plus_minus_one_agree(trainer_cls):
    m01, l01, _ = trainer_cls(training_data=small_problem(labels01=True), initial_model=IndexedModel(np.zeros(5)),
                              penalty=1.0).train()
    mpm, lpm, _ = trainer_cls(training_data=small_problem(labels01=False), initial_model=IndexedModel(np.zeros(5)),
                              penalty=1.0).train()
    np.testing.assert_allclose(m01.theta, mpm.theta, rtol=1e-12)
    assert l01 == pytest.approx(lpm, rel=1e-12)


def test_logistic_rejects_regression_labels():
    data = small_problem()
    data.y[3] = 0.5
    with pytest.raises(ValueError, match="0, 1"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(5)), penalty=1.0)


def test_square_loss_uses_the_raw_label():
    record = TrainingRecord(label=4.0, weight=1.0, offset=0.0, features=[Feature("x", "", 1.0)])
    imap, _ = IndexMap.from_records_means_and_variances([record], [], [])
    data = nt_domain_data_to_index_domain_data([record] * 3, imap)
    assert data.y.tolist() == [4.0, 4.0, 4.0]
    model, _, meta = TrainerSquareLossWithL2(
        training_data=data, initial_model=IndexedModel(np.zeros(2)), penalty=0.0, hessian_type=HessianType.FULL
    ).train()
    # Intercept and x are collinear (penalty 0, singular Hessian): any optimum predicts exactly 4.
    assert (data.X @ model.theta)[0] == pytest.approx(4.0, rel=1e-9)
    assert meta["warnflag"] == 0


def test_square_loss_closed_form_with_weights():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4))
    y = rng.normal(size=30) * 3
    w = rng.uniform(0.1, 2.0, size=30)
    o = rng.normal(size=30)
    lam = 0.7
    model, _, _ = TrainerSquareLossWithL2(
        training_data=IndexedDataset(X, y, w, o), initial_model=IndexedModel(np.zeros(4)), penalty=lam,
        hessian_type=HessianType.FULL,
    ).train()
    A = X.T @ (w[:, None] * X) + lam * np.eye(4)
    np.testing.assert_allclose(model.theta, np.linalg.solve(A, X.T @ (w * (y - o))), rtol=1e-9)
    np.testing.assert_allclose(model.hessian.toarray(), A, rtol=1e-12)


@pytest.mark.parametrize("hessian_type", list(HessianType))
def test_hessian_types(hessian_type):
    data = small_problem(seed=2)
    model, _, _ = TrainerSequentialBayesianLogisticLossWithL2(
        training_data=data, initial_model=IndexedModel(np.zeros(5)), hessian_type=hessian_type, penalty=2.0, delta=0.5
    ).train()
    if hessian_type is HessianType.NONE:
        assert model.hessian is None
    elif hessian_type is HessianType.IDENTITY:
        np.testing.assert_array_equal(model.hessian.toarray(), np.eye(5))
    else:
        X = data.X
        p = 1 / (1 + np.exp(-(X @ model.theta + data.offsets)))
        full = 0.5 * 2.0 * np.eye(5) + X.T @ ((p * (1 - p))[:, None] * X) + 0.5 * 2.0 * np.eye(5)
        expected = full if hessian_type is HessianType.FULL else np.diag(np.diag(full))
        np.testing.assert_allclose(model.hessian.toarray(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trainer_cls", [TrainerLogisticLossWithL2, TrainerSequentialBayesianLogisticLossWithL2,
                                         TrainerSquareLossWithL2])
@pytest.mark.parametrize("offset", [900.0, -900.0, 1e4, -1e4])
def test_extreme_margins_stay_finite(trainer_cls, offset):
    rng = np.random.default_rng(1)
    n = 50
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3)) * 50])
    y = (rng.random(n) < 0.5).astype(float)
    data = IndexedDataset(X, y, np.ones(n), np.full(n, offset) + rng.normal(size=n) * 10)
    model, loss, meta = trainer_cls(training_data=data, initial_model=IndexedModel(np.zeros(4)), penalty=1.0,
                                    hessian_type=HessianType.FULL).train()
    assert np.isfinite(loss)
    assert np.all(np.isfinite(model.theta))
    assert np.all(np.isfinite(model.hessian.toarray()))
    assert meta["warnflag"] in (0, 1)
    assert np.isfinite(trainer_cls(training_data=data, initial_model=IndexedModel(np.zeros(4)),
                                   penalty=1.0).loss(np.full(4, 100.0)))


def test_optimizer_failure_returns_initial_model_unchanged():
    data = small_problem()
    data.offsets[0] = np.nan
    initial = IndexedModel(np.arange(5.0) / 10, sparse.diags(np.full(5, 3.0)).tocsc())
    model, loss, meta = TrainerSequentialBayesianLogisticLossWithL2(
        training_data=data, initial_model=initial, penalty=1.0, delta=0.8
    ).train()
    assert meta["warnflag"] == 2
    assert model is initial
    assert not np.isnan(loss)


def test_iteration_limit_is_reported():
    data = small_problem()
    _, _, meta = TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(5)),
                                           penalty=1.0).train(max_iterations=1)
    assert meta["warnflag"] == 1 and meta["nit"] == 1
    assert set(meta) >= {"warnflag", "nit", "funcalls", "task"}


def test_bad_hyperparameters_are_rejected():
    data = small_problem()
    with pytest.raises(ValueError, match="penalty"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(5)), penalty=-1.0)
    with pytest.raises(ValueError, match="delta"):
        TrainerSequentialBayesianLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(5)),
                                                     penalty=1.0, delta=1.5)
    with pytest.raises(ValueError, match="coefficients"):
        TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(3)), penalty=1.0)


def test_unseen_columns_are_solved_in_closed_form():
    # Column 3 never appears in the data: the optimum shrinks its prior mean by the forgetting factor.
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(20), rng.normal(size=(20, 2)), np.zeros(20)])
    data = IndexedDataset(X, (rng.random(20) < 0.5).astype(float), np.ones(20), np.zeros(20))
    prior = IndexedModel(np.array([0.1, 0.2, 0.3, 0.4]), np.array([5.0, 5.0, 5.0, 8.0]))
    lam, delta = 2.0, 0.7
    trainer = TrainerSequentialBayesianLogisticLossWithL2(
        training_data=data, initial_model=prior, penalty=lam, delta=delta, hessian_type=HessianType.DIAGONAL
    )
    model, loss, _ = trainer.train()
    assert model.theta[3] == pytest.approx(delta * 8.0 * 0.4 / ((1 - delta) * lam + delta * 8.0))
    assert np.max(np.abs(trainer.gradient(model.theta))) < 1e-6
    assert loss == pytest.approx(trainer.loss(model.theta), rel=1e-12)
    assert model.hessian_diagonal()[3] == pytest.approx(delta * 8.0 + (1 - delta) * lam)


@pytest.mark.parametrize("diagonal", [True, False])
def test_thompson_sampling_variance_is_inverse_hessian(diagonal):
    c = 0.5
    if diagonal:
        hessian = sparse.diags([4.0, 25.0, 100.0]).tocsc()
        covariance = c * np.diag([1 / 4.0, 1 / 25.0, 1 / 100.0])
    else:
        hessian = np.array([[4.0, 1.0, 0.0], [1.0, 25.0, 2.0], [0.0, 2.0, 100.0]])
        covariance = c * np.linalg.inv(hessian)
    model = IndexedModel(np.array([0.5, -1.0, 2.0]), hessian)
    data = IndexedDataset(np.eye(3), np.zeros(3), np.ones(3), np.zeros(3))
    rng = np.random.default_rng(11)
    n = 20000
    draws = np.array([score_linear_model(model, data, exploration_threshold=c, rng=rng) for _ in range(n)])
    # Whitened by the claimed covariance, the draws must be standard normal: mean 0, covariance I.
    L = np.linalg.cholesky(covariance)
    white = np.linalg.solve(L, (draws - model.theta).T).T
    standard_error = 1 / np.sqrt(n)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=5 * standard_error)
    np.testing.assert_allclose(np.cov(white.T), np.eye(3), atol=5 * np.sqrt(2) * standard_error)
    # The per-coordinate variance is c / H_ii for a diagonal Hessian.
    if diagonal:
        np.testing.assert_allclose(draws.var(axis=0), c / hessian.diagonal(), rtol=0.05)


def test_thompson_sampling_is_reproducible_and_plain_scoring_is_deterministic():
    model = IndexedModel(np.array([0.5, -1.0]), np.array([4.0, 9.0]))
    data = IndexedDataset(np.array([[1.0, 2.0]]), [1.0], [1.0], [0.25])
    assert score_linear_model(model, data).tolist() == [0.5 - 2.0 + 0.25]
    a = score_linear_model(model, data, exploration_threshold=1.0, rng=42)
    b = score_linear_model(model, data, exploration_threshold=1.0, rng=np.random.default_rng(42))
    assert a.tolist() == b.tolist()
    with pytest.raises(ValueError, match="Hessian"):
        score_linear_model(IndexedModel(np.zeros(2)), data, exploration_threshold=1.0)
    with pytest.raises(ValueError, match="exploration_threshold"):
        score_linear_model(model, data, exploration_threshold=-1.0)


def test_metrics():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    targets = np.array([0, 0, 1, 1, 1])
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both), (0.4 > 0.1), (0.4 = 0.4) -> 4.5 / 6.
    result = evaluate(["auc", "rmse", "log_loss"], scores, targets)
    assert result["auc"] == pytest.approx(4.5 / 6)
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((scores - targets) ** 2)))
    assert result["log_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-np.where(targets > 0, 1, -1) * scores))))
    assert evaluate(["auc"], scores, 2 * targets - 1)["auc"] == pytest.approx(4.5 / 6)
    assert np.isnan(evaluate(["auc"], scores, np.ones(5))["auc"])
    assert np.isfinite(evaluate(["log_loss"], np.array([1e4, -1e4]), np.array([0, 1]))["log_loss"])
    with pytest.raises(ValueError, match="precision"):
        evaluate(["auc", "precision"], scores, targets)


def test_weights_count_in_loss_gradient_and_hessian():
    data = small_problem(seed=4)
    doubled = IndexedDataset(np.vstack([data.X, data.X]), np.concatenate([data.y, data.y]),
                             np.ones(2 * len(data.y)), np.concatenate([data.offsets, data.offsets]))
    weighted = IndexedDataset(data.X, data.y, np.full(len(data.y), 2.0), data.offsets)
    kwargs = dict(initial_model=IndexedModel(np.zeros(5)), penalty=1.5, hessian_type=HessianType.FULL)
    a, la, _ = TrainerLogisticLossWithL2(training_data=doubled, **kwargs).train()
    b, lb, _ = TrainerLogisticLossWithL2(training_data=weighted, **kwargs).train()
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-9)
    np.testing.assert_allclose(a.hessian.toarray(), b.hessian.toarray(), rtol=1e-9)
    assert la == pytest.approx(lb, rel=1e-12)


@pytest.mark.parametrize("n, d, trainer_cls", [
    (1, 1001, TrainerSequentialBayesianLogisticLossWithL2), (5, 600, TrainerSequentialBayesianLogisticLossWithL2),
    (60, 300, TrainerLogisticLossWithL2), (40, 400, TrainerSquareLossWithL2),
    (30, 300, TrainerSequentialBayesianPoissonLossWithL2)])
def test_wide_dense_problems_never_factorise_and_every_inner_solve_reaches_the_same_optimum(n, d, trainer_cls,
                                                                                              monkeypatch):
    """Few examples over many dense columns: the rule picks the low-rank (Woodbury) or the CG step, never
    the d x d factorisation, and Cholesky, Woodbury and CG steps all give the same optimum."""
    rng = np.random.default_rng(d)
    X = rng.normal(size=(n, d))
    if trainer_cls is TrainerSquareLossWithL2:
        labels = rng.normal(size=n)
    elif trainer_cls is TrainerSequentialBayesianPoissonLossWithL2:
        X *= 0.1
        labels = rng.poisson(2.0, size=n).astype(float)
    else:
        labels = rng.integers(0, 2, size=n).astype(float)
    data = IndexedDataset(X, labels, rng.uniform(0.5, 2.0, size=n), rng.normal(scale=0.5, size=n))
    kwargs = dict(penalty=3.0)
    if issubclass(trainer_cls, lambda_core._trainer.SequentialBayesianTrainer):
        prior = IndexedModel(rng.normal(scale=0.3, size=d) * 0.1, sparse.diags(rng.uniform(1, 20, size=d)).tocsc())
        kwargs.update(initial_model=prior, delta=0.8)
    else:
        kwargs.update(initial_model=IndexedModel(np.zeros(d)))

    def train():
        return trainer_cls(training_data=data, hessian_type=HessianType.DIAGONAL, **kwargs).train()

    chosen_model, chosen_loss, chosen_meta = train()
    assert chosen_meta["warnflag"] == 0
    assert "cholesky" not in chosen_meta["inner_solves"] and chosen_meta["inner_solves"]
    for inner in (lambda_core._newton.CHOLESKY, lambda_core._newton.WOODBURY, lambda_core._newton.CG):
        with monkeypatch.context() as patched:
            patched.setattr(lambda_core._newton, "choose_inner_solve", lambda *_, inner=inner: inner)
            model, loss, meta = train()
        assert meta["warnflag"] == 0 and set(meta["inner_solves"]) == {inner.name}
        assert loss == pytest.approx(chosen_loss, rel=1e-12)
        # all stop on the Newton decrement (loss optimal to ~1e-12): theta agrees to ~1e-8 here
        assert np.allclose(model.theta, chosen_model.theta, rtol=1e-6, atol=1e-6)
        assert np.allclose(model.hessian_diagonal(), chosen_model.hessian_diagonal(), rtol=1e-7)


def test_sparse_products_without_scipys_dispatch_equal_the_public_product(monkeypatch):
    rng = np.random.default_rng(12)
    X = sparse.random(300, 400, density=0.03, format="csr", random_state=3)
    X.data = rng.normal(size=X.nnz)
    design = lambda_core._newton.DesignMatrix(X, None)
    assert not design.dense
    v, r = rng.normal(size=400), rng.normal(size=300)
    np.testing.assert_allclose(design.dot(v), X @ v, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(design.rdot(r), X.T @ r, rtol=1e-13, atol=1e-13)
    monkeypatch.setattr(lambda_core._newton, "_csr_matvec", None)  # a scipy without the private kernels
    np.testing.assert_array_equal(design.dot(v), X @ v)
    np.testing.assert_array_equal(design.rdot(r), X.T @ r)
    monkeypatch.setattr(lambda_core._newton, "_csr_tocsc", None)
    without = lambda_core._newton.DesignMatrix(X, None)
    for i in range(3):
        np.testing.assert_array_equal(without._csr_t[i], design._csr_t[i])
    d2 = rng.uniform(size=300)
    np.testing.assert_allclose(without.squared_column_dot(d2), X.T.multiply(X.T) @ d2, rtol=1e-13)
    np.testing.assert_allclose(without.weighted_gram(d2), (X.T @ sparse.diags(d2) @ X).toarray(), rtol=1e-12)


def test_a_sparse_design_with_repeated_entries_is_summed_before_it_is_squared():
    # Wide and sparse enough to stay sparse in the solver; row 0 holds column 5 twice.
    rng = np.random.default_rng(4)
    features = sparse.random(300, 399, density=0.03, format="csr", random_state=5)
    features.data = rng.normal(size=features.nnz)
    X = sparse.hstack([np.ones((300, 1)), features], format="csr")
    canonical = X.tocoo()
    rows = np.concatenate([canonical.row, [0, 0]])
    cols = np.concatenate([canonical.col, [5, 5]])
    vals = np.concatenate([canonical.data, [1.0, 1.0]])
    order = np.lexsort((cols, rows))
    indptr = np.searchsorted(rows[order], np.arange(301))
    repeated = sparse.csr_matrix((vals[order], cols[order], indptr), shape=X.shape)
    assert not repeated.has_canonical_format
    summed = repeated.copy()
    summed.sum_duplicates()
    d2 = rng.uniform(size=300)
    design = lambda_core._newton.DesignMatrix(repeated, None)
    assert not design.dense and not repeated.has_canonical_format  # the caller's matrix is left as it was
    np.testing.assert_allclose(design.squared_column_dot(d2), summed.T.multiply(summed.T) @ d2, rtol=1e-13)
    y = (rng.random(300) < 0.5).astype(float)
    fits = [TrainerSequentialBayesianLogisticLossWithL2(
        training_data=IndexedDataset(M, y, np.ones(300), np.zeros(300)),
        initial_model=IndexedModel(np.zeros(400), np.full(400, 2.0)), hessian_type=HessianType.DIAGONAL,
        penalty=1.0, delta=0.8).train() for M in (repeated, summed)]
    assert fits[0][2]["inner_solves"].keys() == {"cg"}
    np.testing.assert_allclose(fits[0][0].hessian_diagonal(), fits[1][0].hessian_diagonal(), rtol=1e-12)
    np.testing.assert_allclose(fits[0][0].theta, fits[1][0].theta, rtol=1e-9, atol=1e-12)


def test_the_logistic_loss_of_a_large_problem_warns_of_nothing_for_any_margin_or_weight():
    n = 80  # above the count from which the loss value takes numpy's vectorised exp and log1p
    w = np.zeros(n)
    w[0] = 1.0
    data = IndexedDataset(np.ones((n, 1)), np.ones(n), w, np.zeros(n))
    trainer = TrainerLogisticLossWithL2(training_data=data, initial_model=IndexedModel(np.zeros(1)), penalty=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.loss(np.array([-1000.0])) == pytest.approx(1000.0 + 0.5 * 1e6)
        assert trainer.loss(np.array([2.0])) == pytest.approx(np.log1p(np.exp(-2.0)) + 2.0)
