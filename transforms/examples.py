"""Parsing and validation of training examples: every record becomes an Example or a dead letter.

Parsing never raises on data. The checks follow Photon-ML's TrainingExampleAvro: entity id and event
time come from a top-level field or from ``metadataMap``; weight defaults to 1 and offset to 0.
"""

import json
import math
import re
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

from lambda_core import BINARY, INTERCEPT, REAL, LabelRule

from .formats import (AVRO, NOT_JSON, decode_json_line, detect_format, is_blank, iter_avro, line_text,
                      not_json_reason, open_path, to_json)
from .paths import data_files

PHOTON_INTERCEPT = ("(INTERCEPT)", "")
RESERVED_FEATURES = (INTERCEPT, PHOTON_INTERCEPT)
_RESERVED = frozenset(RESERVED_FEATURES)
DEFAULT_MAX_FEATURES = 1000
# Beam timestamps are microseconds in a signed 64-bit integer; stay well inside that range.
MAX_TIMESTAMP_MS = 10**15
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")

Feature = Tuple[str, str, float]


class Example(NamedTuple):
    """One validated training example of an entity.

    ``source`` is the record exactly as it was read (a JSON line's bytes, an Avro record as JSON),
    when the job keeps it: what a dead letter of a later stage carries (``source_payload``).
    ``correction`` is the example's score under the global correction model (``--global-correction``;
    0 without it): the entity's model sees ``offset + correction`` as the offset, and the progressive
    validation's "offset only" baseline stays ``offset``.
    """

    entity_id: str
    timestamp_ms: int
    uid: Optional[str]
    label: float
    weight: float
    offset: float
    features: Tuple[Feature, ...]
    source: Optional[bytes] = None
    correction: float = 0.0


def record_source(record: Any) -> bytes:
    """The bytes ``Example.source`` keeps for a record as read: a JSON line as it is, any other
    record (an Avro dict) as strict JSON (values JSON cannot hold, such as Avro bytes, as text)."""
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode("utf-8", "backslashreplace")
    try:
        return to_json(record).encode("utf-8")
    except (TypeError, ValueError):
        return json.dumps(_safe_json(record), sort_keys=True, ensure_ascii=False).encode("utf-8")


def source_payload(ex: "Example") -> Any:
    """What a dead letter of ``ex`` carries: the record as read (the JSON object) when the example
    kept it, else (examples buffered by a release that did not keep it) the example in the
    standard field names ``entityId``/``timestamp``."""
    if ex.source is not None:
        value = decode_json_line(ex.source)
        return line_text(ex.source) if value is NOT_JSON else value
    return {
        "uid": ex.uid, "entityId": ex.entity_id, "timestamp": ex.timestamp_ms, "label": ex.label,
        "weight": ex.weight, "offset": ex.offset,
        "features": [{"name": n, "term": t, "value": v} for n, t, v in ex.features],
    }


class DeadLetter(NamedTuple):
    """A rejected input: a one-sentence reason, the stage that rejected it, the original payload,
    and a short category (for counters: ``label``, ``timestamp``, ``not_json``, ...)."""

    reason: str
    stage: str
    payload: Any
    category: str = "invalid"

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-lines form written to ``dead-letter/``."""
        return {"reason": self.reason, "stage": self.stage, "payload": self.payload}


class _Reject(Exception):
    """Internal: carries the one-sentence reason a record is rejected, and its category."""

    def __init__(self, reason: str, category: str):
        super().__init__(reason)
        self.category = category


class ExampleParser:
    """Validates raw example records (dicts as read from Avro or JSON).

    Parameters
    ----------
    entity_field, timestamp_field:
        Where the entity id and the event time (epoch ms) are: a top-level field of that name,
        else ``metadataMap[name]``.
    binary_labels:
        Require labels in {0, 1} or {-1, +1} (the logistic trainers); otherwise any finite label.
    label_rule:
        The trainer's ``lambda_core.LabelRule`` (its registry entry's); replaces ``binary_labels``.
    max_features:
        Records with more features than this are rejected.

    Examples
    --------
    >>> parser = ExampleParser("userId", "ts")
    >>> parser.parse({"userId": 7, "ts": "1000", "label": 1, "features": []}).entity_id
    '7'
    >>> parser.parse({"userId": 7, "ts": 1000, "label": 3, "features": []}).reason
    'label 3 is not in {0, 1} or {-1, +1}, as the logistic trainers require.'
    """

    def __init__(self, entity_field: str, timestamp_field: str, binary_labels: bool = True,
                 max_features: int = DEFAULT_MAX_FEATURES, label_rule: Optional[LabelRule] = None):
        self.entity_field = entity_field
        self.timestamp_field = timestamp_field
        self.label_rule = label_rule if label_rule is not None else (BINARY if binary_labels else REAL)
        self.binary_labels = self.label_rule is BINARY
        self.max_features = max_features

    def parse(self, record: Any) -> Union[Example, DeadLetter]:
        """An ``Example``, or a ``DeadLetter`` (stage "parse") saying why not. Never raises."""
        return self._parse_keeping(record, None)

    def _parse_keeping(self, record: Any, as_read: Any) -> Union[Example, DeadLetter]:
        """``parse``; the example keeps ``record_source(as_read)`` unless ``as_read`` is None."""
        try:
            return self._parse(record, as_read)
        except _Reject as reject:
            return DeadLetter(str(reject), "parse", record, reject.category)
        except Exception as err:  # a record shape nobody foresaw must still not stop the job
            return DeadLetter(f"record could not be parsed ({type(err).__name__}: {err}).", "parse", _safe(record),
                              "error")

    def parse_json_line(self, line: Union[bytes, str]) -> Union[Example, DeadLetter]:
        """Parse one JSON-lines line; a line that is not JSON is a dead letter with the raw line."""
        value = decode_json_line(line)
        return _not_json(line) if value is NOT_JSON else self.parse(value)

    def parse_as_read(self, record: Any) -> Union[Example, DeadLetter]:
        """Parse a record as a reader yields it (a JSON line, or a dict from Avro); the example
        keeps the record itself as its ``source``, for the dead letters of later stages."""
        return self.parse_decoded(record, self.decode_as_read(record))

    @staticmethod
    def decode_as_read(record: Any) -> Any:
        """The value of a record as a reader yields it: a JSON line's JSON value (``NOT_JSON`` if it
        is not JSON), any other record (an Avro dict) as it is."""
        return decode_json_line(record) if isinstance(record, (bytes, str)) else record

    def parse_decoded(self, record: Any, value: Any) -> Union[Example, DeadLetter]:
        """``parse_as_read`` of ``record`` whose ``decode_as_read`` value is ``value`` (decoded once)."""
        if value is NOT_JSON:
            return _not_json(record)
        return self._parse_keeping(value, record)

    def key(self, value: Any) -> Optional[Tuple[str, int]]:
        """(entity id, event time in ms) of a decoded record, or None when either cannot be read:
        what the record's place in the stream needs, without validating the rest of it."""
        if not isinstance(value, dict):
            return None
        metadata = value.get("metadataMap")
        if metadata is not None and not isinstance(metadata, dict):
            return None
        try:
            return (_entity_id(_lookup(value, metadata, self.entity_field), self.entity_field),
                    _timestamp(_lookup(value, metadata, self.timestamp_field), self.timestamp_field))
        except _Reject:
            return None

    def _parse(self, record: Any, as_read: Any = None) -> Example:
        if not isinstance(record, dict):
            raise _Reject(f"record is a JSON {type(record).__name__}, not an object.", "not_object")
        metadata = record.get("metadataMap")
        if metadata is not None and not isinstance(metadata, dict):
            raise _Reject("metadataMap is not a map.", "metadata")
        entity_id = _entity_id(_lookup(record, metadata, self.entity_field), self.entity_field)
        timestamp = _timestamp(_lookup(record, metadata, self.timestamp_field), self.timestamp_field)
        label = _number(record.get("label"), "label", required=True)
        if not self.label_rule.accepts(label):
            if self.binary_labels:
                raise _Reject(f"label {_show(record.get('label'))} is not in {{0, 1}} or {{-1, +1}}, "
                              "as the logistic trainers require.", "label")
            raise _Reject(f"label {_show(record.get('label'))} is not a label the trainer accepts (labels must "
                          f"be {self.label_rule.requirement}).", "label")
        weight = _number(record.get("weight"), "weight", default=1.0)
        if weight < 0:
            raise _Reject(f"weight {_show(record.get('weight'))} is negative.", "weight")
        offset = _number(record.get("offset"), "offset", default=0.0)
        uid = record.get("uid")
        if uid is not None:
            if isinstance(uid, bool) or not isinstance(uid, (str, int)):
                raise _Reject("uid is neither a string nor an integer.", "uid")
            uid = str(uid)
        features = self._features(record.get("features"))
        source = None if as_read is None else record_source(as_read)
        return Example(entity_id, timestamp, uid, label, weight, offset, features, source)

    def _features(self, raw: Any) -> Tuple[Feature, ...]:
        if raw is None:
            raise _Reject("features is missing.", "features")
        if not isinstance(raw, list):
            raise _Reject("features is not a list.", "features")
        if len(raw) > self.max_features:
            raise _Reject(f"record has {len(raw)} features, more than the limit of {self.max_features}.", "features")
        features = []
        seen = set()
        for i, f in enumerate(raw):
            if not isinstance(f, dict):
                raise _Reject(f"feature {i} is not a {{name, term, value}} object.", "features")
            name, term = f.get("name"), f.get("term")
            if not isinstance(name, str):
                raise _Reject(f"feature {i} has no string name.", "features")
            if term is None:
                term = ""
            elif not isinstance(term, str):
                raise _Reject(f"feature {i} ({name!r}) has a term that is not a string.", "features")
            value = f.get("value")
            # The common case first; the message (two reprs) is only built for a value that fails.
            if type(value) is not float or not math.isfinite(value):
                value = _number(value, f"value of feature ({name!r}, {term!r})", required=True, category="features")
            key = (name, term)
            if key in seen:
                raise _Reject(f"feature ({name!r}, {term!r}) appears more than once.", "features")
            if key in _RESERVED:
                raise _Reject(f"feature ({name!r}, {term!r}) is reserved for the intercept, which is added to every record.", "features")
            seen.add(key)
            features.append((name, term, value))
        return tuple(features)


def _not_json(line: Union[bytes, str]) -> DeadLetter:
    """The dead letter of a line that is not JSON: the raw line, and why."""
    return DeadLetter(not_json_reason(line), "parse", line_text(line), "not_json")


def _lookup(record: dict, metadata: Optional[dict], field: str):
    value = record.get(field)
    if value is None and metadata is not None:
        value = metadata.get(field)
    return value


def _entity_id(value: Any, field: str) -> str:
    if value is None:
        raise _Reject(f"entity id field {field!r} is missing (neither a top-level field nor in metadataMap).", "entity_id")
    if isinstance(value, bool):
        raise _Reject(f"entity id {field!r} is a boolean.", "entity_id")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Reject(f"entity id {field!r} is not finite.", "entity_id")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        if not value.strip():
            raise _Reject(f"entity id {field!r} is empty.", "entity_id")
        return value
    raise _Reject(f"entity id {field!r} is a {type(value).__name__}, not a string or a number.", "entity_id")


def _timestamp(value: Any, field: str) -> int:
    if value is None:
        raise _Reject(f"event time field {field!r} is missing (neither a top-level field nor in metadataMap).", "timestamp")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Reject(f"event time {field!r} is {_show(value)}, not an integer of epoch milliseconds.", "timestamp")
    if isinstance(value, str):
        if not _INTEGER.match(value):
            raise _Reject(f"event time {field!r} is {_show(value)}, not an integer of epoch milliseconds.", "timestamp")
        value = int(value)
    if not 0 <= value < MAX_TIMESTAMP_MS:
        raise _Reject(f"event time {value} is outside [0, {MAX_TIMESTAMP_MS}) epoch milliseconds.", "timestamp")
    return value


def _number(value: Any, what: str, required: bool = False, default: float = 0.0, category: str = "") -> float:
    if type(value) is float and math.isfinite(value):  # the common case, checked first
        return value
    category = category or what
    if value is None:
        if required:
            raise _Reject(f"{what} is missing.", category)
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject(f"{what} is {_show(value)}, not a number.", category)
    value = float(value)
    if not math.isfinite(value):
        raise _Reject(f"{what} is {value}, not a finite number.", category)
    return value


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _safe_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _safe(record: Any) -> Any:
    """A payload that can always be written: the record itself if JSON-like, else its repr."""
    if isinstance(record, (dict, list, str, int, float, bool)) or record is None:
        return record
    return repr(record)


def read_examples(pattern: str, parser: "ExampleParser", input_format: Optional[str] = None):
    """Parse every record of the files matching ``pattern``: yields ``Example`` or ``DeadLetter``.

    Avro and JSON-lines files are told apart by extension unless ``input_format`` says. Raises
    ``FileNotFoundError`` when nothing matches (a user error, not a data error).
    """
    files = data_files(pattern, bool(input_format))
    if not files:
        raise FileNotFoundError(f"No input files match {pattern!r}.")
    for path in files:
        if detect_format(path, input_format) == AVRO:
            for record in iter_avro(path):
                yield parser.parse(record)
        else:
            with open_path(path) as f:
                for line in f:
                    if not is_blank(line):
                        yield parser.parse_json_line(line.rstrip(b"\r\n"))
