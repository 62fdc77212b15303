"""The job's fast paths give the same results as the general code they shortcut."""

import io

import fastavro
import numpy as np
import pytest

import lambda_core._newton

from lambda_core import (
    FORGETTING_TARGETS,
    INTERCEPT,
    LOGISTIC,
    TRAINERS,
    HessianType,
    IndexedDataset,
    IndexedModel,
    TrainerSequentialBayesianLogisticLossWithL2,
    newton_small,
)
from lambda_core._small import _low_rank_gram, low_rank_direction, newton_direction
from transforms import avro_encoding, state
from transforms.examples import Example
from transforms.models import RandomEffectModel, cold_model, model_record
from transforms.update import UpdateConfig, train_minibatch, train_minibatch_general, train_minibatch_small
from transforms.validation import ProgressiveValidation, ProgressiveValidationFn


def _validation_records(rng, count):
    return [{"windowEnd": 1_764_028_860_000 + int(rng.integers(0, 3)) * 3_600_000,
             "labels": [float(rng.random() < 0.3) for _ in range(k)],
             "weights": rng.choice([0.0, 1.0, 2.5], size=k).tolist(),
             "offsetScores": (rng.normal(size=k) * 3).tolist(),
             "modelScores": (rng.normal(size=k) * 3).tolist()}
            for k in rng.integers(1, 5, size=count)]


def test_validation_accumulators_encode_folded_and_merge_to_the_same_report():
    rng = np.random.default_rng(0)
    records = _validation_records(rng, 3000)
    whole = ProgressiveValidation()
    for r in records:
        whole.add(r)
    fn = ProgressiveValidationFn()
    coder = fn.get_accumulator_coder()
    assert coder.is_deterministic()
    parts = []
    for chunk in (records[:1000], records[1000:2500], records[2500:]):
        acc = fn.create_accumulator()
        for r in chunk:
            acc = fn.add_input(acc, r)
        encoded = coder.encode(acc)
        assert not encoded.startswith(b"\x80")  # not a pickle
        # What Beam ships between stages is the folded histograms, not the raw per-example scores.
        assert len(encoded) < 4 * 4 * 4000 * 8 + 10_000
        parts.append(coder.decode(encoded))
        assert coder.encode(parts[-1]) == encoded
    merged = fn.extract_output(fn.merge_accumulators(parts))
    expected = whole.report()
    assert merged["bucket_ms"] == expected["bucket_ms"]
    for got, want in zip([merged["overall"]] + merged["buckets"], [expected["overall"]] + expected["buckets"]):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if value is None or isinstance(value, int):
                assert got[key] == value, key
            else:
                assert abs(got[key] - value) <= 1e-12 * max(1.0, abs(value)), key


def test_model_record_with_intercept_first_equals_the_general_record():
    rng = np.random.default_rng(1)
    for d in (1, 2, 7, 30):
        names = (INTERCEPT,) + tuple((f"f{j}", "" if j % 3 else f"t{j}") for j in range(d - 1))
        means = rng.normal(size=d) + 0.5
        for precisions in (rng.uniform(0.5, 20.0, size=d), None):
            model = RandomEffectModel("e", names, means, precisions, 4, 120_000)
            fast = model_record(model, "logistic")
            # Any positive threshold takes the general path; this one keeps every coefficient here.
            assert fast == model_record(model, "logistic", sparsity_threshold=5e-324)
            assert fast["means"][0] == {"name": "(INTERCEPT)", "term": "", "value": means[0]}
            reordered = RandomEffectModel("e", names[1:] + names[:1], np.roll(means, -1),
                                          None if precisions is None else np.roll(precisions, -1))
            assert model_record(reordered, "logistic") == fast


def test_avro_string_cache_stays_bounded_and_correct(monkeypatch):
    monkeypatch.setattr(avro_encoding, "_MAX_ENCODED_STRINGS", 5)
    records = [{"modelId": f"m{i}", "modelClass": None, "lossFunction": None, "variances": None,
                "means": [{"name": f"n{i % 7}" + "é" * (i % 3), "term": "t" * (i * 7 % 90), "value": float(i)}]}
               for i in range(40)]
    buffer = io.BytesIO()
    writer = avro_encoding.ModelContainerWriter(buffer, "BayesianLinearModelAvro")
    for r in records:
        writer.write(r)
    writer.flush()
    assert len(avro_encoding._ENCODED_STRINGS) <= 5
    buffer.seek(0)
    assert list(fastavro.reader(buffer)) == records


# --------------------------------------------------------------------------------------------------
# The small-problem training path against the general one (lambda_core's trainer classes)

TRAINER_NAMES = tuple(TRAINERS)
HESSIAN_NAMES = ("full", "diagonal", "identity", "none")


def _random_label(rng, trainer):
    if trainer.endswith("logistic"):
        return float(rng.choice([0.0, 1.0, -1.0]))
    if trainer.endswith("poisson"):
        return float(rng.poisson(1.5))
    return float(rng.normal() * 2)


def _random_examples(rng, n, features, trainer, scale=1.0, zero_rate=0.1):
    examples = []
    for i in range(n):
        chosen = rng.choice(features, size=min(features, int(rng.integers(0, 4))), replace=False)
        values = [0.0 if rng.random() < zero_rate else float(rng.normal() * scale) for _ in chosen]
        label = _random_label(rng, trainer)
        examples.append(Example("e", 0, f"u{i}", label, float(rng.choice([1.0, 0.0, 2.5, 0.3])),
                                float(rng.normal()), tuple(("f", str(int(c)), v) for c, v in zip(chosen, values))))
    return examples


def _close(a, b, what, tol=1e-12):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    assert np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b))), (what, a, b)


def _assert_same_result(small, general, tol=1e-12):
    assert (small.failure is None) == (general.failure is None), (small.failure, general.failure)
    assert small.failure == general.failure
    assert small.num_examples == general.num_examples and small.converged == general.converged
    for field in ("labels", "weights", "offset_scores"):
        assert np.array_equal(getattr(small, field), getattr(general, field)), field
    _close(small.model_scores, general.model_scores, "model_scores", tol)
    s, g = small.model, general.model
    assert s.entity_id == g.entity_id and s.feature_names == g.feature_names
    assert s.version == g.version and s.window_end_ms == g.window_end_ms
    _close(s.means, g.means, "means", tol)
    assert (s.precisions is None) == (g.precisions is None)
    if g.precisions is not None:
        _close(s.precisions, g.precisions, "precisions", tol)
    assert (s.precision_matrix is None) == (g.precision_matrix is None)
    if g.precision_matrix is not None:
        _close(s.precision_matrix, g.precision_matrix, "precision_matrix", tol)
    if general.loss is None:
        assert small.loss is None
    else:
        _close(small.loss, general.loss, "loss", tol)


@pytest.mark.parametrize("trainer", TRAINER_NAMES)
@pytest.mark.parametrize("hessian", HESSIAN_NAMES)
@pytest.mark.parametrize("conditioning", ["good", "poor"])
def test_small_path_equals_general_path_over_sequences_of_updates(trainer, hessian, conditioning):
    rng = np.random.default_rng(sum(map(ord, trainer + hessian + conditioning)))
    if conditioning == "good":
        penalties, scales, tol = [1.0, 10.0, 300.0], [1e-3, 0.3, 1.0, 3.0], 1e-12
    else:
        # Curvature up to ~1e6 times the prior's: two backward-stable solvers agree to ~eps * 1e6.
        penalties, scales, tol = [0.01, 0.1], [10.0, 30.0], 1e-9
    if trainer.endswith("poisson"):
        scales = [s for s in scales if s <= 1.0] or [1.0]  # exp(margin) of huge features overflows
    compared = 0
    for trial in range(60):
        cfg = UpdateConfig(trainer=trainer, hessian=hessian, penalty=float(rng.choice(penalties)),
                           forgetting_factor=float(rng.choice([0.0, 0.3, 0.8, 1.0])),
                           forgetting_target=str(rng.choice(FORGETTING_TARGETS)))
        scale = float(rng.choice(scales))
        model = None
        features = int(rng.integers(1, 15))  # new features keep appearing over the updates
        for step in range(5):
            examples = _random_examples(rng, int(rng.integers(1, 9)), features, trainer, scale)
            general = train_minibatch_general(model, "e", examples, 60_000 * (step + 1), cfg)
            small = train_minibatch_small(model or cold_model("e", cfg.penalty), "e", examples,
                                          60_000 * (step + 1), cfg)
            auto = train_minibatch(model, "e", examples, 60_000 * (step + 1), cfg)
            if small is None:
                _assert_same_result(auto, general, tol)
            else:
                compared += 1
                _assert_same_result(small, general, tol)
                assert auto.model.means.tolist() == small.model.means.tolist()
            model = general.model
    assert compared >= 60  # the small path was really exercised


def test_small_path_reports_the_same_training_failures():
    cfg = UpdateConfig()
    for value in (1e200, -1e200, 1e160):
        examples = [Example("e", 0, "a", 1.0, 1.0, 0.2, (("f", "big", value),)),
                    Example("e", 0, "b", 0.0, 1.0, -0.1, (("f", "x", 1.0),))]
        general = train_minibatch_general(None, "e", examples, 60_000, cfg)
        small = train_minibatch_small(cold_model("e", cfg.penalty), "e", examples, 60_000, cfg)
        assert general.failure is not None and general.failure.startswith("training failed")
        _assert_same_result(small, general)
        assert small.model is not None and small.model.version == 0  # the previous (cold) model is kept


@pytest.mark.parametrize("trainer", TRAINER_NAMES)
def test_small_path_on_huge_but_finite_features_matches_the_general_path(trainer):
    # Curvature far above the prior's: the low-rank Newton step would lose every digit there, so the
    # small path must fall back to its k x k solve and still agree with the trainers.
    cfg = UpdateConfig(trainer=trainer)
    for value in (1e2, 1e3, 1e10, 1e100, 1e154):
        examples = [Example("e", 0, "a", 1.0, 1.0, 0.3, (("f", "1", value),)),
                    Example("e", 0, "b", 0.0, 1.0, 0.3, (("f", "2", 1.0),))]
        general = train_minibatch_general(None, "e", examples, 60_000, cfg)
        small = train_minibatch_small(cold_model("e", cfg.penalty), "e", examples, 60_000, cfg)
        _assert_same_result(small, general)


def test_small_path_declines_what_it_does_not_cover():
    examples = [Example("e", 0, "a", 1.0, 1.0, 0.0, (("f", "1", 1.0),))]
    cold = cold_model("e", 10.0)
    # No penalty: the optimum may not be unique.
    assert train_minibatch_small(cold_model("e", 0.0), "e", examples, 60_000, UpdateConfig(penalty=0.0)) is None
    # A full prior matrix.
    full = UpdateConfig(hessian="full")
    first = train_minibatch(None, "e", examples, 60_000, full).model
    assert first.precision_matrix is not None
    assert train_minibatch_small(first, "e", examples, 120_000, full) is None
    _assert_same_result(train_minibatch(first, "e", examples, 120_000, full),
                        train_minibatch_general(first, "e", examples, 120_000, full))
    # Too big.
    many = [Example("e", 0, f"u{i}", float(i % 2), 1.0, 0.0, tuple(("f", str(j), 1.0 + i + j) for j in range(9)))
            for i in range(20)]
    assert train_minibatch_small(cold, "e", many, 60_000, UpdateConfig()) is None
    # Labels the logistic trainers reject: the general path raises its error.
    bad = [Example("e", 0, "a", 0.5, 1.0, 0.0, ())]
    assert train_minibatch_small(cold, "e", bad, 60_000, UpdateConfig()) is None
    with pytest.raises(ValueError, match="labels"):
        train_minibatch(None, "e", bad, 60_000, UpdateConfig())


def test_newton_small_takes_the_trainers_steps(monkeypatch):
    # One Newton step, and the full solve, from the same start: the same iterate as the trainer's
    # numpy iteration (which would hand these tiny problems to newton_small itself).
    monkeypatch.setattr(lambda_core._newton, "SMALL_MAX_ENTRIES_FROM_ARRAYS", 0)
    rng = np.random.default_rng(5)
    for trial in range(40):
        n, k = int(rng.integers(1, 8)), int(rng.integers(2, 9))
        X = rng.normal(size=(n, k)) * (rng.random(size=(n, k)) < 0.6)
        X[:, 0] = 1.0
        y = (rng.random(n) < 0.5).astype(float)
        w, offsets = rng.uniform(0.0, 2.0, n), rng.normal(size=n)
        theta0, precision = rng.normal(size=k), rng.uniform(0.5, 20.0, k)
        used = np.any(X, axis=0)
        X, theta0, precision = X[:, used], theta0[used], precision[used]
        rows = [list(zip(np.flatnonzero(r).tolist(), r[r != 0].tolist())) for r in X]
        data = IndexedDataset(X, y, w, offsets)
        for iterations in (1, 2, 100):
            trainer = TrainerSequentialBayesianLogisticLossWithL2(
                training_data=data, initial_model=IndexedModel(theta0, precision), penalty=3.0, delta=0.7,
                hessian_type=HessianType.DIAGONAL)
            model, loss, meta = trainer.train(max_iterations=iterations)
            got = newton_small(rows, (-(2 * y - 1)).tolist(), w.tolist(), offsets.tolist(), theta0.tolist(),
                               precision.tolist(), [0.3 * 3.0] * len(theta0), 0.7, LOGISTIC,
                               max_iterations=iterations)
            assert (got.warnflag, got.nit, got.funcalls) == (meta["warnflag"], meta["nit"], meta["funcalls"])
            _close(got.theta, model.theta, "theta", 1e-11)
            _close(got.loss, loss, "loss")


def test_low_rank_step_equals_the_full_newton_step():
    rng = np.random.default_rng(9)
    for trial in range(200):
        n, k = int(rng.integers(1, 6)), int(rng.integers(6, 14))
        rows = []
        for _ in range(n):
            cols = sorted(rng.choice(k, size=int(rng.integers(1, k)), replace=False).tolist())
            rows.append((cols, rng.normal(size=len(cols)).tolist()))
        d2, r = rng.uniform(0.0, 0.25, n).tolist(), rng.uniform(0.5, 10.0, k).tolist()
        g = rng.normal(size=k).tolist()
        X = np.zeros((n, k))
        for i, (cols, vals) in enumerate(rows):
            X[i, cols] = vals
        H = X.T @ (X * np.array(d2)[:, None]) + np.diag(r)
        pairs = [list(zip(cols, vals)) for cols, vals in rows]
        step, decrement = low_rank_direction(pairs, _low_rank_gram(pairs, r), d2, r, g)
        _close(step, -np.linalg.solve(H, g), "step", 1e-11)
        _close(decrement, g @ np.linalg.solve(H, g), "decrement", 1e-11)
        _close(newton_direction(H.tolist(), g), -np.linalg.solve(H, g), "cholesky step", 1e-11)


# --------------------------------------------------------------------------------------------------
# State coder: the one-byte varint and string fast paths keep the byte format


def _leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_examples_decoded_by_offsets_equal_the_reader_and_hand_it_every_other_case():
    rng = np.random.default_rng(21)
    texts = ["", "u", "é" * 40, "n" * 127, "n" * 128, "ü" * 70, "x" * 300]
    for trial in range(300):
        pick = lambda: texts[int(rng.integers(len(texts)))]  # noqa: E731
        features = tuple((pick(), pick(), float(rng.normal())) for _ in range(int(rng.integers(0, 5))))
        source = [None, b"", b"{}", bytes(127), bytes(128), bytes(16_383), bytes(16_384), bytes(70_000)][trial % 8]
        example = Example(pick(), int(rng.integers(-2**62, 2**62)), None if trial % 3 == 0 else pick(),
                          float(rng.integers(2)), float(rng.uniform(0, 2)), float(rng.normal()), features,
                          source, 0.0 if trial % 2 else float(rng.normal()))
        data = state.encode_example(example)
        assert state._decode_example_by_reader(data, data[0]) == example
        fast = state._decode_example_by_offsets(data, data[0])
        assert fast is None or fast == example
        assert state.decode_example(data) == example
        # bytes that are not a whole example: the offsets give up, the reader says why
        for cut in (len(data) - 1, len(data) // 2, 10):
            assert state._decode_example_by_offsets(data[:cut], data[0]) is None
            with pytest.raises(state.StateDecodeError):
                state.decode_example(data[:cut])
        assert state._decode_example_by_offsets(data + b"\x00", data[0]) is None
    # the usual example takes the offsets
    usual = Example("n7", 1_764_028_800_123, "e1", 1.0, 1.0, 0.5, (("f", "3", 0.25),), b'{"uid": "e1"}' * 20, 0.1)
    assert state._decode_example_by_offsets(state.encode_example(usual), 3) == usual


@pytest.mark.parametrize("length", [0, 1, 126, 127, 128, 129, 300, 20_000])
def test_state_strings_and_varints_keep_their_bytes_around_the_one_byte_boundary(length):
    name = ("é" * length)[:length] if length % 2 else "n" * length
    encoded_name = name.encode("utf-8")
    example = Example("entity", 1_764_028_800_123, "uid", 1.0, 0.5, -0.25, ((name, "t", 2.0), ("a", name, 3.0)))
    data = state.encode_example(example)
    assert _leb128(len(encoded_name)) + encoded_name + b"\x01t" in data
    assert state.decode_example(data) == example
    model = RandomEffectModel(name, (INTERCEPT,) + tuple((f"f{i}", name) for i in range(length % 5)),
                              np.arange(1.0 + length % 5), np.full(1 + length % 5, 2.0), length, 10**12 + length)
    blob = state.encode_model(model)
    assert blob[1:1 + len(_leb128(len(encoded_name)))] == _leb128(len(encoded_name))
    back = state.decode_model(blob)
    assert back.entity_id == name and back.feature_names == model.feature_names
    assert (back.version, back.window_end_ms) == (length, 10**12 + length)
    for cut in (1, 2, len(blob) // 2, len(blob) - 1):
        with pytest.raises(state.StateDecodeError):
            state.decode_model(blob[:cut])


@pytest.mark.parametrize("trainer", TRAINER_NAMES)
@pytest.mark.parametrize("hessian", [HessianType.FULL, HessianType.DIAGONAL, HessianType.NONE])
def test_trainer_classes_hand_tiny_problems_to_the_plain_python_solver_with_the_same_result(trainer, hessian,
                                                                                           monkeypatch):
    rng = np.random.default_rng(len(trainer) + hessian.value)
    cls = TRAINERS[trainer].trainer_class
    for trial in range(30):
        n, d = int(rng.integers(1, 5)), int(rng.integers(2, 8))  # at most SMALL_MAX_ENTRIES_FROM_ARRAYS
        X = rng.normal(size=(n, d)) * (rng.random(size=(n, d)) < 0.6)
        X[:, 0] = 1.0
        y = np.array([_random_label(rng, trainer) for _ in range(n)])
        data = IndexedDataset(X, y, rng.uniform(0.0, 2.0, n), rng.normal(size=n))
        prior = IndexedModel(rng.normal(size=d) * 0.3, rng.uniform(0.5, 20.0, d))
        kwargs = dict(training_data=data, initial_model=prior, penalty=float(rng.choice([0.5, 3.0])),
                      delta=float(rng.choice([0.0, 0.6, 1.0])), hessian_type=hessian,
                      forgetting_target=str(rng.choice(FORGETTING_TARGETS)))
        model, loss, meta = cls(**kwargs).train()
        assert set(meta["inner_solves"]) <= {"plain-python"}
        with monkeypatch.context() as patched:
            patched.setattr(lambda_core._newton, "SMALL_MAX_ENTRIES_FROM_ARRAYS", 0)
            ref_model, ref_loss, ref_meta = cls(**kwargs).train()
        assert "plain-python" not in ref_meta["inner_solves"]
        assert (meta["warnflag"], meta["nit"], meta["funcalls"]) == (ref_meta["warnflag"], ref_meta["nit"],
                                                                      ref_meta["funcalls"])
        _close(model.theta, ref_model.theta, "theta", 1e-11)
        _close(loss, ref_loss, "loss")
        _close(meta["grad"], ref_meta["grad"], "grad", 1e-9)
        if hessian is HessianType.NONE:
            assert model.hessian is None and ref_model.hessian is None
        else:
            _close(model.hessian.toarray(), ref_model.hessian.toarray(), "hessian")
