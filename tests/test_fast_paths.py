"""The job's fast paths give the same results as the general code they shortcut."""

import pickle

import numpy as np

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
