"""Avro schemas (Photon-ML / GDMix compatible) and file reading and writing helpers.

Schemas are shipped as ``.avsc`` package data and parsed once per process. Files are Avro
(``.avro``) or JSON lines (``.json``, ``.jsonl``, ``.ndjson``); anything else needs an explicit
format.
"""

import functools
import json
import math
import os
from typing import Any, Iterable, Iterator, Optional, Union

import fastavro
from apache_beam.io.filesystems import FileSystems

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
NAMESPACE = "com.linkedin.photon.avro.generated"
AVRO, JSON = "avro", "json"
FORMATS = (AVRO, JSON)
_EXTENSIONS = {".avro": AVRO, ".json": JSON, ".jsonl": JSON, ".ndjson": JSON}


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """The parsed schema ``name`` (e.g. ``"BayesianLinearModelAvro"``), parsed once per process."""
    with open(os.path.join(SCHEMA_DIR, f"{name}.avsc"), encoding="utf-8") as f:
        return fastavro.parse_schema(json.load(f), _write_hint=True)


def raw_schema(name: str) -> dict:
    """The schema ``name`` as written in its ``.avsc`` file (unparsed JSON)."""
    with open(os.path.join(SCHEMA_DIR, f"{name}.avsc"), encoding="utf-8") as f:
        return json.load(f)


def detect_format(path: str, explicit: Optional[str] = None) -> str:
    """``avro`` or ``json`` for ``path``: the explicit format if given, else by extension."""
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"Unknown input format {explicit!r}: use one of {', '.join(FORMATS)}.")
        return explicit
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"Cannot tell the format of {path!r} from its extension; name it .avro or .jsonl, or pass the format."
        )
    return _EXTENSIONS[ext]


def is_data_file(path: str) -> bool:
    """Whether ``path`` has one of the data-file extensions (``.avro``, ``.json``, ``.jsonl``, ``.ndjson``)."""
    return os.path.splitext(path)[1].lower() in _EXTENSIONS


_AVRO_MAGIC = b"Obj\x01"


def sniff_format(path: str) -> Optional[str]:
    """``avro`` or ``json`` as the first bytes of ``path`` show (Avro's magic, or a JSON object's
    ``{``), None when they show neither (an empty file, something else)."""
    with open_path(path) as f:
        head = f.read(256)
    if head.startswith(_AVRO_MAGIC):
        return AVRO
    return JSON if head.lstrip()[:1] == b"{" else None


def open_path(path: str):
    """A binary reader of ``path`` on any Beam filesystem (local, gs://, ...)."""
    return FileSystems.open(path)


def iter_avro(path_or_file) -> Iterator[dict]:
    """Records of an Avro container file, each as a dict in the writer's schema."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open_path(os.fspath(path_or_file)) as f:
            yield from fastavro.reader(f)
    else:
        yield from fastavro.reader(path_or_file)


NOT_JSON = object()  # what decode_json_line returns for a line that is not JSON (``null`` is JSON)


def is_blank(line: Union[bytes, str]) -> bool:
    """Whether a JSON-lines line is empty or whitespace: layout, not a record (no copy is made)."""
    return not line or line.isspace()


def decode_json_line(line: Union[bytes, str]) -> Any:
    """The JSON value of one line, or ``NOT_JSON`` if it is not valid UTF-8 JSON or holds a string
    that is not valid Unicode (a lone surrogate such as ``"\\ud800"``: JSON's grammar allows the
    escape, but no UTF-8 writer, Beam coder or Avro file can hold the string)."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        return NOT_JSON
    if _may_hold_surrogates(line) and _has_lone_surrogate(value):
        return NOT_JSON
    return value


def not_json_reason(line: Union[bytes, str]) -> str:
    """Why ``decode_json_line`` returned ``NOT_JSON`` for ``line``, as one sentence."""
    try:
        json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "line is not valid JSON."
    return "line holds a string with a lone surrogate (e.g. \\ud800), which is not valid Unicode."


def line_text(line: Union[bytes, str]) -> str:
    """A raw line as text that any UTF-8 writer accepts: invalid bytes and lone surrogates are
    written as backslash escapes."""
    if isinstance(line, bytes):
        return line.decode("utf-8", "backslashreplace")
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _may_hold_surrogates(line: Union[bytes, str]) -> bool:
    # json.loads makes a lone surrogate only from a \u escape or (bytes are decoded with
    # "surrogatepass") from UTF-8-encoded surrogate bytes, which start with 0xED: a cheap scan
    # spares the walk over almost every line.
    if isinstance(line, bytes):
        return b"\\u" in line or b"\xed" in line
    return "\\u" in line or not line.isascii()


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]  # iterative: the value may be nested as deep as json.loads allows
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def write_avro(path_or_file, schema_name: str, records: Iterable[dict], codec: str = "deflate") -> int:
    """Write ``records`` with schema ``schema_name``; return how many were written."""
    from .avro_encoding import container_writer  # it imports this module

    def write(f) -> int:
        writer, count = container_writer(f, schema_name, codec), 0
        for record in records:
            writer.write(record)
            count += 1
        writer.flush()
        return count

    if isinstance(path_or_file, (str, os.PathLike)):
        with FileSystems.create(os.fspath(path_or_file)) as f:  # makes missing local directories
            return write(f)
    return write(path_or_file)


def write_json_lines(path: str, records: Iterable[Any]) -> int:
    """Write one JSON document per line; return how many were written."""
    count = 0
    with FileSystems.create(path) as f:  # makes missing local directories
        for record in records:
            f.write(to_json(record).encode("utf-8"))
            f.write(b"\n")
            count += 1
    return count


def to_json(value: Any) -> str:
    """Strict JSON (no NaN/Infinity literals: non-finite numbers become strings)."""
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, sort_keys=True, ensure_ascii=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

