"""Tests of the file formats: Avro schemas, example parsing, model reading and snapshot writing.

The contract is DESIGN.md §3 (Photon-ML / GDMix compatible Avro, JSON lines accepted wherever Avro
is) plus the issue that introduced ``transforms/formats.py``, ``transforms/examples.py`` and
``transforms/models.py``. Photon's schemas are written out below as literal dicts (copied from
DESIGN.md), never loaded from our package, so a drift in our ``.avsc`` files cannot hide itself.
"""

import copy
import glob
import importlib.resources
import io
import json
import math
import os
import sys

import fastavro
import numpy as np
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_core import INTERCEPT
from pipeline.simulation import ClickStream, StreamConfig
from transforms.examples import DeadLetter, Example, ExampleParser, read_examples
from transforms.formats import load_schema, raw_schema, write_avro, write_json_lines
from transforms.models import (
    LINEAR_MODEL_CLASS,
    LOGISTIC_MODEL_CLASS,
    ModelParser,
    RandomEffectModel,
    load_models,
    model_record,
    update_record,
    write_snapshot,
)

NS = "com.linkedin.photon.avro.generated"
# Derandomized (reproducible in CI, no example database): the same inputs on every run.
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------------
# Photon-ML's schemas, exactly as DESIGN.md §3 states them (literal dicts, not read from our package).
# --------------------------------------------------------------------------------------------------

PHOTON_NAME_TERM_VALUE = {
    "type": "record",
    "name": "NameTermValueAvro",
    "namespace": NS,
    "fields": [
        {"name": "name", "type": "string"},
        {"name": "term", "type": "string"},
        {"name": "value", "type": "double"},
    ],
}

PHOTON_FEATURE = {
    "type": "record",
    "name": "FeatureAvro",
    "namespace": NS,
    "fields": [
        {"name": "name", "type": "string"},
        {"name": "term", "type": "string"},
        {"name": "value", "type": "double"},
    ],
}

PHOTON_BAYESIAN_LINEAR_MODEL = {
    "type": "record",
    "name": "BayesianLinearModelAvro",
    "namespace": NS,
    "fields": [
        {"name": "modelId", "type": "string"},
        {"name": "modelClass", "type": ["null", "string"], "default": None},
        {
            "name": "means",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "NameTermValueAvro",
                    "namespace": NS,
                    "fields": [
                        {"name": "name", "type": "string"},
                        {"name": "term", "type": "string"},
                        {"name": "value", "type": "double"},
                    ],
                },
            },
        },
        {"name": "variances", "type": ["null", {"type": "array", "items": "NameTermValueAvro"}], "default": None},
        {"name": "lossFunction", "type": ["null", "string"], "default": None},
    ],
}

PHOTON_TRAINING_EXAMPLE = {
    "type": "record",
    "name": "TrainingExampleAvro",
    "namespace": NS,
    "fields": [
        {"name": "uid", "type": ["null", "string"], "default": None},
        {"name": "label", "type": "double"},
        {
            "name": "features",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "FeatureAvro",
                    "namespace": NS,
                    "fields": [
                        {"name": "name", "type": "string"},
                        {"name": "term", "type": "string"},
                        {"name": "value", "type": "double"},
                    ],
                },
            },
        },
        {"name": "metadataMap", "type": ["null", {"type": "map", "values": "string"}], "default": None},
        {"name": "weight", "type": ["null", "double"], "default": None},
        {"name": "offset", "type": ["null", "double"], "default": None},
    ],
}

PHOTON_SCHEMAS = {
    "NameTermValueAvro": PHOTON_NAME_TERM_VALUE,
    "FeatureAvro": PHOTON_FEATURE,
    "BayesianLinearModelAvro": PHOTON_BAYESIAN_LINEAR_MODEL,
    "TrainingExampleAvro": PHOTON_TRAINING_EXAMPLE,
}

# The extra, optional fields of our model-update records: (name, canonical type, default).
UPDATE_EXTRA_FIELDS = [
    ("version", "long", 0),
    ("windowEnd", "long", 0),
    ("numExamples", "long", 0),
    ("loss", ["null", "double"], None),
    ("converged", "boolean", False),
    ("coordinate", "string", ""),
]

# A writer schema for example files that carry the entity id and event time as top-level fields.
EXAMPLE_WITH_TOP_LEVEL_IDS = copy.deepcopy(PHOTON_TRAINING_EXAMPLE)
EXAMPLE_WITH_TOP_LEVEL_IDS["name"] = "ClickAvro"
EXAMPLE_WITH_TOP_LEVEL_IDS["fields"] += [
    {"name": "userId", "type": "string"},
    {"name": "timestamp", "type": "long"},
]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def canonical(schema: dict) -> str:
    return to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(schema)))


def defaults(schema: dict) -> dict:
    missing = "<no default>"
    return {f["name"]: f.get("default", missing) for f in schema["fields"]}


def write_photon_avro(path, schema: dict, records) -> None:
    """Write records with a schema given as a literal dict (a file written by "another system")."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(copy.deepcopy(schema)), list(records))


def read_with_photon_schema(path) -> list:
    with open(path, "rb") as f:
        return list(fastavro.reader(f, reader_schema=fastavro.parse_schema(copy.deepcopy(PHOTON_BAYESIAN_LINEAR_MODEL))))


def ntv(name, term, value) -> dict:
    return {"name": name, "term": term, "value": float(value)}


def model(entity, coefficients, version=0, window_end=0) -> RandomEffectModel:
    """A RandomEffectModel from [((name, term), mean, precision), ...]."""
    return RandomEffectModel(
        entity,
        tuple(nt for nt, _, _ in coefficients),
        np.array([m for _, m, _ in coefficients], dtype=float),
        np.array([p for _, _, p in coefficients], dtype=float),
        version,
        window_end,
    )


def means_of(m: RandomEffectModel) -> dict:
    return {nt: float(v) for nt, v in zip(m.feature_names, m.means)}


def variances_of(m: RandomEffectModel) -> dict:
    return {nt: float(v) for nt, v in zip(m.feature_names, m.variances())}


def valid_example(**overrides) -> dict:
    record = {
        "uid": "imp-1",
        "userId": "u1",
        "timestamp": 1_764_028_800_000,
        "label": 1.0,
        "weight": 2.0,
        "offset": -0.5,
        "features": [
            {"name": "ad_category", "term": "travel", "value": 1.0},
            {"name": "price_level", "term": "", "value": 0.25},
        ],
        "metadataMap": {"page": "feed"},
    }
    record.update(overrides)
    return record


PARSER = ExampleParser("userId", "timestamp")


def json_bytes(value) -> bytes:
    """``json.dumps`` that also writes integers longer than Python's 4300-digit str() limit."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value).encode("utf-8")
    finally:
        sys.set_int_max_str_digits(limit)


def assert_one_sentence(reason) -> None:
    assert isinstance(reason, str)
    assert reason.strip(), "a dead letter's reason must not be empty"
    assert reason == reason.strip(), f"reason has surrounding whitespace: {reason!r}"
    assert reason.endswith("."), f"reason is not a sentence ending with a full stop: {reason!r}"
    assert not reason.endswith(".."), reason


def assert_rejected(result, payload, *words) -> None:
    """A parse-stage dead letter carrying exactly ``payload``, whose reason mentions ``words``."""
    assert isinstance(result, DeadLetter), f"expected a dead letter, got {result!r}"
    assert result.stage == "parse"
    assert result.payload is payload
    assert_one_sentence(result.reason)
    for word in words:
        assert word.lower() in result.reason.lower(), f"{word!r} not in {result.reason!r}"


def assert_valid_example(example: Example, parser: ExampleParser) -> None:
    """Every Example the parser lets through satisfies the contract, whatever the input was."""
    assert isinstance(example.entity_id, str) and example.entity_id.strip()
    assert type(example.timestamp_ms) is int and example.timestamp_ms >= 0
    assert example.uid is None or isinstance(example.uid, str)
    for number in (example.label, example.weight, example.offset):
        assert type(number) is float and math.isfinite(number)
    assert example.weight >= 0
    if parser.binary_labels:
        assert example.label in (0.0, 1.0, -1.0)
    assert isinstance(example.features, tuple)
    assert len(example.features) <= parser.max_features
    keys = [(name, term) for name, term, _ in example.features]
    assert len(set(keys)) == len(keys)
    assert ("intercept", "intercept") not in keys and ("(INTERCEPT)", "") not in keys
    for name, term, value in example.features:
        assert isinstance(name, str) and isinstance(term, str)
        assert type(value) is float and math.isfinite(value)


# ==================================================================================================
# 1. Schemas
# ==================================================================================================


@pytest.mark.parametrize("name", sorted(PHOTON_SCHEMAS))
def test_shipped_schema_matches_photon_exactly(name):
    ours = raw_schema(name)
    photon = PHOTON_SCHEMAS[name]
    assert ours["name"] == name
    assert ours["namespace"] == NS
    assert [f["name"] for f in ours["fields"]] == [f["name"] for f in photon["fields"]]
    assert canonical(ours) == canonical(photon)
    assert defaults(ours) == defaults(photon)
    # The parsed form used for writing is the same schema.
    assert to_parsing_canonical_form(load_schema(name)) == canonical(photon)


def test_name_term_value_and_feature_records_have_the_same_three_fields():
    for name in ("NameTermValueAvro", "FeatureAvro"):
        assert [(f["name"], f["type"]) for f in raw_schema(name)["fields"]] == [
            ("name", "string"), ("term", "string"), ("value", "double")]


def test_model_update_schema_is_photon_record_plus_optional_fields():
    update = raw_schema("ModelUpdateAvro")
    assert update["name"] == "BayesianLinearModelAvro"
    assert update["namespace"] == NS
    photon_fields = PHOTON_BAYESIAN_LINEAR_MODEL["fields"]
    base = dict(update, fields=update["fields"][: len(photon_fields)])
    assert canonical(base) == canonical(PHOTON_BAYESIAN_LINEAR_MODEL)
    assert defaults(base) == defaults(PHOTON_BAYESIAN_LINEAR_MODEL)
    extras = update["fields"][len(photon_fields):]
    assert [f["name"] for f in extras] == [name for name, _, _ in UPDATE_EXTRA_FIELDS]
    for field, (name, avro_type, default) in zip(extras, UPDATE_EXTRA_FIELDS):
        assert field["type"] == avro_type, name
        assert "default" in field, f"{name} must be optional (have a default)"
        assert field["default"] == default and type(field["default"]) is type(default), name


def test_schemas_are_package_data_of_transforms():
    schema_dir = importlib.resources.files("transforms") / "schemas"
    for name in list(PHOTON_SCHEMAS) + ["ModelUpdateAvro"]:
        resource = schema_dir / f"{name}.avsc"
        assert resource.is_file(), f"{name}.avsc is not shipped in transforms/schemas"
        assert json.loads(resource.read_text(encoding="utf-8")) == raw_schema(name)


def test_load_schema_is_parsed_once_per_process():
    assert load_schema("BayesianLinearModelAvro") is load_schema("BayesianLinearModelAvro")


def test_a_record_written_with_photon_example_schema_reads_with_ours(tmp_path):
    path = tmp_path / "ex.avro"
    record = {"uid": None, "label": 0.0, "features": [{"name": "a", "term": "", "value": 2.0}],
              "metadataMap": {"userId": "u"}, "weight": None, "offset": None}
    write_photon_avro(path, PHOTON_TRAINING_EXAMPLE, [record])
    with open(path, "rb") as f:
        (read,) = list(fastavro.reader(f, reader_schema=load_schema("TrainingExampleAvro")))
    assert read == record


# ==================================================================================================
# 2. Example parsing: one rule at a time
# ==================================================================================================


def test_valid_record_parses_to_example_equal_to_its_inputs():
    record = valid_example()
    assert PARSER.parse(record) == Example(
        entity_id="u1",
        timestamp_ms=1_764_028_800_000,
        uid="imp-1",
        label=1.0,
        weight=2.0,
        offset=-0.5,
        features=(("ad_category", "travel", 1.0), ("price_level", "", 0.25)),
    )


def test_parse_does_not_modify_the_record():
    record = valid_example(features=[{"name": "a", "term": None, "value": 1}])
    snapshot = copy.deepcopy(record)
    PARSER.parse(record)
    assert record == snapshot


def test_example_numbers_are_floats_even_from_json_integers():
    ex = PARSER.parse(valid_example(label=1, weight=3, offset=2, features=[{"name": "a", "term": "", "value": 7}]))
    assert isinstance(ex, Example)
    assert (type(ex.label), type(ex.weight), type(ex.offset), type(ex.features[0][2])) == (float,) * 4
    assert (ex.label, ex.weight, ex.offset, ex.features) == (1.0, 3.0, 2.0, (("a", "", 7.0),))


def test_simulated_click_stream_parses_without_dead_letters():
    stream = ClickStream(StreamConfig(num_users=15, hours=0.5, seed=7))
    records = list(stream.examples())
    assert records
    for record in records:
        ex = PARSER.parse(record)
        assert isinstance(ex, Example), ex
        assert ex.entity_id == record["userId"] and ex.timestamp_ms == record["timestamp"]
        assert ex.offset == record["offset"] and ex.label == record["label"]
        assert ex.features == tuple((f["name"], f["term"], f["value"]) for f in record["features"])


# ---- entity id ----------------------------------------------------------------------------------


def test_entity_id_from_metadata_map_when_not_top_level():
    record = valid_example(metadataMap={"userId": "m7"})
    del record["userId"]
    assert PARSER.parse(record).entity_id == "m7"


def test_entity_id_from_metadata_map_when_top_level_is_null():
    assert PARSER.parse(valid_example(userId=None, metadataMap={"userId": "m7"})).entity_id == "m7"


def test_top_level_entity_id_wins_over_metadata_map():
    assert PARSER.parse(valid_example(userId="top", metadataMap={"userId": "meta"})).entity_id == "top"


def test_entity_field_name_is_the_callers():
    parser = ExampleParser("memberId", "timestamp")
    assert parser.parse(valid_example(memberId="m1")).entity_id == "m1"
    record = valid_example()
    assert_rejected(parser.parse(record), record, "memberId")


@pytest.mark.parametrize("value, expected", [(7, "7"), (0, "0"), (-3, "-3"), (12345678901234567890, "12345678901234567890")])
def test_integer_entity_ids_become_strings(value, expected):
    assert PARSER.parse(valid_example(userId=value)).entity_id == expected


def test_float_entity_id_becomes_a_string():
    ex = PARSER.parse(valid_example(userId=1.5))
    assert isinstance(ex, Example) and ex.entity_id == "1.5"


@pytest.mark.parametrize("value", ["", "   ", "\t\n", True, False, [], ["u1"], {"id": 1}, math.nan, math.inf])
def test_empty_or_non_scalar_entity_id_is_rejected(value):
    record = valid_example(userId=value)
    assert_rejected(PARSER.parse(record), record, "entity id")


def test_missing_entity_id_is_rejected():
    record = valid_example()
    del record["userId"]
    assert_rejected(PARSER.parse(record), record, "userId", "missing")


def test_metadata_map_that_is_not_a_map_is_rejected():
    record = valid_example(metadataMap=["userId", "u1"])
    assert_rejected(PARSER.parse(record), record, "metadataMap")


# ---- event time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(0, 0), (1_764_028_800_000, 1_764_028_800_000),
                                             ("1764028800000", 1_764_028_800_000), (" 42 ", 42)])
def test_event_time_is_an_int_or_a_numeric_string(value, expected):
    ex = PARSER.parse(valid_example(timestamp=value))
    assert isinstance(ex, Example) and ex.timestamp_ms == expected and type(ex.timestamp_ms) is int


def test_event_time_from_metadata_map_string():
    record = valid_example(metadataMap={"timestamp": "1000", "userId": "x"})
    del record["timestamp"]
    assert PARSER.parse(record).timestamp_ms == 1000


@pytest.mark.parametrize("value", [1000.0, 1.5, "1e3", "10.5", "soon", "", True, None, [1000], {"ms": 1000},
                                   math.nan, math.inf])
def test_event_time_of_any_other_kind_is_rejected(value):
    record = valid_example(timestamp=value)
    assert_rejected(PARSER.parse(record), record, "event time")


# ---- label, weight, offset ----------------------------------------------------------------------


@pytest.mark.parametrize("label", [0, 1, -1, 0.0, 1.0, -1.0])
def test_binary_labels_accepted(label):
    assert PARSER.parse(valid_example(label=label)).label == float(label)


@pytest.mark.parametrize("label", [2, 0.5, -0.5, 3.0])
def test_non_binary_label_rejected_when_binary_labels(label):
    record = valid_example(label=label)
    assert_rejected(PARSER.parse(record), record, "label")


@pytest.mark.parametrize("label", [2.5, -7, 1e6, 0.0])
def test_any_finite_label_accepted_without_binary_labels(label):
    parser = ExampleParser("userId", "timestamp", binary_labels=False)
    assert parser.parse(valid_example(label=label)).label == float(label)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("label", [math.nan, math.inf, -math.inf, "1", True, None, [1], {"v": 1}])
def test_missing_or_non_finite_label_rejected(binary, label):
    parser = ExampleParser("userId", "timestamp", binary_labels=binary)
    record = valid_example(label=label)
    assert_rejected(parser.parse(record), record, "label")


def test_weight_defaults_to_one_and_offset_to_zero():
    record = valid_example()
    del record["weight"], record["offset"]
    ex = PARSER.parse(record)
    assert (ex.weight, ex.offset) == (1.0, 0.0)
    ex = PARSER.parse(valid_example(weight=None, offset=None))  # Avro's null
    assert (ex.weight, ex.offset) == (1.0, 0.0)


@pytest.mark.parametrize("weight", [0, 0.0, 1e-9, 5])
def test_zero_or_positive_weight_accepted(weight):
    assert PARSER.parse(valid_example(weight=weight)).weight == float(weight)


@pytest.mark.parametrize("weight", [-1, -1e-9, math.nan, math.inf, "2", True])
def test_negative_non_finite_or_non_numeric_weight_rejected(weight):
    record = valid_example(weight=weight)
    assert_rejected(PARSER.parse(record), record, "weight")


@pytest.mark.parametrize("offset", [math.nan, math.inf, -math.inf, "0.5", False])
def test_non_finite_or_non_numeric_offset_rejected(offset):
    record = valid_example(offset=offset)
    assert_rejected(PARSER.parse(record), record, "offset")


def test_negative_offset_accepted():
    assert PARSER.parse(valid_example(offset=-12.5)).offset == -12.5


# ---- uid ----------------------------------------------------------------------------------------


def test_uid_optional_and_integers_become_strings():
    record = valid_example()
    del record["uid"]
    assert PARSER.parse(record).uid is None
    assert PARSER.parse(valid_example(uid=None)).uid is None
    assert PARSER.parse(valid_example(uid=17)).uid == "17"


# ---- features -----------------------------------------------------------------------------------


def test_null_term_is_empty_string():
    ex = PARSER.parse(valid_example(features=[{"name": "price", "term": None, "value": 0.5}]))
    assert ex.features == (("price", "", 0.5),)


def test_empty_feature_list_is_an_intercept_only_example():
    assert PARSER.parse(valid_example(features=[])).features == ()


def test_feature_order_is_kept():
    features = [{"name": n, "term": "t", "value": float(i)} for i, n in enumerate("zyxabc")]
    assert [f[0] for f in PARSER.parse(valid_example(features=features)).features] == list("zyxabc")


def test_same_name_different_terms_are_different_features():
    features = [{"name": "cat", "term": "a", "value": 1.0}, {"name": "cat", "term": "b", "value": 1.0}]
    assert len(PARSER.parse(valid_example(features=features)).features) == 2


@pytest.mark.parametrize("features", [
    [{"name": "a", "term": "", "value": 1.0}, {"name": "a", "term": "", "value": 2.0}],
    [{"name": "a", "term": None, "value": 1.0}, {"name": "a", "term": "", "value": 1.0}],
])
def test_duplicate_name_term_rejected(features):
    record = valid_example(features=features)
    assert_rejected(PARSER.parse(record), record, "more than once")


@pytest.mark.parametrize("name, term", [("intercept", "intercept"), ("(INTERCEPT)", ""), ("(INTERCEPT)", None)])
def test_intercept_names_are_reserved(name, term):
    record = valid_example(features=[{"name": "a", "term": "", "value": 1.0}, {"name": name, "term": term, "value": 1.0}])
    assert_rejected(PARSER.parse(record), record, "intercept")


@pytest.mark.parametrize("name, term", [("intercept", ""), ("(INTERCEPT)", "x"), ("INTERCEPT", ""), ("Intercept", "intercept")])
def test_names_that_only_resemble_the_intercept_are_ordinary_features(name, term):
    ex = PARSER.parse(valid_example(features=[{"name": name, "term": term, "value": 1.0}]))
    assert isinstance(ex, Example) and ex.features == ((name, term, 1.0),)


def test_max_features_is_inclusive():
    parser = ExampleParser("userId", "timestamp", max_features=3)
    features = [{"name": f"f{i}", "term": "", "value": 1.0} for i in range(4)]
    assert len(parser.parse(valid_example(features=features[:3])).features) == 3
    record = valid_example(features=features)
    assert_rejected(parser.parse(record), record, "4", "3")


def test_default_max_features_is_1000():
    features = [{"name": f"f{i}", "term": "", "value": 1.0} for i in range(1001)]
    assert isinstance(PARSER.parse(valid_example(features=features[:1000])), Example)
    record = valid_example(features=features)
    assert_rejected(PARSER.parse(record), record, "1000")


@pytest.mark.parametrize("feature, word", [
    ({"name": "a", "term": "", "value": math.nan}, "value"),
    ({"name": "a", "term": "", "value": math.inf}, "value"),
    ({"name": "a", "term": "", "value": "1.0"}, "value"),
    ({"name": "a", "term": "", "value": True}, "value"),
    ({"name": "a", "term": ""}, "value"),
    ({"name": 3, "term": "", "value": 1.0}, "name"),
    ({"term": "", "value": 1.0}, "name"),
    ({"name": "a", "term": 5, "value": 1.0}, "term"),
    (["a", "", 1.0], "feature"),
    ("a", "feature"),
    (None, "feature"),
])
def test_malformed_feature_rejected(feature, word):
    record = valid_example(features=[{"name": "ok", "term": "", "value": 1.0}, feature])
    assert_rejected(PARSER.parse(record), record, word)


@pytest.mark.parametrize("features", [None, "a:1", {"name": "a", "term": "", "value": 1.0}, 3])
def test_features_not_a_list_rejected(features):
    record = valid_example(features=features)
    assert_rejected(PARSER.parse(record), record, "features")


# ---- whole records that are not objects ---------------------------------------------------------


@pytest.mark.parametrize("record", [None, 3, 2.5, "text", [1, 2], [valid_example()], True])
def test_non_object_record_rejected_with_original_payload(record):
    assert_rejected(PARSER.parse(record), record)


def test_dead_letter_to_dict():
    record = valid_example(label=7)
    dl = PARSER.parse(record)
    assert dl.to_dict() == {"reason": dl.reason, "stage": "parse", "payload": record}


def test_dead_letter_reason_is_one_line_when_feature_name_has_a_line_break():
    """Data quoted in a reason must not split it over lines (names are repr-quoted elsewhere)."""
    record = valid_example(features=[{"name": "a\nb", "term": "", "value": 1.0},
                                     {"name": "a\nb", "term": "", "value": 1.0}])
    dl = PARSER.parse(record)
    assert_rejected(dl, record, "more than once")
    assert "\n" not in dl.reason, f"reason spans several lines: {dl.reason!r}"


# ---- JSON lines ---------------------------------------------------------------------------------


def test_parse_json_line_valid():
    line = json.dumps(valid_example()).encode()
    assert PARSER.parse_json_line(line) == PARSER.parse(valid_example())


@pytest.mark.parametrize("line", [b"not json", b"{\"userId\": ", b"{'single': 'quotes'}", b"\xff\xfe\x00garbage"])
def test_parse_json_line_not_json_gives_raw_line_as_payload(line):
    dl = PARSER.parse_json_line(line)
    assert isinstance(dl, DeadLetter) and dl.stage == "parse"
    assert_one_sentence(dl.reason)
    assert "json" in dl.reason.lower()
    assert isinstance(dl.payload, str)
    assert dl.payload == line.decode("utf-8", "backslashreplace")


def test_parse_json_line_non_ascii_text_payload_is_decoded_text():
    line = "{\"userId\": \"é\", oops}".encode("utf-8")
    assert PARSER.parse_json_line(line).payload == "{\"userId\": \"é\", oops}"


def test_parse_json_line_of_json_non_object_gives_the_value():
    dl = PARSER.parse_json_line(b"[1, 2, 3]")
    assert isinstance(dl, DeadLetter) and dl.payload == [1, 2, 3]


@pytest.mark.parametrize("line", [b"[" * 100_000, b"{\"a\":" * 100_000, b"[" * 100_000 + b"]" * 100_000])
def test_parse_json_line_never_raises_on_deeply_nested_json(line):
    result = PARSER.parse_json_line(line)
    assert isinstance(result, DeadLetter)
    assert result.stage == "parse"
    assert_one_sentence(result.reason)


def test_read_examples_deeply_nested_json_line_is_a_dead_letter_and_reading_goes_on(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + json.dumps(valid_example()).encode() + b"\n")
    results = list(read_examples(str(path), PARSER))
    assert len(results) == 2
    assert isinstance(results[0], DeadLetter) and results[0].stage == "parse"
    assert results[1] == PARSER.parse(valid_example())


def test_load_models_deeply_nested_json_line_is_a_dead_letter(tmp_path):
    path = tmp_path / "models.jsonl"
    path.write_bytes(b"{\"a\":" * 100_000 + b"\n" + json.dumps(PHOTON_MODELS[0]).encode() + b"\n")
    models, dead = load_models(str(path), PENALTY)
    assert sorted(models) == ["member-1"]
    assert len(dead) == 1 and dead[0].stage == "model"


def test_parse_json_line_accepts_text_with_lone_surrogates():
    result = PARSER.parse_json_line("{\"userId\": \"\ud800\"")
    assert isinstance(result, DeadLetter)
    assert result.stage == "parse"


# ==================================================================================================
# 3. Property-based: the parser never raises and always returns exactly one of Example / DeadLetter
# ==================================================================================================

# Integers beyond Python's 4300-digit str() limit are built lazily: hypothesis itself repr()s constants.
HUGE_NUMBERS = st.one_of(
    st.sampled_from([10**20, -(10**20), 2**63, 2**64 + 1, 10**400, -(10**400), 1e308, -1e308, 5e-324, 1e15, 10**15]),
    st.sampled_from([5000, -5000]).map(lambda n: 10**abs(n) if n > 0 else -(10**abs(n))),
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), HUGE_NUMBERS, NON_FINITE,
)
JSON_LIKE = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
NESTED_JUNK = st.sampled_from([[[[{"a": [[]]}]]], {"name": {"term": {"value": []}}}, [None] * 5, {"": {"": {}}}])
BAD_VALUES = st.one_of(JSON_LIKE, NON_FINITE, HUGE_NUMBERS, NESTED_JUNK, st.sampled_from(["", "   ", True, False, None]))

FIELDS = ["userId", "timestamp", "label", "weight", "offset", "uid", "features", "metadataMap"]
FEATURE_LIKE = st.dictionaries(st.sampled_from(["name", "term", "value", "extra"]), JSON_LIKE, max_size=4)
FIELD_SHAPED = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(JSON_LIKE, st.lists(st.one_of(FEATURE_LIKE, JSON_LIKE), max_size=4),
              st.dictionaries(st.sampled_from(["userId", "timestamp", "x"]), JSON_LIKE, max_size=3)),
)

FINITE = st.floats(allow_nan=False, allow_infinity=False)
RESERVED = {("intercept", "intercept"), ("(INTERCEPT)", "")}


@st.composite
def valid_records(draw, binary_labels=True):
    """(record, expected Example) for an arbitrary valid record."""
    record = {}
    metadata = {}
    entity = draw(st.one_of(st.text(min_size=1, max_size=12).filter(str.strip),
                            st.integers(-(10**15), 10**15)))
    expected_entity = str(entity)
    if draw(st.booleans()):
        record["userId"] = entity
    else:
        metadata["userId"] = str(entity)  # Photon's metadataMap holds strings
    ts = draw(st.integers(0, 10**15 - 1))
    ts_value = draw(st.sampled_from([ts, str(ts)]))
    if draw(st.booleans()):
        record["timestamp"] = ts_value
    else:
        metadata["timestamp"] = str(ts)
    if metadata or draw(st.booleans()):
        metadata.update(draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k not in ("userId", "timestamp")),
                                             st.text(max_size=6), max_size=2)))
        record["metadataMap"] = metadata
    label = draw(st.sampled_from([0, 1, -1, 0.0, 1.0, -1.0]) if binary_labels else st.one_of(FINITE, st.integers(-1000, 1000)))
    record["label"] = label
    weight = draw(st.one_of(st.none(), st.floats(min_value=0, allow_infinity=False), st.integers(0, 1000)))
    if weight is not None or draw(st.booleans()):
        record["weight"] = weight
    offset = draw(st.one_of(st.none(), FINITE, st.integers(-1000, 1000)))
    if offset is not None or draw(st.booleans()):
        record["offset"] = offset
    uid = draw(st.one_of(st.none(), st.text(max_size=10), st.integers(-(10**9), 10**9)))
    if uid is not None or draw(st.booleans()):
        record["uid"] = uid
    keys = draw(st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.text(max_size=8))),
                         max_size=8, unique_by=lambda k: (k[0], k[1] or "")).filter(
        lambda ks: all((n, t or "") not in RESERVED for n, t in ks)))
    values = draw(st.lists(st.one_of(FINITE, st.integers(-(10**6), 10**6)), min_size=len(keys), max_size=len(keys)))
    record["features"] = [{"name": n, "term": t, "value": v} for (n, t), v in zip(keys, values)]
    expected = Example(
        entity_id=expected_entity,
        timestamp_ms=ts,
        uid=None if uid is None else str(uid),
        label=float(label),
        weight=1.0 if weight is None else float(weight),
        offset=0.0 if offset is None else float(offset),
        features=tuple((n, t or "", float(v)) for (n, t), v in zip(keys, values)),
    )
    return record, expected


def _slots(value, out):
    """Every (container, key) pair inside ``value``: where a mutation can happen."""
    if isinstance(value, dict):
        for key in list(value):
            out.append((value, key))
            _slots(value[key], out)
    elif isinstance(value, list):
        for i in range(len(value)):
            out.append((value, i))
            _slots(value[i], out)
    return out


@st.composite
def mutated_records(draw):
    record, _ = draw(valid_records(binary_labels=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(record, [])
        action = draw(st.sampled_from(["delete", "replace", "replace", "add_junk_key", "duplicate_feature"]))
        if action == "add_junk_key" or not slots:
            record[draw(st.text(max_size=6))] = copy.deepcopy(draw(BAD_VALUES))
        elif action == "duplicate_feature" and record.get("features"):
            if isinstance(record["features"], list):
                record["features"].append(copy.deepcopy(draw(st.sampled_from(record["features"]))))
        else:
            container, key = draw(st.sampled_from(slots))
            if action == "delete":
                del container[key]
            else:
                container[key] = copy.deepcopy(draw(BAD_VALUES))  # constants are shared: never alias them
    return record


def check_outcome(parser: ExampleParser, record) -> None:
    result = parser.parse(record)
    assert isinstance(result, (Example, DeadLetter))
    assert isinstance(result, Example) != isinstance(result, DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.stage == "parse"
        assert result.payload is record
        assert_one_sentence(result.reason)
    else:
        assert_valid_example(result, parser)


@PROPERTY
@given(record=JSON_LIKE, binary=st.booleans())
def test_property_arbitrary_json_like_objects(record, binary):
    check_outcome(ExampleParser("userId", "timestamp", binary_labels=binary), record)


@PROPERTY
@given(record=FIELD_SHAPED, binary=st.booleans(), max_features=st.integers(0, 5))
def test_property_arbitrary_values_in_the_known_fields(record, binary, max_features):
    check_outcome(ExampleParser("userId", "timestamp", binary_labels=binary, max_features=max_features), record)


@PROPERTY
@given(record=mutated_records(), binary=st.booleans())
def test_property_mutations_of_valid_records(record, binary):
    check_outcome(ExampleParser("userId", "timestamp", binary_labels=binary), record)


@PROPERTY
@given(data=st.data(), binary=st.booleans())
def test_property_valid_record_parses_to_its_inputs(data, binary):
    record, expected = data.draw(valid_records(binary_labels=binary))
    parser = ExampleParser("userId", "timestamp", binary_labels=binary)
    result = parser.parse(record)
    assert result == expected
    assert_valid_example(result, parser)
    # The same record as a JSON line parses identically (JSON lines accepted wherever Avro is).
    assert parser.parse_json_line(json.dumps(record).encode("utf-8")) == expected


@PROPERTY
@given(data=st.data())
def test_property_valid_record_with_too_many_features_is_rejected(data):
    record, expected = data.draw(valid_records())
    limit = data.draw(st.integers(0, 8))
    result = ExampleParser("userId", "timestamp", max_features=limit).parse(record)
    if len(expected.features) <= limit:
        assert result == expected
    else:
        assert_rejected(result, record, "limit")


@PROPERTY
@given(line=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=80).map(lambda s: s.encode("utf-8")),
    JSON_LIKE.map(json_bytes),
    FIELD_SHAPED.map(json_bytes),
    mutated_records().map(json_bytes),
))
def test_property_arbitrary_bytes_through_parse_json_line(line):
    result = PARSER.parse_json_line(line)
    assert isinstance(result, (Example, DeadLetter))
    assert isinstance(result, Example) != isinstance(result, DeadLetter)
    if isinstance(result, Example):
        assert_valid_example(result, PARSER)
        return
    assert result.stage == "parse"
    assert_one_sentence(result.reason)
    try:
        value = json.loads(line)
    except ValueError:
        assert isinstance(result.payload, str)
        assert result.payload == line.decode("utf-8", "backslashreplace")
    else:
        if value is not None:  # the JSON line `null`: see test_parse_json_line_null_is_json
            assert PARSER.parse(value).reason == result.reason


def test_parse_json_line_null_is_json():
    """`null` is valid JSON: it is rejected as a non-object, not reported as an invalid line."""
    result = PARSER.parse_json_line(b"null")
    assert isinstance(result, DeadLetter)
    assert result.payload is None
    assert "not valid JSON" not in result.reason


# ==================================================================================================
# 4. read_examples: Avro, JSON lines, globs, explicit formats
# ==================================================================================================

PHOTON_EXAMPLES = [
    {"uid": "a", "label": 1.0, "features": [{"name": "x", "term": "", "value": 1.0}],
     "metadataMap": {"userId": "u1", "timestamp": "1000"}, "weight": None, "offset": None},
    {"uid": None, "label": 0.0, "features": [],
     "metadataMap": {"userId": "u2", "timestamp": "2000"}, "weight": 0.5, "offset": 0.25},
    {"uid": "c", "label": 2.0, "features": [],  # not binary: a dead letter
     "metadataMap": {"userId": "u3", "timestamp": "3000"}, "weight": None, "offset": None},
]
EXPECTED_PHOTON_EXAMPLES = [
    Example("u1", 1000, "a", 1.0, 1.0, 0.0, (("x", "", 1.0),)),
    Example("u2", 2000, None, 0.0, 0.5, 0.25, ()),
]


def test_read_examples_from_photon_avro_with_ids_in_metadata_map(tmp_path):
    path = tmp_path / "part-00000.avro"
    write_photon_avro(path, PHOTON_TRAINING_EXAMPLE, PHOTON_EXAMPLES)
    results = list(read_examples(str(path), PARSER))
    assert results[:2] == EXPECTED_PHOTON_EXAMPLES
    assert isinstance(results[2], DeadLetter) and results[2].payload == PHOTON_EXAMPLES[2]
    assert len(results) == 3


def test_read_examples_from_avro_with_top_level_id_fields(tmp_path):
    path = tmp_path / "clicks.avro"
    records = [dict(PHOTON_EXAMPLES[0], metadataMap=None, userId="top", timestamp=5)]
    write_photon_avro(path, EXAMPLE_WITH_TOP_LEVEL_IDS, records)
    (ex,) = list(read_examples(str(path), PARSER))
    assert ex == Example("top", 5, "a", 1.0, 1.0, 0.0, (("x", "", 1.0),))


def test_read_examples_written_with_our_schema(tmp_path):
    path = tmp_path / "ours.avro"
    assert write_avro(str(path), "TrainingExampleAvro", PHOTON_EXAMPLES) == 3
    assert list(read_examples(str(path), PARSER))[:2] == EXPECTED_PHOTON_EXAMPLES


def test_avro_and_json_lines_give_identical_examples(tmp_path):
    avro_path, json_path = tmp_path / "x.avro", tmp_path / "x.jsonl"
    write_photon_avro(avro_path, PHOTON_TRAINING_EXAMPLE, PHOTON_EXAMPLES)
    assert write_json_lines(str(json_path), PHOTON_EXAMPLES) == 3
    from_avro = list(read_examples(str(avro_path), PARSER))
    from_json = list(read_examples(str(json_path), PARSER))
    assert from_avro == from_json


def test_read_examples_json_lines_blank_lines_crlf_and_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps(valid_example()).encode()
    path.write_bytes(b"\n" + good + b"\r\n   \n" + b"this is not json\r\n" + b"[1]\n" + good)
    results = list(read_examples(str(path), PARSER))
    assert len(results) == 4
    assert results[0] == results[3] == PARSER.parse(valid_example())
    assert isinstance(results[1], DeadLetter) and results[1].payload == "this is not json"
    assert isinstance(results[2], DeadLetter) and results[2].payload == [1]


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".ndjson", ".JSONL"])
def test_json_lines_extensions(tmp_path, ext):
    path = tmp_path / f"events{ext}"
    path.write_text(json.dumps(valid_example()) + "\n", encoding="utf-8")
    assert list(read_examples(str(path), PARSER)) == [PARSER.parse(valid_example())]


def test_read_examples_glob_over_avro_and_json_lines(tmp_path):
    write_photon_avro(tmp_path / "in" / "a.avro", PHOTON_TRAINING_EXAMPLE, PHOTON_EXAMPLES[:1])
    write_json_lines(str(tmp_path / "in" / "b.jsonl"), PHOTON_EXAMPLES[1:2])
    write_json_lines(str(tmp_path / "in" / "c.jsonl"), [valid_example()])
    (tmp_path / "other.jsonl").write_text(json.dumps(valid_example(userId="zzz")) + "\n")
    results = list(read_examples(str(tmp_path / "in" / "*"), PARSER))
    assert results == EXPECTED_PHOTON_EXAMPLES + [PARSER.parse(valid_example())]


def test_read_examples_explicit_format_overrides_extension(tmp_path):
    json_txt = tmp_path / "events.txt"
    json_txt.write_text(json.dumps(valid_example()) + "\n")
    assert list(read_examples(str(json_txt), PARSER, input_format="json")) == [PARSER.parse(valid_example())]
    avro_dat = tmp_path / "events.dat"
    write_photon_avro(avro_dat, PHOTON_TRAINING_EXAMPLE, PHOTON_EXAMPLES[:1])
    assert list(read_examples(str(avro_dat), PARSER, input_format="avro")) == EXPECTED_PHOTON_EXAMPLES[:1]


def test_read_examples_unknown_extension_without_format_is_an_error(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text(json.dumps(valid_example()) + "\n")
    with pytest.raises(ValueError, match="format"):
        list(read_examples(str(path), PARSER))
    with pytest.raises(ValueError, match="format"):
        list(read_examples(str(path), PARSER, input_format="csv"))


def test_read_examples_nothing_matches(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_examples(str(tmp_path / "nope-*.avro"), PARSER))


def test_read_examples_simulated_stream_through_avro(tmp_path):
    records = list(ClickStream(StreamConfig(num_users=10, hours=0.25, seed=3)).examples())
    path = tmp_path / "stream.avro"
    write_photon_avro(path, EXAMPLE_WITH_TOP_LEVEL_IDS, records)
    results = list(read_examples(str(path), PARSER))
    assert results == [PARSER.parse(r) for r in records]
    assert all(isinstance(r, Example) for r in results)


# ==================================================================================================
# 5. Models in: ModelParser and load_models
# ==================================================================================================

PENALTY = 2.0


def test_model_parser_photon_intercept_anywhere_maps_to_index_0():
    record = {"modelId": "e1", "modelClass": LOGISTIC_MODEL_CLASS, "lossFunction": "",
              "means": [ntv("a", "x", 0.5), ntv("(INTERCEPT)", "", -1.25), ntv("b", "", 2.0)],
              "variances": [ntv("a", "x", 0.25), ntv("(INTERCEPT)", "", 0.5), ntv("b", "", 4.0)]}
    m = ModelParser(PENALTY).parse(record)
    assert m.entity_id == "e1"
    assert m.feature_names == (INTERCEPT, ("a", "x"), ("b", ""))
    assert m.means.tolist() == [-1.25, 0.5, 2.0]
    assert m.precisions.tolist() == [2.0, 4.0, 0.25]
    assert m.variances().tolist() == [0.5, 0.25, 4.0]


def test_model_parser_core_intercept_convention():
    record = {"modelId": "e1", "means": [ntv("b", "", 2.0), ntv("intercept", "intercept", 0.75)], "variances": None}
    m = ModelParser(PENALTY).parse(record)
    assert m.feature_names == (INTERCEPT, ("b", ""))
    assert m.means.tolist() == [0.75, 2.0]


def test_model_parser_missing_variances_give_precision_penalty_everywhere():
    for variances in (None, "absent"):
        record = {"modelId": "e", "means": [ntv("(INTERCEPT)", "", 1.0), ntv("a", "", 3.0)]}
        if variances is None:
            record["variances"] = None
        m = ModelParser(7.5).parse(record)
        assert m.precisions.tolist() == [7.5, 7.5]


def test_model_parser_partial_variances():
    record = {"modelId": "e", "means": [ntv("(INTERCEPT)", "", 1.0), ntv("a", "", 3.0)],
              "variances": [ntv("a", "", 0.5)]}
    m = ModelParser(PENALTY).parse(record)
    assert m.precisions.tolist() == [PENALTY, 2.0]


def test_model_parser_without_intercept_gets_a_zero_intercept():
    m = ModelParser(PENALTY).parse({"modelId": "e", "means": [ntv("a", "", 3.0)], "variances": None})
    assert m.feature_names == (INTERCEPT, ("a", ""))
    assert m.means.tolist() == [0.0, 3.0]
    assert m.precisions.tolist() == [PENALTY, PENALTY]


def test_model_parser_integer_model_id_becomes_string():
    assert ModelParser(PENALTY).parse({"modelId": 42, "means": []}).entity_id == "42"


@pytest.mark.parametrize("means, variances, word", [
    ([ntv("a", "", math.nan)], None, "non-finite"),
    ([ntv("a", "", math.inf)], None, "non-finite"),
    ([ntv("(INTERCEPT)", "", -math.inf)], None, "non-finite"),
    ([ntv("a", "", 1.0)], [ntv("a", "", 0.0)], "variance"),
    ([ntv("a", "", 1.0)], [ntv("a", "", -1.0)], "variance"),
    ([ntv("a", "", 1.0)], [ntv("a", "", math.nan)], "variance"),
    ([ntv("a", "", 1.0)], [ntv("a", "", math.inf)], "variance"),
    ([ntv("(INTERCEPT)", "", 1.0)], [ntv("intercept", "intercept", -0.5)], "variance"),
    ([ntv("a", "", 1.0), ntv("a", "", 2.0)], None, "more than once"),
    ([ntv("(INTERCEPT)", "", 1.0), ntv("intercept", "intercept", 2.0)], None, "more than once"),
    ("means", None, "means"),
    ([ntv("a", "", 1.0)], "variances", "variances"),
    ([{"name": "a", "term": "", "value": "1"}], None, "number"),
    ([{"name": None, "term": "", "value": 1.0}], None, "string"),
])
def test_model_parser_invalid_models_are_dead_letters(means, variances, word):
    record = {"modelId": "bad", "means": means, "variances": variances}
    dl = ModelParser(PENALTY).parse(record)
    assert isinstance(dl, DeadLetter), dl
    assert dl.stage == "model"
    assert dl.payload is record
    assert_one_sentence(dl.reason)
    assert word in dl.reason


@pytest.mark.parametrize("record", [None, "text", [1], {"means": []}, {"modelId": "", "means": []},
                                    {"modelId": True, "means": []}])
def test_model_parser_records_without_entity_are_dead_letters(record):
    dl = ModelParser(PENALTY).parse(record)
    assert isinstance(dl, DeadLetter) and dl.stage == "model" and dl.payload == record


def test_model_parser_max_coefficients():
    means = [ntv(f"f{i}", "", 1.0) for i in range(5)]
    assert isinstance(ModelParser(PENALTY, max_coefficients=5).parse({"modelId": "e", "means": means}), RandomEffectModel)
    dl = ModelParser(PENALTY, max_coefficients=4).parse({"modelId": "e", "means": means})
    assert isinstance(dl, DeadLetter) and dl.stage == "model" and "limit" in dl.reason


def test_model_parser_tiny_positive_variance_gives_a_usable_precision():
    """A variance that is finite and > 0 is accepted, so its precision must be finite too (else the
    snapshot writes variance 1/inf = 0, which load_models then rejects)."""
    record = {"modelId": "e", "means": [ntv("a", "", 1.0)], "variances": [ntv("a", "", 1e-320)]}
    result = ModelParser(PENALTY).parse(record)
    if isinstance(result, RandomEffectModel):
        assert np.all(np.isfinite(result.precisions)), result.precisions


MODEL_RECORD_KEYS = ["modelId", "modelClass", "means", "variances", "lossFunction", "version", "windowEnd"]


@PROPERTY
@given(record=st.one_of(
    JSON_LIKE,
    st.dictionaries(st.sampled_from(MODEL_RECORD_KEYS),
                    st.one_of(JSON_LIKE, st.lists(st.one_of(FEATURE_LIKE, JSON_LIKE), max_size=4))),
))
def test_property_model_parser_never_raises(record):
    result = ModelParser(PENALTY).parse(record)
    assert isinstance(result, RandomEffectModel) != isinstance(result, DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.stage == "model"
        assert_one_sentence(result.reason)
    else:
        assert result.feature_names[0] == INTERCEPT
        assert len(set(result.feature_names)) == len(result.feature_names)
        assert np.all(np.isfinite(result.means))
        assert np.all(result.precisions > 0)
        assert np.all(np.isfinite(result.precisions))


def test_model_parser_huge_integer_model_id_reason_is_a_sentence():
    """An incidental ValueError (here: int -> str beyond Python's 4300-digit limit) must not become
    the dead letter's reason verbatim."""
    limit = sys.get_int_max_str_digits()
    record = {"modelId": 10 ** (limit + 10), "means": []}
    result = ModelParser(PENALTY).parse(record)
    assert isinstance(result, DeadLetter) and result.stage == "model"
    assert_one_sentence(result.reason)


# ---- fixtures: Photon GAME directory, GDMix models/, core-intercept file -----------------------


PHOTON_MODELS = [
    {"modelId": "member-1", "modelClass": LOGISTIC_MODEL_CLASS, "lossFunction": "",
     "means": [ntv("age", "", 0.5), ntv("(INTERCEPT)", "", -1.5), ntv("industry", "tech", 0.125)],
     "variances": [ntv("age", "", 0.25), ntv("(INTERCEPT)", "", 0.5), ntv("industry", "tech", 0.09)]},
    {"modelId": "member-2", "modelClass": LOGISTIC_MODEL_CLASS, "lossFunction": "",
     "means": [ntv("industry", "finance", -0.75), ntv("age", "", 0.0), ntv("(INTERCEPT)", "", 0.3)],
     "variances": None},
]


def make_photon_game_dir(root) -> str:
    """Photon's GAME output: random-effect/<coordinate>/{id-info, coefficients/part-*.avro} (+ Hadoop's
    _SUCCESS and .crc side files)."""
    base = os.path.join(str(root), "random-effect", "per-member")
    coefficients = os.path.join(base, "coefficients")
    os.makedirs(coefficients)
    with open(os.path.join(base, "id-info"), "w") as f:
        f.write("memberId\nmemberShard\n")
    write_photon_avro(os.path.join(coefficients, "part-00000.avro"), PHOTON_BAYESIAN_LINEAR_MODEL, PHOTON_MODELS[:1])
    write_photon_avro(os.path.join(coefficients, "part-00001.avro"), PHOTON_BAYESIAN_LINEAR_MODEL, PHOTON_MODELS[1:])
    open(os.path.join(coefficients, "_SUCCESS"), "w").close()
    with open(os.path.join(coefficients, ".part-00000.avro.crc"), "wb") as f:
        f.write(b"crc\x00\x01")
    return base


def test_load_photon_game_coordinate_directory(tmp_path):
    base = make_photon_game_dir(tmp_path)
    models, dead = load_models(base, PENALTY)
    assert dead == []
    assert sorted(models) == ["member-1", "member-2"]
    m1 = models["member-1"]
    assert m1.feature_names[0] == INTERCEPT
    assert means_of(m1) == {INTERCEPT: -1.5, ("age", ""): 0.5, ("industry", "tech"): 0.125}
    assert variances_of(m1) == pytest.approx({INTERCEPT: 0.5, ("age", ""): 0.25, ("industry", "tech"): 0.09},
                                             rel=1e-15)
    m2 = models["member-2"]
    assert m2.feature_names == (INTERCEPT, ("industry", "finance"), ("age", ""))
    assert m2.means.tolist() == [0.3, -0.75, 0.0]
    assert m2.precisions.tolist() == [PENALTY] * 3


def test_load_photon_game_coordinate_coefficients_dir_and_glob(tmp_path):
    base = make_photon_game_dir(tmp_path)
    expected, _ = load_models(base, PENALTY)
    for path in (os.path.join(base, "coefficients"), os.path.join(base, "coefficients", "part-*.avro")):
        models, dead = load_models(path, PENALTY)
        assert dead == [] and sorted(models) == sorted(expected)
        for entity, m in models.items():
            assert m.feature_names == expected[entity].feature_names
            assert m.means.tolist() == expected[entity].means.tolist()
            assert m.precisions.tolist() == expected[entity].precisions.tolist()


def test_load_gdmix_models_directory(tmp_path):
    models_dir = tmp_path / "gdmix" / "models"
    gdmix = [
        {"modelId": "item-9", "modelClass": None, "lossFunction": None,
         "means": [ntv("(INTERCEPT)", "", 0.9), ntv("w", "q", -0.1)],
         "variances": [ntv("(INTERCEPT)", "", 0.2), ntv("w", "q", 0.4)]},
        {"modelId": "item-10", "means": [ntv("(INTERCEPT)", "", -2.0)], "variances": None,
         "modelClass": None, "lossFunction": None},
    ]
    write_photon_avro(models_dir / "part-00000.avro", PHOTON_BAYESIAN_LINEAR_MODEL, gdmix[:1])
    write_photon_avro(models_dir / "part-00001.avro", PHOTON_BAYESIAN_LINEAR_MODEL, gdmix[1:])
    models, dead = load_models(str(models_dir), PENALTY)
    assert dead == []
    assert means_of(models["item-9"]) == {INTERCEPT: 0.9, ("w", "q"): -0.1}
    assert models["item-9"].precisions.tolist() == [5.0, 2.5]
    assert models["item-10"].feature_names == (INTERCEPT,)
    assert models["item-10"].means.tolist() == [-2.0]
    assert models["item-10"].precisions.tolist() == [PENALTY]


def test_load_core_intercept_convention_file(tmp_path):
    path = tmp_path / "core.avro"
    write_photon_avro(path, PHOTON_BAYESIAN_LINEAR_MODEL, [
        {"modelId": "x", "modelClass": None, "lossFunction": None,
         "means": [ntv("f", "", 1.0), ntv("intercept", "intercept", 0.5)],
         "variances": [ntv("intercept", "intercept", 0.125), ntv("f", "", 0.5)]}])
    models, dead = load_models(str(path), PENALTY)
    assert dead == []
    m = models["x"]
    assert m.feature_names == (INTERCEPT, ("f", ""))
    assert m.means.tolist() == [0.5, 1.0]
    assert m.precisions.tolist() == [8.0, 2.0]


def test_load_models_json_lines_same_as_avro(tmp_path):
    write_photon_avro(tmp_path / "a" / "m.avro", PHOTON_BAYESIAN_LINEAR_MODEL, PHOTON_MODELS)
    write_json_lines(str(tmp_path / "j" / "m.jsonl"), PHOTON_MODELS)
    from_avro, _ = load_models(str(tmp_path / "a"), PENALTY)
    from_json, dead = load_models(str(tmp_path / "j" / "m.jsonl"), PENALTY)
    assert dead == []
    assert sorted(from_avro) == sorted(from_json)
    for entity in from_avro:
        assert from_avro[entity].feature_names == from_json[entity].feature_names
        assert from_avro[entity].means.tolist() == from_json[entity].means.tolist()
        assert from_avro[entity].precisions.tolist() == from_json[entity].precisions.tolist()


def test_load_models_json_lines_bad_lines_are_dead_letters(tmp_path):
    path = tmp_path / "models.jsonl"
    bad_mean = {"modelId": "nan-model", "means": [{"name": "a", "term": "", "value": "NaN"}]}
    path.write_text("\n".join([
        json.dumps(PHOTON_MODELS[0]),
        "{not json",
        json.dumps(bad_mean),
        '{"modelId": "inf-model", "means": [{"name": "a", "term": "", "value": Infinity}]}',
        "",
    ]) + "\n", encoding="utf-8")
    models, dead = load_models(str(path), PENALTY)
    assert sorted(models) == ["member-1"]
    assert len(dead) == 3
    assert all(d.stage == "model" for d in dead)
    assert dead[0].payload == "{not json"
    assert dead[1].payload == bad_mean
    assert dead[2].payload["modelId"] == "inf-model"


def test_load_models_invalid_models_are_absent_and_dead_lettered(tmp_path):
    path = tmp_path / "m.avro"
    good = PHOTON_MODELS[0]
    non_finite = {"modelId": "bad-mean", "modelClass": None, "lossFunction": None,
                  "means": [ntv("(INTERCEPT)", "", math.nan)], "variances": None}
    zero_var = {"modelId": "bad-var", "modelClass": None, "lossFunction": None,
                "means": [ntv("(INTERCEPT)", "", 1.0)], "variances": [ntv("(INTERCEPT)", "", 0.0)]}
    neg_var = {"modelId": "neg-var", "modelClass": None, "lossFunction": None,
               "means": [ntv("a", "", 1.0)], "variances": [ntv("a", "", -2.0)]}
    write_photon_avro(path, PHOTON_BAYESIAN_LINEAR_MODEL, [non_finite, good, zero_var, neg_var])
    models, dead = load_models(str(path), PENALTY)
    assert sorted(models) == ["member-1"]
    assert [d.payload["modelId"] for d in dead] == ["bad-mean", "bad-var", "neg-var"]
    for d in dead:
        assert d.stage == "model"
        assert_one_sentence(d.reason)


def test_load_models_max_coefficients(tmp_path):
    path = tmp_path / "m.avro"
    write_photon_avro(path, PHOTON_BAYESIAN_LINEAR_MODEL, PHOTON_MODELS)
    models, dead = load_models(str(path), PENALTY, max_coefficients=2)
    assert models == {} and len(dead) == 2 and all(d.stage == "model" for d in dead)


def test_load_models_nothing_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        load_models(str(tmp_path / "empty"), PENALTY)
    with pytest.raises(FileNotFoundError):
        load_models(str(tmp_path / "none-*.avro"), PENALTY)


def test_load_simulated_initial_models(tmp_path):
    stream = ClickStream(StreamConfig(num_users=30, hours=0.25, seed=11))
    records = list(stream.initial_models())
    assert records
    write_photon_avro(tmp_path / "init" / "part-00000.avro", PHOTON_BAYESIAN_LINEAR_MODEL, records)
    models, dead = load_models(str(tmp_path / "init"), 1.0)
    assert dead == [] and sorted(models) == sorted(r["modelId"] for r in records)
    for r in records:
        m = models[r["modelId"]]
        assert m.feature_names[0] == INTERCEPT
        assert m.means[0] == r["means"][0]["value"]
        assert means_of(m) == {INTERCEPT if (x["name"], x["term"]) == ("(INTERCEPT)", "") else (x["name"], x["term"]):
                               x["value"] for x in r["means"]}
        assert m.variances() == pytest.approx(np.full(len(r["means"]), 0.09), rel=1e-15)


# ==================================================================================================
# 6. Models out: model_record, update_record, write_snapshot
# ==================================================================================================

MODELS = [
    model("u2", [(INTERCEPT, 0.5, 4.0), (("price", ""), -1.25, 2.0), (("cat", "travel"), 0.0, 8.0)]),
    model("u1", [(("cat", "food"), 0.75, 0.5), (INTERCEPT, -0.25, 1.0)]),  # intercept not first
    model("u3", [(INTERCEPT, 0.0, 3.0)]),
]


def test_model_record_intercept_first_and_variances_are_reciprocal_precisions():
    rec = model_record(MODELS[1])
    assert rec == {
        "modelId": "u1",
        "modelClass": LOGISTIC_MODEL_CLASS,
        "means": [ntv("(INTERCEPT)", "", -0.25), ntv("cat", "food", 0.75)],
        "variances": [ntv("(INTERCEPT)", "", 1.0), ntv("cat", "food", 2.0)],
        "lossFunction": "",
    }


@pytest.mark.parametrize("trainer, cls", [
    ("sequential_bayesian_logistic", "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel"),
    ("logistic", "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel"),
    ("linear", "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel"),
])
def test_model_class_names_are_photons(trainer, cls):
    assert model_record(MODELS[0], trainer)["modelClass"] == cls
    assert (LOGISTIC_MODEL_CLASS, LINEAR_MODEL_CLASS) == (
        "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel",
        "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel")


def test_model_record_keeps_zero_coefficients_by_default_and_sparsity_threshold_drops_small_ones():
    m = model("e", [(INTERCEPT, 0.001, 1.0), (("a", ""), 0.0, 1.0), (("b", ""), 0.05, 1.0), (("c", ""), -2.0, 1.0)])
    assert [x["name"] for x in model_record(m)["means"]] == ["(INTERCEPT)", "a", "b", "c"]
    sparse = model_record(m, sparsity_threshold=0.1)
    assert [(x["name"], x["value"]) for x in sparse["means"]] == [("(INTERCEPT)", 0.001), ("c", -2.0)]
    assert [x["name"] for x in sparse["variances"]] == ["(INTERCEPT)", "c"]


def test_write_snapshot_layout_and_records(tmp_path):
    out = tmp_path / "out"
    result = write_snapshot(MODELS, str(out), "per-user", "userId")
    base = out / "random-effect" / "per-user"
    assert (base / "id-info").read_text(encoding="utf-8") == "userId\nfeatures\n"
    assert (base / "id-info").read_text().splitlines() == ["userId", "features"]
    parts = sorted(glob.glob(str(base / "coefficients" / "*")))
    assert [os.path.basename(p) for p in parts] == ["part-00000.avro"]
    assert result["models"] == 3
    records = read_with_photon_schema(parts[0])
    assert [r["modelId"] for r in records] == ["u1", "u2", "u3"]
    by_id = {m.entity_id: m for m in MODELS}
    for r in records:
        m = by_id[r["modelId"]]
        assert r == model_record(m)
        assert r["means"][0]["name"] == "(INTERCEPT)" and r["means"][0]["term"] == ""
        assert r["variances"][0]["name"] == "(INTERCEPT)" and r["variances"][0]["term"] == ""
        assert len(r["means"]) == len(r["variances"]) == len(m.feature_names)
        assert means_of(m) == {INTERCEPT if (x["name"], x["term"]) == ("(INTERCEPT)", "") else (x["name"], x["term"]):
                               x["value"] for x in r["means"]}
        written_var = {(x["name"], x["term"]): x["value"] for x in r["variances"]}
        for (name, term), precision in zip(m.feature_names, m.precisions):
            key = ("(INTERCEPT)", "") if (name, term) == INTERCEPT else (name, term)
            assert written_var[key] == 1.0 / precision
    assert records[1]["means"] == [ntv("(INTERCEPT)", "", 0.5), ntv("price", "", -1.25), ntv("cat", "travel", 0.0)]
    assert records[1]["variances"] == [ntv("(INTERCEPT)", "", 0.25), ntv("price", "", 0.5), ntv("cat", "travel", 0.125)]


def test_write_snapshot_feature_shard_trainer_and_parts(tmp_path):
    many = [model(f"e{i:02d}", [(INTERCEPT, float(i), 1.0)]) for i in range(5)]
    result = write_snapshot(reversed(many), str(tmp_path), "per-item", "itemId", feature_shard="itemShard",
                            trainer="linear", records_per_part=2)
    base = tmp_path / "random-effect" / "per-item"
    assert (base / "id-info").read_text().splitlines() == ["itemId", "itemShard"]
    parts = sorted(glob.glob(str(base / "coefficients" / "part-*.avro")))
    assert [os.path.basename(p) for p in parts] == ["part-00000.avro", "part-00001.avro", "part-00002.avro"]
    assert [os.path.basename(p) for p in result["parts"]] == [os.path.basename(p) for p in parts]
    ids = [[r["modelId"] for r in read_with_photon_schema(p)] for p in parts]
    assert ids == [["e00", "e01"], ["e02", "e03"], ["e04"]]
    assert all(r["modelClass"] == LINEAR_MODEL_CLASS for p in parts for r in read_with_photon_schema(p))


def test_snapshot_loads_back_as_the_same_models(tmp_path):
    write_snapshot(MODELS, str(tmp_path), "per-user", "userId")
    models, dead = load_models(str(tmp_path / "random-effect" / "per-user"), penalty=123.0)
    assert dead == []
    for m in MODELS:
        loaded = models[m.entity_id]
        assert loaded.feature_names[0] == INTERCEPT
        assert means_of(loaded) == means_of(m)
        assert dict(zip(loaded.feature_names, loaded.precisions.tolist())) == dict(zip(m.feature_names, m.precisions.tolist()))


def snapshot_records(directory) -> list:
    return [r for p in sorted(glob.glob(os.path.join(directory, "coefficients", "part-*.avro")))
            for r in read_with_photon_schema(p)]


def test_snapshot_load_snapshot_is_identical(tmp_path):
    write_snapshot(MODELS, str(tmp_path / "a"), "c", "userId")
    loaded, _ = load_models(str(tmp_path / "a" / "random-effect" / "c"), PENALTY)
    write_snapshot(loaded.values(), str(tmp_path / "b"), "c", "userId")
    first = snapshot_records(str(tmp_path / "a" / "random-effect" / "c"))
    second = snapshot_records(str(tmp_path / "b" / "random-effect" / "c"))
    assert first == second
    assert [json.dumps(r, sort_keys=True) for r in first] == [json.dumps(r, sort_keys=True) for r in second]


def test_photon_file_to_snapshot_keeps_means_and_puts_intercept_first(tmp_path):
    base = make_photon_game_dir(tmp_path / "photon")
    loaded, _ = load_models(base, PENALTY)
    write_snapshot(loaded.values(), str(tmp_path / "ours"), "per-member", "memberId")
    records = {r["modelId"]: r for r in snapshot_records(str(tmp_path / "ours" / "random-effect" / "per-member"))}
    r1 = records["member-1"]
    assert r1["means"] == [ntv("(INTERCEPT)", "", -1.5), ntv("age", "", 0.5), ntv("industry", "tech", 0.125)]
    assert [(x["name"], x["term"]) for x in r1["variances"]] == [("(INTERCEPT)", ""), ("age", ""), ("industry", "tech")]
    assert [x["value"] for x in r1["variances"]] == pytest.approx([0.5, 0.25, 0.09], rel=1e-15)
    r2 = records["member-2"]
    assert [x["value"] for x in r2["variances"]] == [1.0 / PENALTY] * 3


FEATURE_KEYS = st.tuples(st.text(max_size=6), st.text(max_size=6)).filter(
    lambda k: k not in RESERVED)


@st.composite
def random_models(draw):
    entities = draw(st.lists(st.text(min_size=1, max_size=8).filter(str.strip), min_size=1, max_size=4, unique=True))
    out = []
    for entity in entities:
        keys = draw(st.lists(FEATURE_KEYS, unique=True, max_size=5))
        position = draw(st.integers(0, len(keys)))
        keys.insert(position, INTERCEPT)
        means = draw(st.lists(FINITE, min_size=len(keys), max_size=len(keys)))
        precisions = draw(st.lists(st.floats(min_value=1e-300, max_value=1e300), min_size=len(keys), max_size=len(keys)))
        out.append(model(entity, list(zip(keys, means, precisions))))
    return out


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(models=random_models())
def test_property_snapshot_round_trip_is_identical(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("rt")
    write_snapshot(models, str(root / "a"), "c", "userId")
    first = snapshot_records(str(root / "a" / "random-effect" / "c"))
    loaded, dead = load_models(str(root / "a" / "random-effect" / "c"), PENALTY)
    assert dead == []
    write_snapshot(loaded.values(), str(root / "b"), "c", "userId")
    second = snapshot_records(str(root / "b" / "random-effect" / "c"))
    assert first == second
    assert first == [model_record(m) for m in sorted(models, key=lambda m: m.entity_id)]
    for m in models:
        assert means_of(loaded[m.entity_id]) == means_of(m)


# ---- update files -------------------------------------------------------------------------------


def test_update_record_fields():
    m = model("u1", [(("a", ""), 1.0, 2.0), (INTERCEPT, 0.5, 4.0)], version=3, window_end=60_000)
    rec = update_record(m, num_examples=12, loss=0.693, converged=True, coordinate="per-user")
    assert rec == dict(model_record(m), version=3, windowEnd=60_000, numExamples=12, loss=0.693,
                       converged=True, coordinate="per-user")
    assert rec["means"][0] == ntv("(INTERCEPT)", "", 0.5)
    assert update_record(m, num_examples=0, loss=math.nan, converged=False, coordinate="c")["loss"] is None
    assert update_record(m, num_examples=0, loss=None, converged=False, coordinate="c")["loss"] is None
    assert update_record(m, num_examples=0, loss=None, converged=False, coordinate="c",
                         trainer="linear")["modelClass"] == LINEAR_MODEL_CLASS


def updates_for(entity, versions):
    return [update_record(model(entity, [(INTERCEPT, float(v), float(v)), (("f", str(v)), -float(v), 1.0)],
                                version=v, window_end=1000 * v),
                          num_examples=v, loss=0.1 * v, converged=v % 2 == 0, coordinate="per-user")
            for v in versions]


def test_update_files_read_with_photon_reader_schema(tmp_path):
    records = updates_for("u1", [1, 2])
    path = tmp_path / "updates" / "part-0.avro"
    assert write_avro(str(path), "ModelUpdateAvro", records) == 2
    read = read_with_photon_schema(path)
    photon_fields = [f["name"] for f in PHOTON_BAYESIAN_LINEAR_MODEL["fields"]]
    assert read == [{k: r[k] for k in photon_fields} for r in records]
    with open(path, "rb") as f:
        assert list(fastavro.reader(f)) == records  # and with its own schema, everything


def test_update_files_load_as_highest_version(tmp_path):
    updates = tmp_path / "updates"
    write_avro(str(updates / "a.avro"), "ModelUpdateAvro", updates_for("u1", [1, 3]) + updates_for("u2", [2]))
    write_avro(str(updates / "b.avro"), "ModelUpdateAvro", updates_for("u1", [5, 2]) + updates_for("u2", [1]))
    write_avro(str(updates / "c.avro"), "ModelUpdateAvro", updates_for("u1", [4]))
    models, dead = load_models(str(updates), PENALTY)
    assert dead == []
    assert (models["u1"].version, models["u1"].window_end_ms) == (5, 5000)
    assert means_of(models["u1"]) == {INTERCEPT: 5.0, ("f", "5"): -5.0}
    assert models["u1"].precisions.tolist() == [5.0, 1.0]
    assert models["u2"].version == 2
    assert means_of(models["u2"]) == {INTERCEPT: 2.0, ("f", "2"): -2.0}
    # The same through a glob, and with the files' order reversed by name.
    models_glob, _ = load_models(str(updates / "*.avro"), PENALTY)
    assert {e: m.version for e, m in models_glob.items()} == {"u1": 5, "u2": 2}


def test_update_json_lines_load_as_highest_version(tmp_path):
    path = tmp_path / "updates.jsonl"
    write_json_lines(str(path), updates_for("u1", [2, 7, 4]))
    models, dead = load_models(str(path), PENALTY)
    assert dead == [] and models["u1"].version == 7
    assert means_of(models["u1"]) == {INTERCEPT: 7.0, ("f", "7"): -7.0}


def test_update_with_non_finite_loss_writes_and_reads(tmp_path):
    m = model("u1", [(INTERCEPT, 0.5, 4.0)], version=1)
    rec = update_record(m, num_examples=1, loss=math.inf, converged=False, coordinate="c")
    path = tmp_path / "u.avro"
    write_avro(str(path), "ModelUpdateAvro", [rec])
    with open(path, "rb") as f:
        (read,) = list(fastavro.reader(f))
    assert read["loss"] is None and read["version"] == 1


def test_photon_file_read_with_update_schema_gets_defaults(tmp_path):
    """A plain Photon file read with our update schema fills the optional fields with their defaults."""
    path = tmp_path / "photon.avro"
    write_photon_avro(path, PHOTON_BAYESIAN_LINEAR_MODEL, PHOTON_MODELS[:1])
    with open(path, "rb") as f:
        (read,) = list(fastavro.reader(f, reader_schema=load_schema("ModelUpdateAvro")))
    assert read == dict(PHOTON_MODELS[0], version=0, windowEnd=0, numExamples=0, loss=None, converged=False,
                        coordinate="")
