"""The job's fast paths give the same results as the general code they shortcut."""

import io
import pickle

import fastavro
import numpy as np

from lambda_core import INTERCEPT
from transforms import avro_encoding
from transforms.models import RandomEffectModel, model_record
from transforms.validation import ProgressiveValidation, ProgressiveValidationFn


def _validation_records(rng, count):
    return [{"windowEnd": 1_764_028_860_000 + int(rng.integers(0, 3)) * 3_600_000,
             "labels": [float(rng.random() < 0.3) for _ in range(k)],
             "weights": rng.choice([0.0, 1.0, 2.5], size=k).tolist(),
             "offsetScores": (rng.normal(size=k) * 3).tolist(),
             "modelScores": (rng.normal(size=k) * 3).tolist()}
            for k in rng.integers(1, 5, size=count)]


def test_validation_accumulators_pickle_folded_and_merge_to_the_same_report():
    rng = np.random.default_rng(0)
    records = _validation_records(rng, 3000)
    whole = ProgressiveValidation()
    for r in records:
        whole.add(r)
    fn = ProgressiveValidationFn()
    parts = []
    for chunk in (records[:1000], records[1000:2500], records[2500:]):
        acc = fn.create_accumulator()
        for r in chunk:
            acc = fn.add_input(acc, r)
        encoded = pickle.dumps(acc, pickle.HIGHEST_PROTOCOL)
        # What Beam ships between stages is the folded histograms, not the raw per-example scores.
        assert len(encoded) < 4 * 4 * 4000 * 8 + 10_000
        parts.append(pickle.loads(encoded))
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
