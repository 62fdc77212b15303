"""Bad input never stops the job: every record is trained or dead-lettered, and the counts add up.

End to end through the command line (examples and initial models), and a property-based fuzz of
``UpdateRandomEffects`` on the DirectRunner with random mixtures of valid and bad records.
"""

import glob
import json
import math
import os
import re
from collections import Counter, defaultdict

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobutil import read_avro_dir, updates_by_entity
from pipeline.__main__ import main as job_main
from transforms.examples import ExampleParser
from transforms.models import ModelParser
from transforms.random_effects import UpdateRandomEffects
from transforms.update import UpdateConfig, order_minibatch, train_minibatch

T0 = 1_764_028_800_000  # midnight UTC: a multiple of every interval and validation bucket used here
MINUTE = 60_000
HOUR = 3_600_000


# --------------------------------------------------------------------------------------------------
# helpers


def good(uid, user="u1", ts=T0 + 1_000, label=1, offset=0.25, weight=1.0, features=(("f1", "", 1.0),), **extra):
    """A valid example record."""
    record = {"uid": uid, "userId": user, "timestamp": ts, "label": label, "offset": offset, "weight": weight,
              "features": [{"name": n, "term": t, "value": v} for n, t, v in features]}
    record.update(extra)
    return record


def without(record, *fields):
    return {k: v for k, v in record.items() if k not in fields}


def line(value) -> bytes:
    """One JSON line; NaN and infinities become the (non-standard) ``NaN``/``Infinity`` tokens."""
    return json.dumps(value, allow_nan=True).encode("utf-8")


def canon(value) -> str:
    """A payload in a comparable form: non-finite floats as the dead-letter files write them
    (``"nan"``, ``"inf"``, ``"-inf"``), keys sorted."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), sort_keys=True, allow_nan=False, ensure_ascii=False)


def expected_payload(raw):
    """What a dead letter must carry for an input: the JSON value of a line, or the raw line text
    (invalid UTF-8 bytes shown as ``\\xNN``) when the line is not JSON; a record as given otherwise."""
    if isinstance(raw, (bytes, str)):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
    return raw


def write_lines(path, lines):
    with open(path, "wb") as f:
        for raw in lines:
            assert b"\n" not in raw and b"\r" not in raw
            f.write(raw + b"\n")


def read_dead_letters(out):
    found = []
    for path in sorted(glob.glob(os.path.join(str(out), "dead-letter", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            found.extend(json.loads(text) for text in f if text.strip())
    return found


def cli(*argv):
    return job_main([str(a) for a in argv])


# --------------------------------------------------------------------------------------------------
# 1. every kind of bad example, end to end through the command line

# Valid records, including the edge cases our parser legitimately accepts. Every uid is unique.
VALID = [
    good("ok-01", "u1", T0 + 1_000, 1),
    good("ok-02", "u1", T0 + 2_000, 0, offset=-0.5),
    good("ok-03", "u1", T0 + 3_000, -1),  # {-1, +1} labels
    good("ok-04", "u1", T0 + MINUTE + 5, 1.0, features=(("f1", "", 0.5), ("f2", "x", 2.0))),
    good("ok-05", "u1", str(T0 + 2 * MINUTE), 0),  # a string of digits is an event time
    good("ok-06", "u1", f" {T0 + 2 * MINUTE + 7} ", 1),  # ... with surrounding blanks
    good("ok-07", "u2", T0 + 4_000, 1, weight=0.0),  # weight 0 is allowed
    without(good("ok-08", "u2", T0 + 5_000, 0), "weight", "offset"),  # defaults 1 and 0
    good("ok-09", "u2", T0 + 6_000, 1, offset=None, weight=None),  # null = default
    good("ok-10", "u2", T0 + 7_000, 0, features=()),  # no features: intercept only
    {"uid": "ok-11", "userId": "u2", "timestamp": T0 + 8_000, "label": 1,
     "features": [{"name": "f1", "term": None, "value": 1}]},  # null term is "", integer value
    {"uid": "ok-12", "label": 0, "offset": 0.1, "features": [{"name": "f3", "term": "", "value": -1.5}],
     "metadataMap": {"userId": "u3", "timestamp": str(T0 + 9_000)}},  # Photon: ids in metadataMap
    {"uid": "ok-13", "userId": "u3", "label": 1, "features": [],
     "metadataMap": {"timestamp": str(T0 + 10_000), "page": "feed"}},
    good(14, 42, T0 + 11_000, 1),  # integer uid and entity id
    good("ok-15", 42, T0 + 12_000, 0),  # same entity "42"
    good("ok-16", "üser-é ☃", T0 + 13_000, 1),  # unicode entity id
    good("ok-17", "u4", T0 + 14_000, 1, extra_field={"anything": [1, 2]}),  # unknown fields are ignored
    good("ok-18", "u4", 0, 0),  # epoch 0 is a valid event time
    good("ok-19", "u4", T0 + 3 * MINUTE, 1, features=(("f1", "", 1e3), ("f2", "", -1e3), ("f3", "t", 0.0))),
    good("ok-20", "u1", T0 + 3 * MINUTE + 1, 1, offset=30.0),
]
VALID_ENTITIES = Counter({"u1": 7, "u2": 5, "u3": 2, "42": 2, "üser-é ☃": 1, "u4": 3})

B = good("bad", "u1", T0 + 20_000)  # the base every bad record is a variant of


def bad(uid, **changes):
    """A variant of ``B`` with its own uid: keys set to None are removed, others replaced."""
    record = dict(B, uid=uid)
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def feats(*items):
    return {"features": list(items)}


# (category counted in summary.json, raw line). Every JSON object has a unique uid.
BAD = [
    # labels
    ("label", line(bad("b-label-missing", label=None))),
    ("label", line(dict(bad("b-label-null"), label=None))),
    ("label", line(bad("b-label-nan-token", label=float("nan")))),
    ("label", line(bad("b-label-nan-string", label="NaN"))),
    ("label", line(bad("b-label-3", label=3))),
    ("label", line(bad("b-label-0.5", label=0.5))),
    ("label", line(bad("b-label-string-1", label="1"))),
    ("label", line(bad("b-label-bool", label=True))),
    ("label", line(bad("b-label-inf", label=float("inf")))),
    # offsets
    ("offset", line(bad("b-offset-string", offset="abc"))),
    ("offset", line(bad("b-offset-inf-token", offset=float("inf")))),
    ("offset", line(bad("b-offset-minus-inf-token", offset=float("-inf")))),
    ("offset", line(bad("b-offset-1e400", offset=123.0)).replace(b"123.0", b"1e400")),
    ("offset", line(bad("b-offset-nan", offset=float("nan")))),
    ("offset", line(bad("b-offset-list", offset=[1.0]))),
    # weights
    ("weight", line(bad("b-weight-negative", weight=-1.0))),
    ("weight", line(bad("b-weight-tiny-negative", weight=-1e-300))),
    ("weight", line(bad("b-weight-nan", weight=float("nan")))),
    ("weight", line(bad("b-weight-string", weight="1"))),
    # entity ids
    ("entity_id", line(bad("b-entity-missing", userId=None))),
    ("entity_id", line(dict(bad("b-entity-null"), userId=None))),
    ("entity_id", line(bad("b-entity-empty", userId=""))),
    ("entity_id", line(bad("b-entity-blank", userId="   "))),
    ("entity_id", line(bad("b-entity-bool", userId=True))),
    ("entity_id", line(bad("b-entity-list", userId=["u1"]))),
    ("entity_id", line(bad("b-entity-object", userId={"id": "u1"}))),
    ("entity_id", line(bad("b-entity-nan", userId=float("nan")))),
    ("entity_id", line(dict(bad("b-entity-meta-missing", userId=None), metadataMap={"page": "x"}))),
    # event times
    ("timestamp", line(bad("b-ts-missing", timestamp=None))),
    ("timestamp", line(dict(bad("b-ts-null"), timestamp=None))),
    ("timestamp", line(bad("b-ts-non-numeric", timestamp="yesterday"))),
    ("timestamp", line(bad("b-ts-float-string", timestamp="1764028800000.5"))),
    ("timestamp", line(bad("b-ts-float", timestamp=1764028800000.5))),
    ("timestamp", line(bad("b-ts-negative", timestamp=-1))),
    ("timestamp", line(bad("b-ts-negative-string", timestamp="-5000"))),
    ("timestamp", line(bad("b-ts-huge", timestamp=10**20))),
    ("timestamp", line(bad("b-ts-huge-string", timestamp="9" * 40))),
    ("timestamp", line(bad("b-ts-bool", timestamp=True))),
    ("timestamp", line(bad("b-ts-nan", timestamp=float("nan")))),
    ("timestamp", line(bad("b-ts-object", timestamp={"ms": T0}))),
    # features
    ("features", line(bad("b-features-missing", features=None))),
    ("features", line(dict(bad("b-features-null"), features=None))),
    ("features", line(bad("b-features-string", features="f1=1"))),
    ("features", line(bad("b-features-object", features={"name": "f1", "term": "", "value": 1.0}))),
    ("features", line(bad("b-features-number", features=3))),
    ("features", line(bad("b-feature-not-object", **feats(1.0)))),
    ("features", line(bad("b-feature-list", **feats(["f1", "", 1.0])))),
    ("features", line(bad("b-feature-no-name", **feats({"term": "", "value": 1.0})))),
    ("features", line(bad("b-feature-name-number", **feats({"name": 5, "term": "", "value": 1.0})))),
    ("features", line(bad("b-feature-term-number", **feats({"name": "f1", "term": 5, "value": 1.0})))),
    ("features", line(bad("b-feature-value-missing", **feats({"name": "f1", "term": ""})))),
    ("features", line(bad("b-feature-value-string", **feats({"name": "f1", "term": "", "value": "1.0"})))),
    ("features", line(bad("b-feature-value-nan", **feats({"name": "f1", "term": "", "value": float("nan")})))),
    ("features", line(bad("b-feature-value-inf", **feats({"name": "f1", "term": "", "value": float("inf")})))),
    ("features", line(bad("b-feature-value-1e400", **feats({"name": "f1", "term": "", "value": 7.0})))
     .replace(b"7.0", b"-1e400")),
    ("features", line(bad("b-feature-value-bool", **feats({"name": "f1", "term": "", "value": True})))),
    ("features", line(bad("b-feature-duplicate", **feats({"name": "f1", "term": "a", "value": 1.0},
                                                         {"name": "f1", "term": "a", "value": 2.0})))),
    ("features", line(bad("b-feature-duplicate-null-term", **feats({"name": "f1", "term": "", "value": 1.0},
                                                                   {"name": "f1", "term": None, "value": 1.0})))),
    ("features", line(bad("b-feature-photon-intercept", **feats({"name": "(INTERCEPT)", "term": "", "value": 1})))),
    ("features", line(bad("b-feature-core-intercept",
                          **feats({"name": "intercept", "term": "intercept", "value": 1})))),
    ("features", line(bad("b-too-many-features",  # the job runs with --max-features 3
                          **feats(*({"name": f"g{i}", "term": "", "value": 1.0} for i in range(4)))))),
    # other fields
    ("uid", line(bad(["b-uid-list"]))),
    ("uid", line(dict(bad("x"), uid={"b-uid": "object"}))),
    ("metadata", line(bad("b-metadata-string", metadataMap="userId=u1"))),
    # not JSON
    ("not_json", b"not json at all"),
    ("not_json", b"{"),
    ("not_json", b'{"uid": "b-truncated", "userId": "u1", "timestamp": 17640288'),
    ("not_json", b"{'uid': 'b-single-quotes', 'userId': 'u1'}"),
    ("not_json", b'{"uid": "b-trailing-comma", "userId": "u1",}'),
    ("not_json", b'{"uid": "b-two-objects"} {"uid": "b-two-objects"}'),
    ("not_json", b"NaNa"),
    ("not_json", b"[" * 20_000 + b"]" * 20_000),  # nesting deeper than the JSON decoder's recursion limit
    # JSON that is not an object
    ("not_object", b'[1, 2, "b-array"]'),
    ("not_object", b"[]"),
    ("not_object", b"12345"),
    ("not_object", b"-3.5e2"),
    ("not_object", b'"b-a json string"'),
    ("not_object", b"null"),
    ("not_object", b"true"),
    ("not_object", b"NaN"),
    # binary garbage, invalid UTF-8
    ("not_json", b"\xff\xfe\x00\x01\x02garbage\x80"),
    ("not_json", bytes(range(0x80, 0xA0))),
    ("not_json", b"\x00\x00\x00\x00"),
    ("not_json", b'{"uid": "b-latin1", "userId": "\xe9t\xe9", "timestamp": 1, "label": 1, "features": []}'),
    ("not_json", b"\xef\xbb\xbf\xc3\x28{}"),  # a byte-order mark, then an invalid 2-byte sequence
]


@pytest.fixture(scope="module")
def bad_examples_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_examples")
    # Bad lines are interleaved with valid ones, not appended: position in the file must not matter.
    lines = []
    valid_lines = [line(r) for r in VALID]
    bad_lines = [raw for _, raw in BAD]
    for i in range(max(len(valid_lines), len(bad_lines))):
        lines.extend(bad_lines[i * len(bad_lines) // len(valid_lines):(i + 1) * len(bad_lines) // len(valid_lines)])
        if i < len(valid_lines):
            lines.append(valid_lines[i])
    assert sorted(lines) == sorted(valid_lines + bad_lines)
    write_lines(base / "examples.jsonl", lines)
    out = base / "out"
    code = cli("--input", base / "examples.jsonl", "--output", out, "--entity-field", "userId",
               "--timestamp-field", "timestamp", "--minibatch-seconds", 60, "--max-features", 3,
               "--dedup-horizon-seconds", 0)
    return code, out


def test_bad_examples_do_not_stop_the_job(bad_examples_run):
    code, out = bad_examples_run
    assert code == 0
    assert os.path.exists(out / "summary.json")


def test_every_valid_example_is_trained_once_per_entity(bad_examples_run):
    _, out = bad_examples_run
    updates = updates_by_entity(out)
    trained = Counter({entity: sum(u["numExamples"] for u in us) for entity, us in updates.items()})
    assert trained == VALID_ENTITIES
    assert sum(trained.values()) == len(VALID)
    for entity, us in updates.items():
        assert [u["version"] for u in us] == list(range(1, len(us) + 1)), entity


def test_every_bad_line_is_exactly_one_parse_dead_letter_with_its_payload(bad_examples_run):
    _, out = bad_examples_run
    dead = read_dead_letters(out)
    for d in dead:
        assert d["stage"] == "parse", d
        assert isinstance(d["reason"], str) and d["reason"].strip(), d
    expected = Counter(canon(expected_payload(raw)) for _, raw in BAD)
    # Every bad input has a payload of its own, so matching by payload pairs them one to one.
    assert len(expected) == len(BAD)
    actual = Counter(canon(d["payload"]) for d in dead)
    missing, unexpected = expected - actual, actual - expected
    assert not missing and not unexpected, (f"bad inputs without a dead letter: {list(missing)}; "
                                            f"dead letters that match no bad input: {list(unexpected)}")


def test_non_json_dead_letters_carry_the_raw_line_text(bad_examples_run):
    _, out = bad_examples_run
    texts = {d["payload"] for d in read_dead_letters(out) if isinstance(d["payload"], str)}
    assert "not json at all" in texts
    assert "{'uid': 'b-single-quotes', 'userId': 'u1'}" in texts
    assert "\\xff\\xfe\x00\x01\x02garbage\\x80" in texts  # invalid bytes as \xNN escapes, the rest as is


def test_summary_counts_add_up_after_bad_examples(bad_examples_run):
    _, out = bad_examples_run
    summary = json.loads((out / "summary.json").read_text())
    valid, bad_count = len(VALID), len(BAD)
    assert summary["records_read"] == valid + bad_count
    assert summary["examples"] == valid
    assert summary["examples_trained"] == valid
    assert summary["dead_letters"] == bad_count
    assert sum(summary["dead_letters_by_reason"].values()) == summary["dead_letters"]
    assert summary["dead_letters_by_reason"] == dict(Counter(f"parse/{category}" for category, _ in BAD))
    assert summary["examples_failed"] == summary["failed_updates"] == summary["duplicates"] == 0
    updates = [u for us in updates_by_entity(out).values() for u in us]
    assert summary["updates"] == len(updates)
    assert summary["progressive_validation"]["overall"]["examples"] == valid


# --------------------------------------------------------------------------------------------------
# 1b. strings that are valid JSON but not valid Unicode (lone surrogate escapes)


def _run_lines(directory, lines):
    write_lines(directory / "examples.jsonl", lines)
    out = directory / "out"
    code = cli("--input", directory / "examples.jsonl", "--output", out, "--entity-field", "userId",
               "--timestamp-field", "timestamp", "--minibatch-seconds", 60, "--dedup-horizon-seconds", 0)
    return code, out


# JSON allows "\ud800" escapes; they decode to Python strings that cannot be encoded as UTF-8.
SURROGATE_RECORDS = [
    good("s-entity", "u-\ud800", T0 + 3_000),
    good("s-uid-\udc00", "u1", T0 + 4_000),
    good("s-feature", "u1", T0 + 5_000, features=(("f-\ud800", "", 1.0),)),
]


def test_valid_looking_records_with_lone_surrogates_are_dead_letters(tmp_path):
    valid = [good("ok-s1", "u1", T0 + 1_000), good("ok-s2", "u2", T0 + 2_000)]
    surrogates = [line(r) for r in SURROGATE_RECORDS]
    assert all(b"\\ud" in raw for raw in surrogates)
    code, out = _run_lines(tmp_path, [line(r) for r in valid] + surrogates)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_read"] == len(valid) + len(surrogates)
    # a string that is not valid Unicode cannot be an id or a name: the line is rejected, kept verbatim
    assert summary["examples_trained"] == len(valid) and summary["dead_letters"] == len(surrogates)
    dead = read_dead_letters(out)
    assert sorted(d["payload"] for d in dead) == sorted(raw.decode("ascii") for raw in surrogates)
    assert all(d["stage"] == "parse" and "lone surrogate" in d["reason"] for d in dead)
    updates = [u for us in updates_by_entity(out).values() for u in us]
    assert sum(u["numExamples"] for u in updates) == summary["examples_trained"]


def test_bad_record_with_a_lone_surrogate_is_a_dead_letter(tmp_path):
    raw = line(bad("s-bad-label", label=3, note="\ud83d"))
    code, out = _run_lines(tmp_path, [line(good("ok-s1", "u1", T0 + 1_000)), raw])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples_trained"] == 1 and summary["dead_letters"] == 1
    [dead] = read_dead_letters(out)
    assert dead["stage"] == "parse" and dead["payload"] == raw.decode("ascii")


def test_surrogate_bytes_and_blank_lines(tmp_path):
    """UTF-8-encoded surrogate bytes (which json.loads would accept) are rejected like escapes; blank
    lines are layout, skipped and counted, as every reader of JSON lines here does."""
    raw = line(good("s-bytes", "u1", T0 + 2_000)).replace(b'"u1"', b'"u\xed\xa0\x80"')
    code, out = _run_lines(tmp_path, [line(good("ok-s1", "u1", T0 + 1_000)), b"", b"   ", raw, b"\t"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["records_read"], summary["examples_trained"], summary["dead_letters"]) == (2, 1, 1)
    [dead] = read_dead_letters(out)
    assert dead["payload"] == raw.decode("utf-8", "backslashreplace") and "\\xed" in dead["payload"]


# --------------------------------------------------------------------------------------------------
# 2. property-based fuzz of UpdateRandomEffects: random mixtures of valid and bad records

# Outputs collected by ``_collect`` (module level, so the DirectRunner's in-process workers append
# to this very dict): run id -> output name -> elements.
SINK = defaultdict(lambda: defaultdict(list))
_RUNS = [0]


def _collect(element, run_id, name):
    SINK[run_id][name].append(element)
    return element


def run_transform(records, minibatch_seconds=60):
    """UpdateRandomEffects over ``records`` on the DirectRunner, batch; (updates, dead letters)."""
    _RUNS[0] += 1
    run_id = _RUNS[0]
    p = test_pipeline.TestPipeline(options=PipelineOptions(), blocking=True)
    out = (p
           | "Records" >> beam.Create(records, reshuffle=False)
           | UpdateRandomEffects("userId", "timestamp", minibatch_seconds=minibatch_seconds, max_features=4,
                                 streaming=False))
    _ = out.updates | "CollectUpdates" >> beam.Map(_collect, run_id, "updates")
    _ = out.dead_letters | "CollectDeadLetters" >> beam.Map(_collect, run_id, "dead_letters")
    p.run().wait_until_finish()
    outputs = SINK.pop(run_id, {})
    return outputs.get("updates", []), outputs.get("dead_letters", [])


finite = st.floats(allow_nan=False, allow_infinity=False)
VOCABULARY = [("f1", ""), ("f2", ""), ("g", "a"), ("g", "b"), ("h", "")]


@st.composite
def valid_records(draw):
    names = draw(st.lists(st.sampled_from(VOCABULARY), unique=True, max_size=4))
    return {
        "userId": draw(st.sampled_from(["a", "b", "c", 7])),
        "timestamp": T0 + draw(st.integers(0, 3 * MINUTE - 1)),
        "label": draw(st.sampled_from([0, 1, -1, 0.0, 1.0, -1.0])),
        "offset": draw(st.floats(-20, 20)),
        "weight": draw(st.floats(0, 5)),
        "features": [{"name": n, "term": t, "value": draw(st.floats(-10, 10))} for n, t in names],
    }


# One change that makes a valid record invalid, whatever the record.
MUTATIONS = [
    st.builds(lambda: ("label", None)),
    st.tuples(st.just("label"), st.one_of(
        st.sampled_from([float("nan"), float("inf"), float("-inf"), "NaN", "1", True, False, [1], {}]),
        finite.filter(lambda x: x not in (0, 1, -1)))),
    st.tuples(st.just("offset"), st.sampled_from([float("nan"), float("inf"), float("-inf"), "0", "x", [0.0], True])),
    st.tuples(st.just("weight"), st.one_of(st.floats(max_value=-1e-300, allow_infinity=True),
                                           st.sampled_from([float("nan"), float("inf"), "1", True]))),
    st.builds(lambda: ("userId", None)),
    st.tuples(st.just("userId"), st.sampled_from(["", "  ", True, [], {}, float("nan"), float("inf")])),
    st.builds(lambda: ("timestamp", None)),
    st.tuples(st.just("timestamp"), st.one_of(
        st.integers(max_value=-1), st.integers(min_value=10**15), finite,
        st.text(alphabet="0123456789.eE+- x", max_size=12).filter(
            lambda s: not re.fullmatch(r"\s*[+-]?[0-9]+\s*", s) or not 0 <= int(s) < 10**15),
        st.sampled_from([True, [], {}, float("nan")]))),
    st.builds(lambda: ("features", None)),
    st.tuples(st.just("features"), st.one_of(
        st.sampled_from(["f1", 1, {}, True, [1], [None], [[]], ["f1"]]),
        st.just([{"term": "", "value": 1.0}]),
        st.just([{"name": 3, "term": "", "value": 1.0}]),
        st.just([{"name": "f1", "term": 3, "value": 1.0}]),
        st.just([{"name": "f1", "term": ""}]),
        st.just([{"name": "(INTERCEPT)", "term": "", "value": 1.0}]),
        st.just([{"name": "intercept", "term": "intercept", "value": 1.0}]),
        st.sampled_from([float("nan"), float("inf"), "1", None, True]).map(
            lambda v: [{"name": "f1", "term": "", "value": v}]),
        st.sampled_from(VOCABULARY).map(lambda nt: [{"name": nt[0], "term": nt[1], "value": 1.0}] * 2),
        st.integers(5, 8).map(lambda n: [{"name": f"z{i}", "term": "", "value": 1.0} for i in range(n)]),
    )),
    st.tuples(st.just("uid"), st.sampled_from([[], {}, True, 1.5])),
    st.tuples(st.just("metadataMap"), st.sampled_from(["m", 1, []])),
]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "userId"), inner, max_size=3)), max_leaves=8)


@st.composite
def bad_records(draw):
    """A bad record: a mutated valid record, random JSON that is not a record, or random bytes; as a
    dict (as read from Avro) or a JSON line (bytes)."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes"]))
    if kind == "mutated":
        record = draw(valid_records())
        field, value = draw(st.one_of(*MUTATIONS))
        if value is None:
            record.pop(field, None)
        else:
            record[field] = value
        value = record
    elif kind == "json":
        # No "userId" key anywhere: a random object can never be a valid record.
        value = draw(json_values)
    else:
        # (blank lines are layout, skipped rather than dead-lettered: see test_surrogate_bytes_and_blank_lines)
        return draw(st.binary(max_size=40).filter(lambda b: b"userId" not in b and b.strip()))
    if isinstance(value, dict) and draw(st.booleans()):
        return value
    return line(value)


@settings(max_examples=30, deadline=None, derandomize=False, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(valid=st.lists(valid_records(), max_size=12), bad_list=st.lists(bad_records(), min_size=1, max_size=12),
       as_lines=st.lists(st.booleans(), min_size=12, max_size=12), seed=st.randoms(use_true_random=False))
def test_fuzz_every_record_is_trained_or_dead_lettered(valid, bad_list, as_lines, seed):
    for i, record in enumerate(valid):
        record["uid"] = f"ok-{i}"
    for i, record in enumerate(bad_list):
        if isinstance(record, dict):
            record.setdefault("uid", f"bad-{i}")
    inputs = [line(r) if as_lines[i] else r for i, r in enumerate(valid)] + list(bad_list)
    seed.shuffle(inputs)

    updates, dead = run_transform(inputs)

    assert len(dead) == len(bad_list)
    assert all(d["stage"] == "parse" and d["reason"] for d in dead), dead
    assert Counter(canon(d["payload"]) for d in dead) == Counter(canon(expected_payload(r)) for r in bad_list)
    assert sum(u["numExamples"] for u in updates) == len(valid)
    per_entity = Counter(str(r["userId"]) for r in valid)
    trained = Counter()
    for u in updates:
        trained[u["modelId"]] += u["numExamples"]
    assert trained == per_entity


# --------------------------------------------------------------------------------------------------
# 3. bad initial models through the command line

INTERCEPT_NTV = {"name": "(INTERCEPT)", "term": ""}
GOOD_MODEL = {"modelId": "m-good", "version": 7,
              "means": [dict(INTERCEPT_NTV, value=0.4), {"name": "f1", "term": "", "value": 0.9}],
              "variances": [dict(INTERCEPT_NTV, value=0.05), {"name": "f1", "term": "", "value": 0.2}]}


def model(entity, intercept=0.5, f1=0.7, intercept_variance=0.1, f1_variance=0.1):
    return {"modelId": entity, "version": 3,
            "means": [dict(INTERCEPT_NTV, value=intercept), {"name": "f1", "term": "", "value": f1}],
            "variances": [dict(INTERCEPT_NTV, value=intercept_variance),
                          {"name": "f1", "term": "", "value": f1_variance}]}


TOO_BIG = {"modelId": "m-big", "version": 3,
           "means": [dict(INTERCEPT_NTV, value=0.5)] + [{"name": f"c{i}", "term": "", "value": 0.3} for i in range(6)],
           "variances": [dict(INTERCEPT_NTV, value=0.1)] + [{"name": f"c{i}", "term": "", "value": 0.1}
                                                             for i in range(6)]}
BAD_MODELS = [
    line(model("m-nan", f1=float("nan"))),
    line(model("m-zero", f1_variance=0.0)),
    line(model("m-negative", intercept_variance=-0.1)),
    line(TOO_BIG),  # 7 coefficients, the job runs with --max-model-coefficients 5
    b'{"modelId": "m-broken", "means": [',
]
COLD = ["m-nan", "m-zero", "m-negative", "m-big"]


def model_examples():
    """Cold entities in the first hour, one mini-batch each; the entity with a valid model in the
    second hour, so the first hour's progressive validation holds cold models only."""
    records = []
    for k, entity in enumerate(COLD):
        for j in range(4):
            records.append(good(f"{entity}-{j}", entity, T0 + 10_000 + 1_000 * j, j % 2, offset=0.3 * j - 0.4,
                                features=(("f1", "", 1.0), ("c0", "", 0.5))))
    for j in range(4):
        records.append(good(f"m-good-{j}", "m-good", T0 + HOUR + 10_000 + 1_000 * j, (j + 1) % 2, offset=0.2 * j,
                            features=(("f1", "", 1.0),)))
    records.append(good("m-good-late", "m-good", T0 + HOUR + 5 * MINUTE, 1))  # a second mini-batch
    return records


@pytest.fixture(scope="module")
def bad_models_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_models")
    examples = model_examples()
    write_lines(base / "examples.jsonl", [line(r) for r in examples])
    write_lines(base / "models.jsonl", [line(GOOD_MODEL)] + BAD_MODELS)
    out = base / "out"
    code = cli("--input", base / "examples.jsonl", "--output", out, "--initial-models", base / "models.jsonl",
               "--entity-field", "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", 60,
               "--max-model-coefficients", 5, "--dedup-horizon-seconds", 0, "--global-correction", "none")
    return code, examples, out


def test_bad_initial_models_do_not_stop_the_job(bad_models_run):
    code, _, out = bad_models_run
    assert code == 0
    assert os.path.exists(out / "summary.json")


def test_bad_initial_models_are_model_dead_letters_with_their_payload(bad_models_run):
    _, _, out = bad_models_run
    dead = read_dead_letters(out)
    for d in dead:
        assert d["stage"] == "model", d
        assert isinstance(d["reason"], str) and d["reason"].strip(), d
    expected = Counter(canon(expected_payload(raw)) for raw in BAD_MODELS)
    assert len(expected) == len(BAD_MODELS)
    assert Counter(canon(d["payload"]) for d in dead) == expected


def _first_minibatch(examples, entity, minibatch_ms=MINUTE):
    parser = ExampleParser("userId", "timestamp")
    parsed = [parser.parse(r) for r in examples if r["userId"] == entity]
    end = min((e.timestamp_ms // minibatch_ms + 1) * minibatch_ms for e in parsed)
    return order_minibatch([e for e in parsed if e.timestamp_ms < end]), end


def test_entities_with_bad_initial_models_start_cold(bad_models_run):
    _, examples, out = bad_models_run
    updates = updates_by_entity(out)
    cfg = UpdateConfig(minibatch_seconds=60, coordinate="userId", dedup_horizon_seconds=0)
    for entity in COLD:
        first = updates[entity][0]
        assert first["version"] == 1, entity
        batch, end = _first_minibatch(examples, entity)
        expected = train_minibatch(None, entity, batch, end, cfg).model
        means = {(m["name"], m["term"]): m["value"] for m in first["means"]}
        assert means[("(INTERCEPT)", "")] == pytest.approx(expected.means[0], rel=1e-9, abs=1e-12)
        for i, nt in enumerate(expected.feature_names[1:], 1):
            assert means[nt] == pytest.approx(expected.means[i], rel=1e-9, abs=1e-12), (entity, nt)
        assert not any(name.startswith("c") and name != "c0" for name, _ in means), entity  # nothing of m-big


def test_entity_with_a_valid_initial_model_starts_from_it(bad_models_run):
    _, examples, out = bad_models_run
    updates = updates_by_entity(out)["m-good"]
    assert [u["version"] for u in updates] == [GOOD_MODEL["version"] + 1, GOOD_MODEL["version"] + 2]
    cfg = UpdateConfig(minibatch_seconds=60, coordinate="userId", dedup_horizon_seconds=0)
    initial = ModelParser(10.0).parse(GOOD_MODEL)
    batch, end = _first_minibatch(examples, "m-good")
    expected = train_minibatch(initial, "m-good", batch, end, cfg).model
    means = {(m["name"], m["term"]): m["value"] for m in updates[0]["means"]}
    assert means[("(INTERCEPT)", "")] == pytest.approx(expected.means[0], rel=1e-9)
    assert means[("f1", "")] == pytest.approx(expected.means[1], rel=1e-9)


def test_progressive_validation_scores_cold_entities_with_the_offset_alone(bad_models_run):
    _, _, out = bad_models_run
    report = json.loads((out / "summary.json").read_text())["progressive_validation"]
    first_hour, second_hour = report["buckets"]
    assert first_hour["start_ms"] == T0 and second_hour["start_ms"] == T0 + HOUR
    # Each cold entity's first mini-batch is scored by theta = 0: exactly the offset.
    assert first_hour["log_loss_with_random_effects"] == first_hour["log_loss_offset_only"]
    # The valid initial model does move the scores.
    assert second_hour["log_loss_with_random_effects"] != second_hour["log_loss_offset_only"]


def test_summary_counts_add_up_after_bad_initial_models(bad_models_run):
    _, examples, out = bad_models_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["initial_models"] == 1
    assert summary["cold_start_entities"] == len(COLD)
    assert summary["dead_letters"] == len(BAD_MODELS)
    assert summary["dead_letters_by_reason"] == {"model/model": len(BAD_MODELS)}
    assert summary["records_read"] == summary["examples"] == summary["examples_trained"] == len(examples)
    snapshot_models = read_avro_dir(os.path.join(str(out), "random-effect", "userId", "coefficients", "*.avro"))
    assert sorted(m["modelId"] for m in snapshot_models) == sorted(COLD + ["m-good"])


def test_initial_model_with_a_lone_surrogate_in_its_id_is_a_dead_letter(tmp_path):
    write_lines(tmp_path / "examples.jsonl", [line(good("ok-1", "u1", T0 + 1_000))])
    write_lines(tmp_path / "models.jsonl", [line(model("m-\ud800"))])
    out = tmp_path / "out"
    code = cli("--input", tmp_path / "examples.jsonl", "--output", out, "--initial-models", tmp_path / "models.jsonl",
               "--entity-field", "userId", "--timestamp-field", "timestamp", "--minibatch-seconds", 60,
               "--dedup-horizon-seconds", 0)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples_trained"] == 1
    assert (summary["initial_models"], summary["dead_letters"]) == (0, 1)
    [dead] = read_dead_letters(out)
    assert dead["stage"] == "model" and dead["payload"] == line(model("m-\ud800")).decode("ascii")
