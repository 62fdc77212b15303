"""Progressive validation: each mini-batch is scored by the entity's model *before* it trains on
it, so the job measures what the random effects add over the fixed effect (the offset) alone.

Scores are aggregated per event-time bucket (an hour by default) into log-loss sums and score
histograms, from which AUC is computed with ties inside a bin counting one half.
"""

import struct
from typing import Dict, Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam import coders

# Histogram of logit scores: 0.01-wide bins over [-20, 20]; AUC from it is within ~1e-4 of exact.
_LOW, _HIGH, _BINS = -20.0, 20.0, 4000


def _bin(scores: np.ndarray) -> np.ndarray:
    scaled = (np.clip(scores, _LOW, _HIGH) - _LOW) / (_HIGH - _LOW) * _BINS
    return np.minimum(scaled.astype(np.int64), _BINS - 1)


def _log_loss_sum(scores, positive, weights) -> float:
    sign = np.where(positive, 1.0, -1.0)
    return float(weights @ np.logaddexp(0.0, -sign * scores))


def histogram_auc(pos: np.ndarray, neg: np.ndarray) -> Optional[float]:
    """AUC from weighted positive and negative score histograms (None if a class is empty)."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


class _Bucket:
    """Sums and score histograms of one time bucket.

    Mini-batches are small (a few examples each), so ``add`` only appends their values to plain
    lists; they are folded into the sums and histograms with a handful of numpy calls per ~100k
    examples, and always before the bucket is encoded (``ProgressiveValidationCoder``), so what
    travels is four histograms and six numbers, never the raw scores.
    """

    __slots__ = ("count", "weight", "loss_offset", "loss_model", "sq_offset", "sq_model", "hist", "_labels",
                 "_weights", "_offset_scores", "_model_scores")
    _FOLD_AT = 100_000

    def __init__(self):
        self.count = 0
        self.weight = 0.0
        self.loss_offset = self.loss_model = self.sq_offset = self.sq_model = 0.0
        self.hist = np.zeros((4, _BINS))  # positives/negatives for offset-only and model scores
        self._clear_pending()

    def _clear_pending(self):
        self._labels, self._weights, self._offset_scores, self._model_scores = [], [], [], []

    def add(self, labels, weights, offset_scores, model_scores):
        """Add one mini-batch's labels, weights and scores (sequences of floats)."""
        self._labels.extend(labels)
        self._weights.extend(weights)
        self._offset_scores.extend(offset_scores)
        self._model_scores.extend(model_scores)
        if len(self._labels) >= self._FOLD_AT:
            self.fold()

    def fold(self):
        """Fold the pending mini-batch values into the sums and histograms."""
        if not self._labels:
            return
        labels = np.asarray(self._labels, dtype=float)
        weights = np.asarray(self._weights, dtype=float)
        offset_scores = np.asarray(self._offset_scores, dtype=float)
        model_scores = np.asarray(self._model_scores, dtype=float)
        self._clear_pending()
        positive = labels > 0
        self.count += len(labels)
        self.weight += float(weights.sum())
        self.loss_offset += _log_loss_sum(offset_scores, positive, weights)
        self.loss_model += _log_loss_sum(model_scores, positive, weights)
        self.sq_offset += float(weights @ (offset_scores - labels) ** 2)
        self.sq_model += float(weights @ (model_scores - labels) ** 2)
        # Row of the histogram: 0/1 offset-only positive/negative, 2/3 with random effects.
        negative = (~positive).astype(np.int64)
        flat = self.hist.reshape(-1)
        flat += np.bincount(_bin(offset_scores) + negative * _BINS, weights, 4 * _BINS)
        flat += np.bincount(_bin(model_scores) + (2 + negative) * _BINS, weights, 4 * _BINS)

    def merge(self, other: "_Bucket"):
        self.fold()
        other.fold()
        self.count += other.count
        self.weight += other.weight
        self.loss_offset += other.loss_offset
        self.loss_model += other.loss_model
        self.sq_offset += other.sq_offset
        self.sq_model += other.sq_model
        self.hist += other.hist

    def report(self) -> Dict[str, Optional[float]]:
        self.fold()
        w = self.weight or float("nan")
        return {
            "examples": self.count,
            "log_loss_offset_only": self.loss_offset / w,
            "log_loss_with_random_effects": self.loss_model / w,
            "auc_offset_only": histogram_auc(self.hist[0], self.hist[1]),
            "auc_with_random_effects": histogram_auc(self.hist[2], self.hist[3]),
            "rmse_offset_only": float(np.sqrt(self.sq_offset / w)),
            "rmse_with_random_effects": float(np.sqrt(self.sq_model / w)),
        }


class ProgressiveValidation:
    """Accumulates validation records ({windowEnd, labels, weights, offsetScores, modelScores})."""

    def __init__(self, bucket_ms: int = 3_600_000):
        self.bucket_ms = bucket_ms
        self.buckets: Dict[int, _Bucket] = {}

    def add(self, record: dict) -> "ProgressiveValidation":
        start = (record["windowEnd"] - 1) // self.bucket_ms * self.bucket_ms
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = _Bucket()
        bucket.add(record["labels"], record["weights"], record["offsetScores"], record["modelScores"])
        return self

    def merge(self, other: "ProgressiveValidation") -> "ProgressiveValidation":
        for start, bucket in other.buckets.items():
            if start in self.buckets:
                self.buckets[start].merge(bucket)
            else:
                self.buckets[start] = bucket
        return self

    def counts(self) -> Dict[int, int]:
        """Examples scored per bucket start."""
        for bucket in self.buckets.values():
            bucket.fold()
        return {start: bucket.count for start, bucket in self.buckets.items()}

    def report_between(self, start_ms: Optional[int] = None, end_ms: Optional[int] = None) -> Dict[str, Optional[float]]:
        """The metrics of the buckets starting in [``start_ms``, ``end_ms``) together (a slice of
        the stream, e.g. the later part a tuned setting is judged on)."""
        merged = _Bucket()
        for start, bucket in self.buckets.items():
            if (start_ms is None or start >= start_ms) and (end_ms is None or start < end_ms):
                merged.merge(bucket)
        return merged.report()

    def report(self) -> dict:
        """Overall and per-bucket metrics, buckets in time order."""
        overall = _Bucket()
        for bucket in self.buckets.values():
            overall.merge(bucket)
        return {
            "bucket_ms": self.bucket_ms,
            "overall": overall.report(),
            "buckets": [dict(start_ms=start, **self.buckets[start].report()) for start in sorted(self.buckets)],
        }


class ProgressiveValidationFn(beam.CombineFn):
    """CombineFn form of ``ProgressiveValidation``: records in, the report dict out."""

    def __init__(self, bucket_ms: int = 3_600_000):
        self.bucket_ms = bucket_ms

    def create_accumulator(self):
        return ProgressiveValidation(self.bucket_ms)

    def add_input(self, accumulator, record):
        return accumulator.add(record)

    def merge_accumulators(self, accumulators: Iterable[ProgressiveValidation]):
        accumulators = iter(accumulators)
        result = next(accumulators)
        for acc in accumulators:
            result.merge(acc)
        return result

    def extract_output(self, accumulator):
        return accumulator.report()

    def get_accumulator_coder(self):
        return ProgressiveValidationCoder()


_HEADER = struct.Struct("<Bqi")  # version, bucket_ms, number of buckets
_BUCKET = struct.Struct("<qq5d")  # start, count, weight, loss_offset, loss_model, sq_offset, sq_model
_ACCUMULATOR_VERSION = 1


class ProgressiveValidationCoder(coders.Coder):
    """Explicit, versioned encoding of a ``ProgressiveValidation`` accumulator (Beam moves combine
    accumulators between stages; this keeps pickle out of it): a header, then per bucket its
    start, count and five sums and its four score histograms as little-endian float64."""

    def encode(self, value: "ProgressiveValidation") -> bytes:
        parts = [_HEADER.pack(_ACCUMULATOR_VERSION, value.bucket_ms, len(value.buckets))]
        for start, bucket in sorted(value.buckets.items()):
            bucket.fold()
            parts.append(_BUCKET.pack(start, bucket.count, bucket.weight, bucket.loss_offset, bucket.loss_model,
                                      bucket.sq_offset, bucket.sq_model))
            parts.append(np.ascontiguousarray(bucket.hist, dtype="<f8").tobytes())
        return b"".join(parts)

    def decode(self, encoded: bytes) -> "ProgressiveValidation":
        version, bucket_ms, n = _HEADER.unpack_from(encoded, 0)
        if version != _ACCUMULATOR_VERSION:
            raise ValueError(f"progressive-validation accumulator has encoding version {version}, "
                             f"this code reads version {_ACCUMULATOR_VERSION}.")
        result, pos, hist_bytes = ProgressiveValidation(bucket_ms), _HEADER.size, 4 * _BINS * 8
        for _ in range(n):
            start, count, *sums = _BUCKET.unpack_from(encoded, pos)
            pos += _BUCKET.size
            bucket = _Bucket()
            bucket.count = count
            bucket.weight, bucket.loss_offset, bucket.loss_model, bucket.sq_offset, bucket.sq_model = sums
            bucket.hist = np.frombuffer(encoded, "<f8", 4 * _BINS, pos).reshape(4, _BINS).astype(np.float64)
            pos += hist_bytes
            result.buckets[start] = bucket
        if pos != len(encoded):
            raise ValueError("progressive-validation accumulator bytes have trailing data.")
        return result

    def is_deterministic(self) -> bool:
        return True
