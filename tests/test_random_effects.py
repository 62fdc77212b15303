"""UpdateRandomEffects on the DirectRunner: state, mini-batches, determinism, lateness, metrics.

Every Beam result is compared with a plain-Python replay of ``transforms.update.train_minibatch``
(the per-entity core step), built here independently of the DoFn: examples grouped by entity and
epoch-aligned interval, sorted by (timestamp, uid), split into chunks, trained in order.
"""

import json
import math
import random
from collections import defaultdict

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from lambda_core import INTERCEPT
from pipeline.simulation import ClickStream, StreamConfig
from transforms.examples import DeadLetter, Example, ExampleParser
from transforms.models import ModelParser, RandomEffectModel
from transforms.random_effects import (
    NAMESPACE,
    UpdateRandomEffects,
    UpdateRandomEffectsFn,
    buffer_examples,
    take_due,
)
from transforms.state import (
    MODEL_STATE_VERSION,
    EntityState,
    EntityStateCoder,
    buffer_batch_end,
    buffer_entry,
    buffered_examples,
    decode_example,
    decode_model,
    encode_example,
    encode_model,
    is_packed,
)
from transforms.update import UpdateConfig, forget_uids, split_duplicates, train_minibatch
from transforms.validation import ProgressiveValidation, ProgressiveValidationFn

T0 = 1_764_028_800_000  # a multiple of every interval length used here (midnight UTC)
PHOTON_INTERCEPT = ("(INTERCEPT)", "")

# Outputs collected by ``_collect`` (module level, so the DirectRunner's in-process workers append
# to this very dict): run id -> output name -> list of elements.
SINK = defaultdict(lambda: defaultdict(list))
_RUNS = [0]


def _collect(element, run_id, name):
    SINK[run_id][name].append(element)
    return element


# --------------------------------------------------------------------------------------------------
# helpers


def rec(user, ts, uid, label, offset=0.0, features=(("f1", "", 1.0),), weight=1.0):
    """A raw example record as the job reads it."""
    return {"uid": uid, "userId": user, "timestamp": ts, "label": label, "offset": offset, "weight": weight,
            "features": [{"name": n, "term": t, "value": v} for n, t, v in features]}


def interval_end(ts_ms, minibatch_seconds):
    """End (exclusive) of the epoch-aligned interval holding ``ts_ms``: computed here, not by the code."""
    ms = int(minibatch_seconds * 1000)
    return (ts_ms // ms + 1) * ms


def config(**kw):
    # The entities' stage alone (tests/test_global_correction.py has the stage ahead of it).
    base = dict(trainer="sequential_bayesian_logistic", penalty=10.0, forgetting_factor=0.8, hessian="diagonal",
                minibatch_seconds=60, max_minibatch_size=10000, coordinate="userId", global_correction="none")
    base.update(kw)
    return UpdateConfig(**base)


def transform_kwargs(cfg):
    return dict(trainer=cfg.trainer, penalty=cfg.penalty, forgetting_factor=cfg.forgetting_factor,
                hessian=cfg.hessian, minibatch_seconds=cfg.minibatch_seconds,
                max_minibatch_size=cfg.max_minibatch_size, dedup_horizon_seconds=cfg.dedup_horizon_seconds,
                global_correction=cfg.global_correction)


def model_dict(model: RandomEffectModel):
    """(name, term) -> mean, and -> variance, with Photon's intercept name as in update records."""
    names = [PHOTON_INTERCEPT if nt == INTERCEPT else nt for nt in model.feature_names]
    return dict(zip(names, map(float, model.means))), dict(zip(names, map(float, 1.0 / model.precisions)))


def record_dicts(update):
    return ({(m["name"], m["term"]): m["value"] for m in update["means"]},
            {(v["name"], v["term"]): v["value"] for v in update["variances"]})


def replay(records, cfg, initial_records=()):
    """Plain-Python replay of the job. Returns (updates, validation, failures, final models).

    ``updates``: entity -> list of (version, windowEnd, numExamples, model) in order;
    ``validation``: list of (entity, windowEnd, labels, offsets, model_scores) per trained chunk;
    ``failures``: list of (entity, windowEnd, uids).
    """
    parser = ExampleParser("userId", "timestamp")
    models = {}
    mparser = ModelParser(cfg.penalty)
    for r in initial_records:
        m = mparser.parse(r)
        assert isinstance(m, RandomEffectModel)
        models[m.entity_id] = m
    by_entity = defaultdict(lambda: defaultdict(list))
    for r in records:
        ex = parser.parse(r)
        if isinstance(ex, DeadLetter):
            continue
        by_entity[ex.entity_id][interval_end(ex.timestamp_ms, cfg.minibatch_seconds)].append(ex)
    updates, validation, failures = defaultdict(list), [], []
    for entity in sorted(by_entity):
        model = models.get(entity)
        for end in sorted(by_entity[entity]):
            batch = sorted(by_entity[entity][end], key=lambda e: (e.timestamp_ms, e.uid))
            size = cfg.max_minibatch_size
            for start in range(0, len(batch), size):
                chunk = batch[start:start + size]
                result = train_minibatch(model, entity, chunk, end, cfg)
                validation.append((entity, end, [e.label for e in chunk], [e.offset for e in chunk],
                                   result.model_scores.tolist()))
                if result.failure is not None:
                    failures.append((entity, end, [e.uid for e in chunk]))
                    continue
                model = result.model
                updates[entity].append((model.version, end, len(chunk), model))
        models[entity] = model
    return updates, validation, failures, models


def run(records, cfg, *, initial_models=None, streaming_events=None, checks=(), without_flattens=False,
        runner=None, streaming=None, initial_global_model=None):
    """Run UpdateRandomEffects on the DirectRunner (or ``runner``); return (outputs by name, pipeline result).

    Batch: ``records`` through ``beam.Create`` with ``streaming=False``. Streaming: a TestStream of
    ``streaming_events`` (a built TestStream) with ``streaming=True``, or with ``streaming=True``
    and no events, ``records`` through ``beam.Create`` (a bounded input in streaming mode, as the
    job reads files). ``checks`` are (label, output name, matcher) added with ``assert_that``.
    """
    _RUNS[0] += 1
    run_id = _RUNS[0]
    streaming = streaming_events is not None or bool(streaming)
    p = TestPipeline(runner=runner, options=PipelineOptions(streaming=streaming), blocking=True)
    source = p | "Examples" >> (beam.Create(records, reshuffle=False) if streaming_events is None else streaming_events)
    models = None if initial_models is None else p | "Models" >> beam.Create(initial_models, reshuffle=False)
    global_model = None if initial_global_model is None else p | "GlobalModel" >> beam.Create(initial_global_model)
    out = source | UpdateRandomEffects("userId", "timestamp", initial_models=models, streaming=streaming,
                                       without_flattens=without_flattens, initial_global_model=global_model,
                                       **transform_kwargs(cfg))
    if out.dead_letters is None:  # without_flattens: the parts, as the job writes them
        out.dead_letters = out.dead_letter_parts | "FlattenDeadLetterParts" >> beam.Flatten()
    for name in ("updates", "dead_letters", "validation") + (("global_updates",) if cfg.corrects else ()):
        _ = getattr(out, name) | f"Collect_{name}" >> beam.Map(_collect, run_id, name)
    for label, name, matcher in checks:
        assert_that(getattr(out, name), matcher, label=label)
    result = p.run()
    result.wait_until_finish()
    return SINK.pop(run_id, {}), result


@pytest.fixture
def per_bundle_metrics(monkeypatch):
    """Work around a bug of Beam's Python DirectRunner in streaming (BundleBasedDirectRunner, Beam 2.77):
    its executor makes a new MetricsContainer per bundle and commits it, but the thread's StateSampler
    caches the ScopedState (and so the container) of the step's *first* bundle, so every metric updated
    in a later bundle of that step lands in an already-committed container and is lost from
    ``result.metrics()``. Dropping the cache when a container is passed makes each bundle's updates count.
    Test-side only; the code under test is untouched.
    """
    from apache_beam.runners.worker import statesampler

    original = statesampler.StateSampler.scoped_state

    def scoped_state(self, name_context, state_name, io_target=None, metrics_container=None):
        if metrics_container is not None:
            self._states_by_name.clear()
        return original(self, name_context, state_name, io_target, metrics_container)

    monkeypatch.setattr(statesampler.StateSampler, "scoped_state", scoped_state)


def counter(result, name):
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(r.committed if r.committed is not None else r.attempted for r in found)


def distribution(result, name):
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["distributions"]
    assert found, f"distribution {name!r} was not reported"
    values = [r.committed if r.committed is not None else r.attempted for r in found]
    return sum(v.count for v in values), sum(v.sum for v in values)


def stream_by_interval(records, minibatch_seconds, seed, bundles=3):
    """TestStream: each interval's records shuffled into ``bundles`` bundles, then the watermark to its end."""
    rng = random.Random(seed)
    by_end = defaultdict(list)
    for r in records:
        by_end[interval_end(r["timestamp"], minibatch_seconds)].append(r)
    ts = TestStream()
    for end in sorted(by_end):
        batch = list(by_end[end])
        rng.shuffle(batch)
        cuts = sorted(rng.sample(range(1, len(batch)), min(bundles - 1, len(batch) - 1))) if len(batch) > 1 else []
        for lo, hi in zip([0] + cuts, cuts + [len(batch)]):
            ts.add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in batch[lo:hi]])
        ts.advance_watermark_to(end / 1000.0)
    return ts.advance_watermark_to_infinity()


def update_key(u):
    return (u["modelId"], u["version"], u["windowEnd"], u["numExamples"],
            tuple((m["name"], m["term"], m["value"]) for m in u["means"]),
            tuple((v["name"], v["term"], v["value"]) for v in u["variances"]))


def check(condition, message):
    if not condition:
        raise BeamAssertException(message)


def close(a, b, tol=1e-12):
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def matches_replay(expected_updates):
    """Matcher: the update records are exactly the replay's (version, windowEnd, numExamples, means, variances)."""
    expected = {}
    for entity, ups in expected_updates.items():
        for version, end, n, model in ups:
            expected[(entity, version)] = (end, n) + model_dict(model)

    def _match(actual):
        got = {}
        for u in actual:
            key = (u["modelId"], u["version"])
            check(key not in got, f"two updates with (modelId, version) = {key}")
            got[key] = (u["windowEnd"], u["numExamples"]) + record_dicts(u)
        check(set(got) == set(expected),
              f"updates differ: missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}")
        for key, (end, n, means, variances) in expected.items():
            g_end, g_n, g_means, g_vars = got[key]
            check((g_end, g_n) == (end, n), f"{key}: (windowEnd, numExamples) {(g_end, g_n)} != replay {(end, n)}")
            check(set(g_means) == set(means), f"{key}: coefficients {sorted(g_means)} != replay {sorted(means)}")
            for nt, value in means.items():
                check(abs(g_means[nt] - value) <= 1e-12, f"{key}: mean of {nt} {g_means[nt]!r} != replay {value!r}")
                check(close(g_vars[nt], variances[nt]), f"{key}: variance of {nt} {g_vars[nt]!r} != replay {variances[nt]!r}")
    return _match


# --------------------------------------------------------------------------------------------------
# 1. the versioned state coder


def _model(matrix=False, hessian=True):
    names = (INTERCEPT, ("ad_category", "travel"), ("price_level", ""), ("ünï", "cödé"))
    means = np.array([0.25, -1.5, 3e-300, 7.0])
    precisions = np.array([10.0, 2.5, 1e-3, 4.0]) if hessian else None
    full = None
    if matrix:
        full = np.diag(precisions) + 0.1
        precisions = np.diagonal(full).copy()
    return RandomEffectModel("user-ß", names, means, precisions, 7, T0 + 60_000, full)


@pytest.mark.parametrize("kind", ["diagonal", "full", "none"])
def test_model_state_coder_round_trips_deterministically_and_is_not_pickle(kind):
    model = _model(matrix=kind == "full", hessian=kind != "none")
    data = encode_model(model)
    assert data[0] == MODEL_STATE_VERSION == 4
    assert not data.startswith(b"\x80")  # no pickle protocol header
    assert encode_model(model) == data == EntityStateCoder().encode(EntityState(model))
    back = decode_model(data)
    assert EntityStateCoder().decode(data).model.entity_id == model.entity_id
    assert (back.entity_id, back.feature_names, back.version, back.window_end_ms) == \
        (model.entity_id, model.feature_names, 7, T0 + 60_000)
    assert back.means.tobytes() == model.means.tobytes()
    if kind == "none":
        assert back.precisions is None and back.precision_matrix is None
    else:
        assert back.precisions.tobytes() == model.precisions.tobytes()
    if kind == "full":
        assert back.precision_matrix.tobytes() == model.precision_matrix.tobytes()
    else:
        assert back.precision_matrix is None
    assert EntityStateCoder().is_deterministic()
    # the stateful DoFn really keeps its model state with this coder (not a pickling coder)
    assert isinstance(UpdateRandomEffectsFn.MODEL.coder, EntityStateCoder)


@pytest.mark.parametrize("uid", ["imp-1", None])
def test_example_coder_round_trips(uid):
    ex = Example("u1", T0 + 123, uid, 1.0, 0.5, -2.25, (("a", "", 1.0), ("b", "tërm", -3.5e-10)))
    data = encode_example(ex)
    assert data[0] == 2 and encode_example(ex) == data
    assert decode_example(data) == ex
    source = b'{"userId": "u1", "extra": [1, 2]}'
    assert decode_example(encode_example(ex, source)) == ex._replace(source=source)


# --------------------------------------------------------------------------------------------------
# 1./2. state across mini-batches in streaming: one update per non-empty interval, in order


def test_streaming_state_survives_across_minibatches_one_update_per_nonempty_interval():
    cfg = config(minibatch_seconds=60)
    m = 60_000
    records = []
    # user "a": data in intervals 0, 1, 3 and 6 (2, 3, 1, 2 examples); intervals 2, 4, 5 are empty.
    for k, n in ((0, 2), (1, 3), (3, 1), (6, 2)):
        for i in range(n):
            records.append(rec("a", T0 + k * m + 1000 * (i + 1), f"a-{k}-{i}", float((k + i) % 2),
                               offset=0.1 * i, features=(("f1", "", 1.0 + i), (f"g{k}", "", 0.5))))
    # user "b": data in intervals 1 and 6.
    records += [rec("b", T0 + m + 5, "b-1", 1.0), rec("b", T0 + 6 * m + 59_999, "b-6", 0.0)]
    expected, _, _, _ = replay(records, cfg)
    assert [(v, e, n) for v, e, n, _ in expected["a"]] == \
        [(1, T0 + m, 2), (2, T0 + 2 * m, 3), (3, T0 + 4 * m, 1), (4, T0 + 7 * m, 2)]

    def versions_in_order(actual):
        by = defaultdict(list)
        for u in actual:
            by[u["modelId"]].append((u["version"], u["windowEnd"]))
        check(sorted(by["a"]) == [(1, T0 + m), (2, T0 + 2 * m), (3, T0 + 4 * m), (4, T0 + 7 * m)],
              f"user a: (version, windowEnd) {sorted(by['a'])}")
        check(sorted(by["b"]) == [(1, T0 + 2 * m), (2, T0 + 7 * m)], f"user b: {sorted(by['b'])}")

    outputs, _ = run(records, cfg, streaming_events=stream_by_interval(records, 60, seed=1),
                     checks=[("Versions", "updates", versions_in_order),
                             ("EqualsReplay", "updates", matches_replay(expected))])
    assert len(outputs["updates"]) == 6


# --------------------------------------------------------------------------------------------------
# 2. sorting inside an interval and chunking


def test_interval_sorted_by_timestamp_then_uid_and_split_into_chunks():
    cfg = config(minibatch_seconds=60, max_minibatch_size=3)
    base = T0 + 120_000  # interval [T0+120s, T0+180s)
    # (timestamp offset, uid, label, feature value), delivered in a scrambled order; uids compare as
    # strings ("e-10" < "e-9"), and several share a timestamp.
    spec = [(30_000, "e-9", 1.0, 0.3), (10_000, "e-5", 0.0, -1.2), (30_000, "e-10", 0.0, 2.0),
            (59_999, "e-1", 1.0, 0.7), (0, "e-7", 1.0, -0.4), (10_000, "e-3", 1.0, 1.1), (30_000, "e-2", 0.0, 0.9)]
    records = [rec("u", base + dt, uid, y, offset=0.05 * i, features=(("x", "", v), (f"c{i % 2}", "", 1.0)))
               for i, (dt, uid, y, v) in enumerate(spec)]
    records.append(rec("u", T0 + 5_000, "early", 1.0))  # an earlier interval trains first
    end = T0 + 180_000
    ordered = sorted(records[:-1], key=lambda r: (r["timestamp"], r["uid"]))
    assert [r["uid"] for r in ordered] == ["e-7", "e-3", "e-5", "e-10", "e-2", "e-9", "e-1"]

    parser = ExampleParser("userId", "timestamp")
    model = train_minibatch(None, "u", [parser.parse(records[-1])], T0 + 60_000, cfg).model
    expected = [(1, T0 + 60_000, 1, model)]
    for i, chunk in enumerate([ordered[0:3], ordered[3:6], ordered[6:7]]):
        result = train_minibatch(model, "u", [parser.parse(r) for r in chunk], end, cfg)
        assert result.failure is None
        model = result.model
        expected.append((i + 2, end, len(chunk), model))
    # the order matters: training the same examples in arrival order gives other coefficients
    shuffled = train_minibatch(expected[0][3], "u", [parser.parse(r) for r in records[:3]], end, cfg).model
    assert not np.allclose(shuffled.means[:2], expected[1][3].means[:2])

    def chunk_sizes(actual):
        sizes = [(u["version"], u["windowEnd"], u["numExamples"]) for u in sorted(actual, key=lambda u: u["version"])]
        check(sizes == [(1, T0 + 60_000, 1), (2, end, 3), (3, end, 3), (4, end, 1)], f"updates {sizes}")

    def validation_chunks(actual):
        got = sorted((v["windowEnd"], v["offsetScores"]) for v in actual)
        want = sorted([(T0 + 60_000, [0.0])] + [(end, [r["offset"] for r in c])
                                                   for c in (ordered[0:3], ordered[3:6], ordered[6:7])])
        check(got == want, f"validation chunks {got} != {want}")

    run(records, cfg, checks=[("Sizes", "updates", chunk_sizes), ("Replay", "updates", matches_replay({"u": expected})),
                              ("ValidationChunks", "validation", validation_chunks)])


def test_batch_job_equals_plain_python_replay_with_initial_models_and_chunks():
    stream = ClickStream(StreamConfig(num_users=25, hours=1.0, seed=11))
    records = list(stream.examples())
    initial = list(stream.initial_models())
    random.Random(3).shuffle(records)
    cfg = config(minibatch_seconds=900, max_minibatch_size=2)
    expected, validation, failures, _ = replay(records, cfg, initial)
    assert not failures
    assert any(n == 2 for ups in expected.values() for _, _, n, _ in ups[:-1]) and initial

    def validation_matches(actual):
        check(len(actual) == len(validation), f"{len(actual)} validation records, replay has {len(validation)}")
        want = {(e, end, tuple(offsets), tuple(labels)): scores for e, end, labels, offsets, scores in validation}
        for v in actual:
            key = (v["modelId"], v["windowEnd"], tuple(v["offsetScores"]), tuple(v["labels"]))
            check(key in want, f"unexpected validation record {key}")
            check(all(abs(a - b) <= 1e-12 for a, b in zip(v["modelScores"], want[key])),
                  f"{key}: model scores {v['modelScores']} != replay {want[key]}")

    outputs, _ = run(records, cfg, initial_models=initial,
                     checks=[("Replay", "updates", matches_replay(expected)),
                             ("Validation", "validation", validation_matches)])
    assert sum(u["numExamples"] for u in outputs["updates"]) == len(records)
    assert outputs["dead_letters"] == []


# --------------------------------------------------------------------------------------------------
# 3. batch == streaming whatever the arrival order and bundle boundaries


def test_streaming_equals_batch_whatever_arrival_order_and_bundles():
    stream = ClickStream(StreamConfig(num_users=12, hours=1.0, seed=21))
    records = list(stream.examples())
    initial = list(stream.initial_models())
    cfg = config(minibatch_seconds=300, max_minibatch_size=3)
    batch_input = list(records)
    random.Random(5).shuffle(batch_input)
    batch, _ = run(batch_input, cfg, initial_models=initial)
    expected = sorted(update_key(u) for u in batch["updates"])
    assert sum(u["numExamples"] for u in batch["updates"]) == len(records) and len(expected) > 20

    def same_as_batch(actual):
        got = sorted(update_key(u) for u in actual)
        check(len(got) == len(expected), f"{len(got)} streaming updates, batch had {len(expected)}")
        for g, e in zip(got, expected):
            check(g[:4] == e[:4], f"update {g[:4]} != batch {e[:4]}")
            check(g[4] == e[4], f"means of {g[:4]} differ from batch: {g[4]} vs {e[4]}")
            check(all(a[:2] == b[:2] and close(a[2], b[2]) for a, b in zip(g[5], e[5])),
                  f"variances of {g[:4]} differ from batch")

    run(records, cfg, initial_models=initial, streaming_events=stream_by_interval(records, 300, seed=8),
        checks=[("SameAsBatch", "updates", same_as_batch)])


@pytest.mark.parametrize("correction", ["none", "independent"])
@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_initial_models_through_a_side_input_give_the_same_outputs(mode, correction):
    """The local watch's way in (``without_flattens``, used on FnApiRunner only: initial models as
    a side input, dead letters not flattened) against the Flattens, both on FnApiRunner: the same
    updates, global updates, validation, dead letters and counts, batch and streaming, with the
    global correction (and an initial global model) and without. Two records of one entity (of one
    version: the tie is broken by content either way) and a bad model record included."""
    stream = ClickStream(StreamConfig(num_users=12, hours=1.0, seed=23))
    records = list(stream.examples())
    initial = list(stream.initial_models())
    initial.append(dict(initial[0], means=[dict(m, value=m["value"] + 0.5) for m in initial[0]["means"]]))
    initial.append({"modelId": "u-bad", "means": "not a list"})
    cfg = config(minibatch_seconds=300, global_correction=correction)
    global_model = None
    if cfg.corrects:
        global_model = [{"modelId": "global", "version": 3, "means": [
            {"name": "(INTERCEPT)", "term": "", "value": -0.2}, {"name": "ad_format", "term": "banner", "value": 0.1}]}]
    results = []
    for without in (False, True):
        outputs, result = run(records, cfg, initial_models=initial, without_flattens=without, runner="FnApiRunner",
                              streaming=mode == "streaming", initial_global_model=global_model)
        counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                    if c.key.metric.namespace == "lambda_learner"}
        results.append((sorted(update_key(u) for u in outputs["updates"]),
                        sorted(update_key(u) for u in outputs.get("global_updates", [])),
                        sorted(json.dumps(v, sort_keys=True) for v in outputs["validation"]),
                        sorted(json.dumps(d, sort_keys=True) for d in outputs["dead_letters"]),
                        {k: v for k, v in counters.items() if k in ("updates", "cold_start_entities",
                                                                    "examples_trained", "global_updates")}))
    flattened, without_flattens = results
    assert flattened[0] and len(flattened[3]) == 1 and flattened[4]["cold_start_entities"] < 12
    if cfg.corrects:
        assert flattened[1] and flattened[1][0][1] == 4  # the first global update follows the initial one
    assert without_flattens == flattened


# --------------------------------------------------------------------------------------------------
# 4. initial models are in state before the first update


def test_initial_models_are_the_prior_of_the_first_update_and_others_start_cold(per_bundle_metrics):
    cfg = config(minibatch_seconds=60)
    initial = [
        {"modelId": "warm1", "modelClass": "x", "lossFunction": "",
         "means": [{"name": "(INTERCEPT)", "term": "", "value": 0.7}, {"name": "f1", "term": "", "value": -1.3},
                   {"name": "f2", "term": "t", "value": 0.4}],
         "variances": [{"name": "(INTERCEPT)", "term": "", "value": 0.05}, {"name": "f1", "term": "", "value": 0.2},
                       {"name": "f2", "term": "t", "value": 0.1}]},
        {"modelId": "warm2", "means": [{"name": "f1", "term": "", "value": 2.0}], "variances": None},
        {"modelId": "unused", "means": [{"name": "f1", "term": "", "value": 9.0}]},
    ]
    theta = {"warm1": {PHOTON_INTERCEPT: 0.7, ("f1", ""): -1.3, ("f2", "t"): 0.4},
             "warm2": {PHOTON_INTERCEPT: 0.0, ("f1", ""): 2.0}}
    records = []
    for user in ("warm1", "warm2", "cold"):
        for k in range(2):
            for i in range(3):
                records.append(rec(user, T0 + k * 60_000 + 7_000 * i, f"{user}-{k}-{i}", float(i % 2),
                                   offset=-0.5 + 0.25 * i + k,
                                   features=(("f1", "", 0.5 + i), ("f2", "t", 1.0 - i), ("new", "", 2.0))))
    expected, validation, _, _ = replay(records, cfg, initial)
    parser = ExampleParser("userId", "timestamp")
    first_end = T0 + 60_000
    first = {}
    for user in ("warm1", "warm2", "cold"):
        batch = [parser.parse(r) for r in records if r["userId"] == user and r["timestamp"] < first_end]
        scores = [e.offset + theta.get(user, {}).get(PHOTON_INTERCEPT, 0.0)
                  + sum(theta.get(user, {}).get((n, t), 0.0) * v for n, t, v in e.features) for e in batch]
        first[user] = ([e.offset for e in batch], scores)
    assert first["cold"][0] == first["cold"][1]  # cold start: scores are the offsets alone
    assert first["warm1"][0] != first["warm1"][1]

    def first_scores(actual):
        by = {(v["modelId"], v["windowEnd"]): v for v in actual}
        for user, (offsets, scores) in first.items():
            v = by.get((user, first_end))
            check(v is not None, f"no validation record for {user}'s first mini-batch")
            check(v["offsetScores"] == offsets, f"{user}: offsets {v['offsetScores']} != {offsets}")
            check(all(abs(a - b) <= 1e-12 for a, b in zip(v["modelScores"], scores)) and len(scores) == 3,
                  f"{user}: first model scores {v['modelScores']} != offset + x.theta_initial {scores}")

    events = stream_by_interval(records, 60, seed=2)
    outputs, result = run(records, cfg, initial_models=initial, streaming_events=events,
                          checks=[("FirstScores", "validation", first_scores),
                                  ("Replay", "updates", matches_replay(expected))])
    assert counter(result, "initial_models") == 3
    assert {u["modelId"] for u in outputs["updates"]} == {"warm1", "warm2", "cold"}


def test_early_examples_wait_for_their_interval_and_each_firing_trains_only_due_intervals(per_bundle_metrics):
    """Examples ahead of the watermark stay buffered; a firing trains only the due intervals and re-arms."""
    cfg = config(minibatch_seconds=60)
    m = 60_000
    ahead = [rec("u", T0 + 5_000, "i1-0", 1.0, offset=0.1), rec("u", T0 + m + 5_000, "i2-0", 0.0, offset=0.2),
             rec("u", T0 + 2 * m + 5_000, "i3-0", 1.0, offset=0.3), rec("u", T0 + 4 * m + 5_000, "i5-0", 0.0)]
    on_time_later = [rec("u", T0 + m + 40_000, "i2-1", 1.0, offset=0.25), rec("u", T0 + 2 * m + 1, "i3-1", 0.0)]
    records = ahead + on_time_later
    events = (TestStream()
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in ahead])
              .advance_watermark_to((T0 + m) / 1000.0)  # only interval 1 is due
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in on_time_later])
              .advance_watermark_to_infinity())  # intervals 2, 3 and 5 due at once: one after the other
    expected, _, _, _ = replay(records, cfg)
    assert [(v, e, n) for v, e, n, _ in expected["u"]] == \
        [(1, T0 + m, 1), (2, T0 + 2 * m, 2), (3, T0 + 3 * m, 2), (4, T0 + 5 * m, 1)]
    # Checked on the collected elements, not with assert_that: the Python DirectRunner does not let
    # event-time timers hold a stateful DoFn's output watermark, so updates from timers that fire after
    # the watermark jumped to +inf are behind the output watermark and assert_that's GroupByKey
    # (global window, already expired) drops them. A per-element Map sees them all.
    outputs, result = run(records, cfg, streaming_events=events)
    matches_replay(expected)(outputs["updates"])
    assert counter(result, "late_examples") == 0
    assert counter(result, "updates") == 4


class ListBag:
    """A bag state cell as a list, for the buffer helpers."""

    def __init__(self, entries):
        self.entries = list(entries)

    def read(self):
        return list(self.entries)

    def clear(self):
        self.entries = []

    def add(self, entry):
        self.entries.append(entry)


def test_a_firing_packs_what_it_keeps_for_each_interval_and_later_firings_take_it_back_whole():
    m = 60_000
    examples = {end: [Example("u", end - 1_000 - i, f"{end}-{i}", 1.0, 1.0, 0.1 * i, (("f", str(i), 1.0),))
                      for i in range(3 if end != T0 + 3 * m else 1)] for end in (T0 + m, T0 + 2 * m, T0 + 3 * m)}
    bag = ListBag(buffer_entry(end, [encode_example(ex)]) for end, exs in examples.items() for ex in exs)
    due, keep = take_due(bag, Timestamp(micros=(T0 + m) * 1000), flush_all=False)
    assert due == {T0 + m: examples[T0 + m]}
    # interval 2's three examples went back as one packed entry, interval 3's single one as it was
    kept = sorted((buffer_batch_end(e), is_packed(e), len(buffered_examples(e))) for e in bag.entries)
    assert kept == [(T0 + 2 * m, True, 3), (T0 + 3 * m, False, 1)] and len(keep) == 2
    first_pack = next(e for e in bag.entries if is_packed(e))
    # two more examples of interval 2 arrive; a firing with nothing due packs them into a second entry
    late = [examples[T0 + m][0]._replace(uid=f"late-{i}", timestamp_ms=T0 + m + i) for i in range(2)]
    for ex in late:
        bag.add(buffer_entry(T0 + 2 * m, [encode_example(ex)]))
    due, keep = take_due(bag, Timestamp(micros=(T0 + m + 1) * 1000), flush_all=False)
    assert due == {} and first_pack in bag.entries  # a packed entry goes back as it is
    kept = sorted((buffer_batch_end(e), is_packed(e), len(buffered_examples(e))) for e in bag.entries)
    assert kept == [(T0 + 2 * m, True, 2), (T0 + 2 * m, True, 3), (T0 + 3 * m, False, 1)]
    due, keep = take_due(bag, Timestamp(micros=(T0 + 2 * m) * 1000), flush_all=False)
    assert sorted(ex.uid for ex in due[T0 + 2 * m]) == sorted(ex.uid for ex in examples[T0 + 2 * m] + late)
    assert list(due) == [T0 + 2 * m] and [len(buffered_examples(e)) for e in bag.entries] == [1]
    due, keep = take_due(bag, Timestamp(micros=0), flush_all=True)
    assert due == {T0 + 3 * m: examples[T0 + 3 * m]} and keep == [] and bag.entries == []


class Cell:
    """A read-modify-write state cell, counting its writes."""

    def __init__(self, value=None):
        self.value, self.writes = value, 0

    def read(self):
        return self.value

    def write(self, value):
        self.value, self.writes = value, self.writes + 1


class Timer:
    """An event-time timer, remembering what it was set to."""

    def __init__(self):
        self.times = []

    def set(self, ts):
        self.times.append(ts.micros // 1000)


def test_buffer_examples_reads_the_marks_once_and_moves_the_timer_once_to_the_earliest_interval():
    cfg, m = config(minibatch_seconds=60), 60_000

    def encoded(ts):
        return encode_example(Example("u", ts, f"x{ts}", 1.0, 1.0, 0.0, ()))

    # flushed up to T0 + m, timer set for T0 + 3m: one example is late (joins T0 + 2m), one is due
    # at T0 + 2m, one at T0 + 4m; the timer moves once, to T0 + 2m
    bag, marks, timer = ListBag([]), Cell((T0 + m, T0 + 3 * m)), Timer()
    late = buffer_examples(cfg, [encoded(T0 + 4 * m + 5), encoded(T0 + 10), encoded(T0 + m + 7)], bag, marks, timer)
    assert late == 1 and timer.times == [T0 + 2 * m] and marks.value == (T0 + m, T0 + 2 * m) and marks.writes == 1
    # one entry per interval: the late and the on-time example of T0 + 2m packed together
    assert sorted((buffer_batch_end(e), len(buffered_examples(e))) for e in bag.entries) == [(T0 + 2 * m, 2),
                                                                                          (T0 + 5 * m, 1)]
    # nothing earlier than the timer: neither the timer nor the marks are touched
    assert buffer_examples(cfg, [encoded(T0 + 3 * m + 1)], bag, marks, timer) == 0
    assert timer.times == [T0 + 2 * m] and marks.writes == 1 and len(bag.entries) == 3
    assert buffer_examples(cfg, [], bag, marks, timer) == 0 and marks.writes == 1
    # an entity's first examples: no marks yet, the timer set for the earliest of them
    bag, marks, timer = ListBag([]), Cell(), Timer()
    assert buffer_examples(cfg, [encoded(T0 + 2 * m), encoded(T0 + 1)], bag, marks, timer) == 0
    assert timer.times == [T0 + m] and marks.value == (0, T0 + m)


def test_parse_steps_set_event_time_from_the_record_and_initial_models_at_min_timestamp():
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    from transforms.random_effects import ParseExamplesFn, ParseModelsFn

    records = [rec("a", T0 + 1_234, "x", 1.0), rec("b", T0 + 61_000, "y", 0.0)]
    models = [{"modelId": "a", "means": [{"name": "f1", "term": "", "value": 1.0}]}]

    def stamp(element, ts=beam.DoFn.TimestampParam):
        return element[0], element[1][:1], ts

    p = TestPipeline(options=PipelineOptions(streaming=False), blocking=True)
    ex = (p | "Ex" >> beam.Create(records) | "ParseEx" >> beam.ParDo(ParseExamplesFn(ExampleParser("userId", "timestamp")))
          | "StampEx" >> beam.Map(stamp))
    mo = (p | "Mo" >> beam.Create(models) | "ParseMo" >> beam.ParDo(ParseModelsFn(ModelParser(10.0)))
          | "StampMo" >> beam.Map(stamp))
    want_ex = sorted([("a", b"E", Timestamp(micros=(T0 + 1_234) * 1000)), ("b", b"E", Timestamp(micros=(T0 + 61_000) * 1000))])
    assert_that(ex, lambda got: check(sorted(got) == want_ex, f"example timestamps {got}"), label="ExTs")
    assert_that(mo, lambda got: check(got == [("a", b"M", MIN_TIMESTAMP)], f"model timestamps {got}"), label="MoTs")
    p.run().wait_until_finish()


def test_examples_for_the_global_stage_go_as_groups_stamped_with_their_earliest_event_time(monkeypatch):
    import transforms.random_effects as random_effects
    from transforms.random_effects import ParseExamplesFn
    from transforms.state import decode_example, decode_example_group

    monkeypatch.setattr(random_effects, "GLOBAL_GROUP_SIZE", 3)
    times = [T0 + 5_000, T0 + 1_000, T0 + 9_000, T0 + 70_000, T0 + 2_000, T0 + 61_000, T0 + 3_000]
    records = [rec(f"u{i % 3}", ts, f"x{i}", float(i % 2)) for i, ts in enumerate(times)]

    def unpack(element, ts=beam.DoFn.TimestampParam):
        key, payload = element
        check(payload[:1] == b"G", f"not a group: {payload[:1]!r}")
        members = [decode_example(m) for m in decode_example_group(payload[1:])]
        return key, ts, [(m.uid, m.timestamp_ms) for m in members]

    p = TestPipeline(options=PipelineOptions(streaming=False), blocking=True)
    groups = (p | beam.Create(records, reshuffle=False)
              | beam.ParDo(ParseExamplesFn(ExampleParser("userId", "timestamp"), key="global")) | beam.Map(unpack))

    def every_example_once_in_groups_of_at_most_three(got):
        uids = sorted(uid for _, _, members in got for uid, _ in members)
        check(uids == sorted(r["uid"] for r in records), f"examples in the groups: {uids}")
        for key, ts, members in got:
            check(key == "global" and 1 <= len(members) <= 3, f"group {key} of {len(members)}")
            earliest = min(t for _, t in members)
            check(ts == Timestamp(micros=earliest * 1000), f"group stamped {ts}, earliest example {earliest}")
        check(len(got) >= 3, f"{len(got)} groups for 7 examples in groups of at most 3")

    assert_that(groups, every_example_once_in_groups_of_at_most_three)
    p.run().wait_until_finish()


# --------------------------------------------------------------------------------------------------
# 5. late examples are trained later, never dropped, and counted


def test_late_example_is_trained_in_a_later_update_and_counted(per_bundle_metrics):
    cfg = config(minibatch_seconds=60)
    m = 60_000
    on_time = [rec("u", T0 + 1_000 * (i + 1), f"i1-{i}", float(i % 2), offset=0.1 * i) for i in range(3)]
    on_time += [rec("v", T0 + 2_000, "v-i1", 1.0)]
    late = rec("u", T0 + 30_000, "late", 1.0, offset=0.4321)
    third = [rec("u", T0 + 2 * m + 1_000 * (i + 1), f"i3-{i}", float(i % 2), offset=-0.2) for i in range(2)]
    events = (TestStream()
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in on_time])
              .advance_watermark_to((T0 + m) / 1000.0)
              .advance_watermark_to((T0 + 2 * m + 500) / 1000.0)  # past interval 2's end
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in [late] + third])
              .advance_watermark_to((T0 + 3 * m) / 1000.0)
              .advance_watermark_to_infinity())
    total = len(on_time) + 1 + len(third)

    def all_trained(actual):
        check(sum(u["numExamples"] for u in actual) == total,
              f"numExamples sum {sum(u['numExamples'] for u in actual)} != {total} examples")
        u = sorted((x["version"], x["windowEnd"], x["numExamples"]) for x in actual if x["modelId"] == "u")
        check(u[0] == (1, T0 + m, 3), f"first update of u {u[0]} should hold interval 1's 3 on-time examples")
        check([v for v, _, _ in u] == list(range(1, len(u) + 1)), f"versions of u {u}")
        check(all(a[1] < b[1] for a, b in zip(u, u[1:])), f"windowEnd of u not increasing: {u}")

    def late_scored_later(actual):
        hits = [v["windowEnd"] for v in actual if v["modelId"] == "u" and 0.4321 in v["offsetScores"]]
        check(len(hits) == 1 and hits[0] > T0 + m, f"late example validated in windows {hits}")

    outputs, result = run([], cfg, streaming_events=events,
                          checks=[("AllTrained", "updates", all_trained), ("LateScored", "validation", late_scored_later)])
    assert counter(result, "late_examples") == 1
    assert counter(result, "examples") == total
    assert counter(result, "updates") == len(outputs["updates"])
    assert distribution(result, "minibatch_size") == (len(outputs["validation"]), total)
    assert outputs["dead_letters"] == []


# --------------------------------------------------------------------------------------------------
# 6. progressive validation: random effects beat the offset alone


@pytest.mark.parametrize("defaults", [False, True], ids=["forgetting-0.8", "job-defaults"])
def test_progressive_validation_random_effects_beat_offset_only(defaults):
    stream = ClickStream(StreamConfig(num_users=70, hours=1.5, seed=7))
    records = list(stream.examples())
    initial = list(stream.initial_models())
    cfg = UpdateConfig(minibatch_seconds=300, coordinate="userId") if defaults else config(minibatch_seconds=300)

    p = TestPipeline(options=PipelineOptions(streaming=False), blocking=True)
    out = (p | "Examples" >> beam.Create(records)) | UpdateRandomEffects(
        "userId", "timestamp", initial_models=p | "Models" >> beam.Create(initial), streaming=False, config=cfg)
    report = out.validation | beam.CombineGlobally(ProgressiveValidationFn())

    def improves(actual):
        check(len(actual) == 1, f"{len(actual)} reports")
        overall = actual[0]["overall"]
        check(overall["examples"] == len(records), f"report covers {overall['examples']} of {len(records)} examples")
        check(overall["log_loss_with_random_effects"] < overall["log_loss_offset_only"],
              f"random effects do not beat the offset: {overall}")
        check(overall["auc_with_random_effects"] > overall["auc_offset_only"], f"AUC does not improve: {overall}")
        check(len(actual[0]["buckets"]) == 2, f"buckets {[b['start_ms'] for b in actual[0]['buckets']]}")

    assert_that(report, improves, label="Report")
    assert_that(out.updates | beam.Map(lambda u: u["numExamples"]) | beam.CombineGlobally(sum),
                lambda got: check(got == [len(records)], f"trained {got} of {len(records)}"), label="Trained")
    p.run().wait_until_finish()


def test_validation_scores_each_minibatch_with_the_model_before_training():
    records = [rec("u", T0 + k * 60_000 + 1_000 * i, f"u-{k}-{i}", float((i + k) % 2), offset=0.3 * i - 0.2,
                   features=(("a", "", 1.0 + i), ("b", "", -0.5 * k)))
               for k in range(3) for i in range(3)]
    cfg = config(minibatch_seconds=60)
    outputs, _ = run(records, cfg)
    updates = {u["modelId"] + str(u["version"]): record_dicts(u)[0] for u in outputs["updates"]}
    assert len(outputs["validation"]) == 3
    for v in outputs["validation"]:
        k = (v["windowEnd"] - T0) // 60_000 - 1
        prev = updates.get(f"u{k}", {})  # the model before this mini-batch (version k), cold for k=0
        batch = [r for r in records if interval_end(r["timestamp"], 60) == v["windowEnd"]]
        want = [r["offset"] + prev.get(PHOTON_INTERCEPT, 0.0)
                + sum(prev.get((f["name"], f["term"]), 0.0) * f["value"] for f in r["features"]) for r in batch]
        assert v["labels"] == [r["label"] for r in batch] and v["weights"] == [1.0] * 3
        assert np.allclose(v["modelScores"], want, rtol=0, atol=1e-12)
    report = ProgressiveValidation().add(outputs["validation"][0]).report()
    assert report["overall"]["examples"] == 3


# --------------------------------------------------------------------------------------------------
# 7. metrics, dead letters, counts add up


def test_metrics_and_dead_letters_after_a_run_with_bad_records():
    stream = ClickStream(StreamConfig(num_users=10, hours=0.5, seed=31))
    good = list(stream.examples())
    bad = [dict(good[0], uid="bad-label", label=3), dict(good[1], uid="bad-ts", timestamp=None),
           dict(good[2], uid="bad-ts2", timestamp="soon")]
    cfg = config(minibatch_seconds=300, max_minibatch_size=4)
    expected, validation, _, _ = replay(good, cfg)
    n_updates = sum(len(v) for v in expected.values())

    def dead_parse(actual):
        got = sorted((d["stage"], d["payload"]["uid"]) for d in actual)
        check(got == [("parse", "bad-label"), ("parse", "bad-ts"), ("parse", "bad-ts2")], f"dead letters {got}")
        check(all(isinstance(d["reason"], str) and d["reason"] for d in actual), "dead letter without a reason")

    outputs, result = run(good + bad, cfg, checks=[("DeadLetters", "dead_letters", dead_parse),
                                                   ("Replay", "updates", matches_replay(expected))])
    assert sum(u["numExamples"] for u in outputs["updates"]) == len(good)
    assert counter(result, "examples") == len(good)
    assert counter(result, "updates") == n_updates == len(outputs["updates"])
    assert counter(result, "dead_letters") == 3
    assert counter(result, "dead_letters/parse/label") == 1
    assert counter(result, "dead_letters/parse/timestamp") == 2
    assert counter(result, "late_examples") == 0
    assert distribution(result, "minibatch_size") == (len(validation), len(good))
    assert distribution(result, "update_train_micros")[0] == len(validation)


def test_failed_training_keeps_previous_model_dead_letters_the_batch_and_next_batch_trains():
    cfg = config(minibatch_seconds=60)
    m = 60_000
    first = [rec("f", T0 + 1_000 * (i + 1), f"f1-{i}", float(i % 2), features=(("a", "", 1.0 + i),)) for i in range(3)]
    boom = [rec("f", T0 + m + 1_000, "f2-0", 1.0, features=(("a", "", 1.0),)),
            rec("f", T0 + m + 2_000, "f2-1", 0.0, features=(("a", "", 1.0), ("boom", "", 1e200)))]
    third = [rec("f", T0 + 2 * m + 1_000 * (i + 1), f"f3-{i}", float((i + 1) % 2), features=(("a", "", 2.0 - i),))
             for i in range(2)]
    other = [rec("g", T0 + m + 3_000, "g-0", 1.0)]
    records = first + boom + third + other
    expected, _, failures, _ = replay(records, cfg)
    # the data really makes the core step fail (a singular/overflowing Hessian), from the model of interval 1
    assert failures == [("f", T0 + 2 * m, ["f2-0", "f2-1"])]
    parser = ExampleParser("userId", "timestamp")
    m1 = train_minibatch(None, "f", [parser.parse(r) for r in first], T0 + m, cfg).model
    m2 = train_minibatch(m1, "f", [parser.parse(r) for r in third], T0 + 3 * m, cfg).model
    assert [(v, e, n) for v, e, n, _ in expected["f"]] == [(1, T0 + m, 3), (2, T0 + 3 * m, 2)]
    assert np.array_equal(expected["f"][1][3].means, m2.means)

    def dead_train(actual):
        # one dead letter per example of the failed mini-batch, each carrying its record as read
        check(len(actual) == 2, f"{len(actual)} dead letters")
        check(all(d["stage"] == "train" for d in actual), f"stages {[d['stage'] for d in actual]}")
        check(sorted(d["payload"]["uid"] for d in actual) == ["f2-0", "f2-1"], f"payloads {actual}")
        check(sorted((d["payload"] for d in actual), key=lambda r: r["uid"]) == boom,
              f"payloads {actual}")
        check(all("previous model" in d["reason"] for d in actual), f"reasons {actual}")

    outputs, result = run(records, cfg, checks=[("DeadTrain", "dead_letters", dead_train),
                                                ("Replay", "updates", matches_replay(expected))])
    f_updates = sorted((u for u in outputs["updates"] if u["modelId"] == "f"), key=lambda u: u["version"])
    assert ("boom", "") not in record_dicts(f_updates[-1])[0]
    assert counter(result, "failed_updates") == 1
    assert counter(result, "examples_failed") == 2
    assert counter(result, "dead_letters/train/training") == 2
    assert counter(result, "dead_letters") == 2
    assert counter(result, "updates") == 3


# --------------------------------------------------------------------------------------------------
# 8. redelivery: an example whose uid the entity already trained on is not trained twice


def test_split_duplicates_and_forget_uids():
    parser = ExampleParser("userId", "timestamp")
    batch = [parser.parse(r) for r in (rec("u", T0 + 1, "a", 1.0), rec("u", T0 + 2, "b", 0.0),
                                       rec("u", T0 + 3, "a", 1.0), rec("u", T0 + 4, None, 1.0),
                                       rec("u", T0 + 5, None, 1.0), rec("u", T0 + 6, "old", 0.0))]
    fresh, duplicates = split_duplicates(batch, {"old": T0})
    assert [e.uid for e in fresh] == ["a", "b", None, None]  # no uid: never a duplicate
    assert [(e.uid, e.timestamp_ms) for e in duplicates] == [("a", T0 + 3), ("old", T0 + 6)]
    recent = {"x": T0 + 60_000, "y": T0 + 120_000, "z": T0 + 180_000}
    forget_uids(recent, T0 + 240_000, 120_000)  # forgets mini-batches that ended at or before T0+120s
    assert recent == {"z": T0 + 180_000}


def _dedup_dead_letters(dead_letters):
    return sorted((d["payload"]["uid"], d["payload"]["timestamp"]) for d in dead_letters if d["reason"] == "duplicate")


def test_redelivered_examples_after_their_update_are_duplicates_and_models_are_unchanged(per_bundle_metrics):
    """A Pub/Sub-like redelivery: interval 1 is trained, then some of its examples arrive again (late),
    mixed with interval 2's examples and with a copy inside interval 2 itself."""
    cfg = config(minibatch_seconds=60)
    m = 60_000
    first = [rec(u, T0 + 1_000 * (i + 1), f"{u}-1-{i}", float(i % 2), offset=0.1 * i,
                 features=(("x", "", 1.0 + i),)) for u in ("u", "v") for i in range(3)]
    second = [rec(u, T0 + m + 1_000 * (i + 1), f"{u}-2-{i}", float((i + 1) % 2), features=(("x", "", 2.0 - i),))
              for u in ("u", "v") for i in range(2)]
    redelivered = [first[0], first[1], first[4], second[0]]
    expected, _, _, _ = replay(first + second, cfg)
    events = (TestStream()
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in first])
              .advance_watermark_to((T0 + m + 500) / 1000.0)  # interval 1 is flushed
              .add_elements([TimestampedValue(r, r["timestamp"] / 1000.0) for r in second + redelivered])
              .advance_watermark_to((T0 + 2 * m) / 1000.0)  # (the DirectRunner's assert_that needs a
              .advance_watermark_to_infinity())              # firing before the final watermark)
    outputs, result = run([], cfg, streaming_events=events, checks=[("Replay", "updates", matches_replay(expected))])
    assert _dedup_dead_letters(outputs["dead_letters"]) == sorted((r["uid"], r["timestamp"]) for r in redelivered)
    assert all(d["stage"] == "dedup" for d in outputs["dead_letters"]) and len(outputs["dead_letters"]) == 4
    assert counter(result, "duplicates") == 4
    assert counter(result, "dead_letters/dedup/duplicate") == 4
    assert counter(result, "examples") == len(first + second + redelivered)
    assert counter(result, "examples_trained") == len(first + second)
    assert counter(result, "late_examples") == 3  # the three copies of interval-1 examples


def test_replaying_the_input_twice_in_batch_gives_the_same_models_as_once():
    stream = ClickStream(StreamConfig(num_users=10, hours=0.5, seed=31))
    records = list(stream.examples())
    cfg = config(minibatch_seconds=300, max_minibatch_size=4)
    expected, _, _, _ = replay(records, cfg)
    twice = records + [dict(r) for r in reversed(records)]
    outputs, result = run(twice, cfg, checks=[("Replay", "updates", matches_replay(expected))])
    assert _dedup_dead_letters(outputs["dead_letters"]) == sorted((r["uid"], r["timestamp"]) for r in records)
    assert sum(u["numExamples"] for u in outputs["updates"]) == len(records)


def test_a_uid_is_forgotten_after_the_horizon_and_horizon_zero_turns_dedup_off():
    m = 60_000
    records = [rec("u", T0 + 10_000, "x", 1.0), rec("u", T0 + 4 * m + 10_000, "x", 0.0, features=(("f2", "", 1.0),)),
               rec("u", T0 + 4 * m + 20_000, "y", 1.0)]
    # trained in the mini-batch ending T0+1m; the copy is in the one ending T0+5m.
    for horizon, duplicates in ((300, ["x"]), (240, []), (0, [])):
        cfg = config(minibatch_seconds=60, dedup_horizon_seconds=horizon)
        outputs, _ = run(records, cfg)
        assert [uid for uid, _ in _dedup_dead_letters(outputs["dead_letters"])] == duplicates, horizon
        trained = sum(u["numExamples"] for u in outputs["updates"])
        assert trained == len(records) - len(duplicates), horizon


def test_examples_of_a_failed_update_are_not_remembered_so_a_redelivery_trains():
    """Only trained uids count: a redelivered copy of an example whose update failed is trained."""
    m = 60_000
    cfg = config(minibatch_seconds=60)
    boom = rec("f", T0 + 1_000, "f-boom", 1.0, features=(("a", "", 1.0), ("boom", "", 1e200)))
    fine = rec("f", T0 + m + 1_000, "f-boom", 1.0, features=(("a", "", 1.0),))  # same uid, later, trainable
    outputs, _ = run([boom, fine], cfg)
    assert [d["stage"] for d in outputs["dead_letters"]] == ["train"]
    assert [(u["version"], u["numExamples"]) for u in outputs["updates"]] == [(1, 1)]
