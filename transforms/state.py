"""Per-entity state of the Beam job and its explicit, versioned, deterministic encoding.

Beam keeps state across bundles, restarts and (on Dataflow/Flink) job updates, so the bytes must
stay decodable by later versions of this code: every encoding starts with a version byte (a buffer
entry with its mini-batch end, then an example's version byte or the packed-entry marker), numbers
are fixed-width little-endian, strings are length-prefixed UTF-8, and nothing is pickled.

Examples travel between steps already encoded (``(entity, b"E" + bytes)``) so that the stateful
step buffers them without decoding; initial models travel as ``(entity, b"M" + bytes)``.

Entity-state versions (the first byte):

* 1: the model alone.
* 2: the model, then the uids the entity trained on within the de-duplication horizon, each with
  the end of the mini-batch it was trained in. Version-1 bytes still decode (with no recent uids),
  so a job updated in place keeps its models; it starts remembering uids from its next update.
* 3: version 2, then the model's forgetting reference (``--forgetting-target initial``): its
  length r, then r float64 means and r float64 precisions. Written only for a model that has a
  reference.
* 4 (written today): version 3's fields, but the 2d feature names and terms are written as
  their 2d byte lengths, then all their bytes together, and a flag byte says whether the
  reference follows. The same size as before, read with a few C-speed calls instead of two Python
  calls per string: decoding a 43-coefficient model takes 20 us (48 us as version 2), encoding it
  14 us (23 us).

Example versions (buffered examples):

* 1: the validated example.
* 2: the validated example, then the record exactly as it was read (a JSON line's bytes, an Avro
  record as JSON), so that a dead letter from a later stage (de-duplication, training) carries
  the input itself and can be fixed and fed back. Version-1 entries still decode (no record).
* 3: version 2, then the example's global correction (float64; ``--global-correction``). Written
  only for an example that passed the global correction stage; versions 1 and 2 decode with 0.

Example groups: several encoded examples as one value. Version 1: the count, then each encoded
example as its length (varint) and bytes. Between steps (``(entity, b"G" + group)``) they carry the
examples of one entity that the global correction stage passes on at one firing, as one element
instead of one per example (a shuffle record, a stateful call and a state read fewer per example).

Buffer entries (the interval stages' bag state): the end of the mini-batch (int64), then either an
encoded example (its version byte, 1 to 3, first) or the byte 0xF0 and an example group of that
mini-batch (a packed entry). Examples that arrive together, and those a firing keeps for a later
mini-batch, are packed, so a mini-batch that waits through many firings (a backlog read in streaming) is read back as one entry
per firing, not one per example.
"""

import struct
from itertools import accumulate, groupby
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam import coders

from .examples import Example
from .models import RandomEffectModel

MODEL_STATE_VERSION = 4  # what every model is written as
READABLE_MODEL_STATE_VERSIONS = (1, 2, 3, 4)
EXAMPLE_VERSION = 2
CORRECTED_EXAMPLE_VERSION = 3
READABLE_EXAMPLE_VERSIONS = (1, 2, 3)  # never 0xF0: after a buffer entry's end, that byte marks a packed entry
EXAMPLE_GROUP_VERSION = 1
EXAMPLE_TAG, MODEL_TAG, GROUP_TAG = b"E", b"M", b"G"

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_F64x3 = struct.Struct("<ddd")
_NO_HESSIAN, _DIAGONAL, _FULL = 0, 1, 2
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]  # the varints 0..127


class StateDecodeError(ValueError):
    """State bytes this code cannot read (unknown version, truncated or trailing bytes)."""


class EntityState(NamedTuple):
    """What the job keeps per entity: its model and the uids it trained on recently.

    ``recent_uids`` are ``(uid, end of the mini-batch it was trained in)`` pairs; they are encoded
    sorted by (end, uid), so equal states encode to equal bytes and decode in that order.
    """

    model: RandomEffectModel
    recent_uids: Tuple[Tuple[str, int], ...] = ()


class _Writer:
    __slots__ = ("parts",)

    def __init__(self, version: Optional[int]):
        """Bytes that start with the ``version`` byte (none for an unversioned encoding)."""
        self.parts: List[bytes] = [] if version is None else [bytes((version,))]

    def i64(self, v: int):
        self.parts.append(_I64.pack(v))

    def u32(self, v: int):
        self.parts.append(_U32.pack(v))

    def varint(self, v: int):
        """Unsigned LEB128: small counts and lengths take one byte."""
        if 0 <= v < 0x80:  # almost every count and string length: a ready-made byte
            self.parts.append(_ONE_BYTE[v])
            return
        if v < 0:
            raise ValueError(f"cannot encode the negative number {v} as an unsigned varint.")
        out = bytearray()
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
        self.parts.append(bytes(out))

    def text(self, s: str):
        b = s.encode("utf-8")
        if len(b) < 0x80:
            self.parts.append(_ONE_BYTE[len(b)])
        else:
            self.varint(len(b))
        self.parts.append(b)

    def floats(self, a: np.ndarray):
        self.parts.append(np.ascontiguousarray(a, dtype="<f8").tobytes())

    def strings(self, items: List[str]):
        """Strings as their byte lengths (varints), then all their UTF-8 bytes together."""
        encoded = [x.encode("utf-8") for x in items]
        lengths = list(map(len, encoded))
        if not lengths or max(lengths) < 0x80:  # one byte each: the common case, at C speed
            self.parts.append(bytes(lengths))
        else:
            for n in lengths:
                self.varint(n)
        self.parts.append(b"".join(encoded))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 1):
        self.buf = memoryview(buf)
        self.pos = pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise StateDecodeError("state bytes are truncated.")
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def i64(self) -> int:
        return _I64.unpack(self.take(8))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def varint(self) -> int:
        pos = self.pos
        if pos < len(self.buf) and self.buf[pos] < 0x80:  # one byte: almost every count and length
            self.pos = pos + 1
            return self.buf[pos]
        result, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise StateDecodeError("state bytes hold an over-long varint.")

    def text(self) -> str:
        buf, pos = self.buf, self.pos
        if pos < len(buf):
            n = buf[pos]
            end = pos + 1 + n
            if n < 0x80 and end <= len(buf):  # a one-byte length, the common case
                self.pos = end
                return str(buf[pos + 1:end], "utf-8")
        return str(self.take(self.varint()), "utf-8")

    def floats(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(8 * n), dtype="<f8").astype(np.float64)

    def strings(self, n: int) -> List[str]:
        """Inverse of ``_Writer.strings`` for ``n`` strings."""
        head = self.buf[self.pos:self.pos + n]
        if len(head) == n and (not n or max(head) < 0x80):  # one-byte lengths
            self.pos += n
            lengths = list(head)
        else:
            lengths = [self.varint() for _ in range(n)]
        blob = self.take(sum(lengths))
        ends = list(accumulate(lengths))
        text = str(blob, "utf-8")
        if len(text) == len(blob):  # ASCII: byte lengths are character lengths, slice the text
            return [text[end - size:end] for size, end in zip(lengths, ends)]
        return [str(blob[end - size:end], "utf-8") for size, end in zip(lengths, ends)]

    def done(self):
        if self.pos != len(self.buf):
            raise StateDecodeError("state bytes have trailing data.")


def _check_version(data: bytes, readable: Tuple[int, ...], what: str) -> int:
    if not data:
        raise StateDecodeError(f"{what} state is empty.")
    if data[0] not in readable:
        known = ", ".join(map(str, readable))
        raise StateDecodeError(
            f"{what} state has encoding version {data[0]}, but this code reads version(s) {known}: "
            "run a release of lambda-learner-beam that knows that version."
        )
    return data[0]


def encode_model(model: RandomEffectModel, recent_uids: Tuple[Tuple[str, int], ...] = ()) -> bytes:
    """Version byte (4); entity; model version, window end and d as varints; the d (name, term)
    pairs as 2d byte lengths (varints), then their 2d UTF-8 strings together; d float64 means; the
    Hessian kind byte and d (diagonal) or d*d (full) float64s; then the recent uids: the number of
    mini-batches, and for each its end, its number of uids and the uids; then a flag byte, and if
    it is 1 the reference: r, r means, r precisions."""
    reference = model.reference
    w = _Writer(MODEL_STATE_VERSION)
    w.text(model.entity_id)
    w.varint(int(model.version))
    w.varint(int(model.window_end_ms))
    names = model.feature_names
    w.varint(len(names))
    w.strings([s for pair in names for s in pair])
    w.floats(model.means)
    if model.precision_matrix is not None:
        w.parts.append(bytes((_FULL,)))
        w.floats(model.precision_matrix)
    elif model.precisions is not None:
        w.parts.append(bytes((_DIAGONAL,)))
        w.floats(model.precisions)
    else:
        w.parts.append(bytes((_NO_HESSIAN,)))
    # Grouped by mini-batch end: the (6-byte) end is written once per mini-batch, not per uid.
    groups = [(end, [uid for uid, _ in pairs]) for end, pairs in
              groupby(sorted(recent_uids, key=lambda p: (p[1], p[0])), key=lambda p: p[1])]
    w.varint(len(groups))
    for batch_end, uids in groups:
        w.varint(int(batch_end))
        w.varint(len(uids))
        for uid in uids:
            w.text(uid)
    if reference is None:
        w.parts.append(b"\x00")
    else:
        ref_means, ref_precisions = reference
        w.parts.append(b"\x01")
        w.varint(len(ref_means))
        w.floats(ref_means)
        w.floats(ref_precisions)
    return w.getvalue()


def decode_entity_state(data: bytes) -> EntityState:
    """Inverse of ``encode_model``, for versions 1 to 4; ``StateDecodeError`` on an unknown
    version or bad bytes."""
    version = _check_version(data, READABLE_MODEL_STATE_VERSIONS, "Model")
    r = _Reader(data)
    entity = r.text()
    model_version = r.varint()
    window_end = r.varint()
    d = r.varint()
    if version >= 4:
        flat = iter(r.strings(2 * d))
        names = tuple(zip(flat, flat))
    else:
        names = tuple((r.text(), r.text()) for _ in range(d))
    means = r.floats(d)
    kind = r.take(1)[0]
    matrix = None
    if kind == _FULL:
        matrix = r.floats(d * d).reshape(d, d)
        precisions = np.diagonal(matrix).copy()
    elif kind == _DIAGONAL:
        precisions = r.floats(d)
    elif kind == _NO_HESSIAN:
        precisions = None
    else:
        raise StateDecodeError(f"Model state has an unknown Hessian kind {kind}.")
    recent: Tuple[Tuple[str, int], ...] = ()
    if version >= 2:
        pairs = []
        for _ in range(r.varint()):
            batch_end, count = r.varint(), r.varint()
            pairs.extend((r.text(), batch_end) for _ in range(count))
        recent = tuple(pairs)
    reference = None
    has_reference = version == 3
    if version >= 4:
        flag = r.take(1)[0]
        if flag > 1:
            raise StateDecodeError(f"Model state has an unknown reference flag {flag}.")
        has_reference = flag == 1
    if has_reference:
        count = r.varint()
        reference = (r.floats(count), r.floats(count))
    r.done()
    return EntityState(RandomEffectModel(entity, names, means, precisions, model_version, window_end, matrix,
                                         reference), recent)


def decode_model(data: bytes) -> RandomEffectModel:
    """The model of ``decode_entity_state``."""
    return decode_entity_state(data).model


def encode_example(ex: Example, source: Optional[bytes] = None) -> bytes:
    """Version (2), timestamp, entity, uid (flag + text), label, weight, offset, features; then the
    record as read (flag + varint length + bytes): ``source``, else ``ex.source``. An example with a
    global correction (``ex.correction``, not 0) is version 3: the same, then the correction."""
    corrected = ex.correction != 0.0
    w = _Writer(CORRECTED_EXAMPLE_VERSION if corrected else EXAMPLE_VERSION)
    w.i64(ex.timestamp_ms)
    w.text(ex.entity_id)
    if ex.uid is None:
        w.parts.append(b"\x00")
    else:
        w.parts.append(b"\x01")
        w.text(ex.uid)
    w.parts.append(_F64x3.pack(ex.label, ex.weight, ex.offset))
    w.u32(len(ex.features))
    for name, term, value in ex.features:
        w.text(name)
        w.text(term)
        w.parts.append(_F64.pack(value))
    source = ex.source if source is None else source
    if source is None:
        w.parts.append(b"\x00")
    else:
        w.parts.append(b"\x01")
        w.varint(len(source))
        w.parts.append(bytes(source))
    if corrected:
        w.parts.append(_F64.pack(ex.correction))
    return w.getvalue()


def decode_example(data: bytes) -> Example:
    """Inverse of ``encode_example`` (versions 1 to 3); the record as read is ``Example.source``."""
    version = _check_version(data, READABLE_EXAMPLE_VERSIONS, "Example")
    if type(data) is bytes:
        example = _decode_example_by_offsets(data, version)
        if example is not None:
            return example
    return _decode_example_by_reader(data, version)


def _decode_example_by_reader(data: bytes, version: int) -> Example:
    """``decode_example`` of any bytes, through ``_Reader`` (``StateDecodeError`` for bytes that
    are not an example, ``UnicodeDecodeError`` for text in it that is not UTF-8)."""
    r = _Reader(data)
    timestamp = r.i64()
    entity = r.text()
    uid = r.text() if r.take(1)[0] else None
    label, weight, offset = _F64x3.unpack(r.take(24))
    features = []
    for _ in range(r.u32()):
        name = r.text()
        term = r.text()
        features.append((name, term, _F64.unpack(r.take(8))[0]))
    source = None
    if version >= 2 and r.take(1)[0]:
        source = bytes(r.take(r.varint()))
    correction = _F64.unpack(r.take(8))[0] if version >= 3 else 0.0
    r.done()
    return Example(entity, timestamp, uid, label, weight, offset, tuple(features), source, correction)


def _decode_example_by_offsets(data: bytes, version: int) -> Optional[Example]:
    """``decode_example`` of the usual bytes (names, terms, entity and uid under 128 bytes, a record
    under 16 KiB), read by offsets into the bytes: about twice as fast as ``_Reader``, which
    ``decode_example`` falls back to for anything else (other lengths, or bytes that are not a whole
    example: it then says what is wrong). None in those cases."""
    end = len(data)
    try:
        timestamp = _I64.unpack_from(data, 1)[0]
        n = data[9]
        p = 10 + n
        if n >= 0x80 or p > end:
            return None
        entity = data[10:p].decode()
        if data[p]:
            n = data[p + 1]
            q = p + 2 + n
            if n >= 0x80 or q > end:
                return None
            uid = data[p + 2:q].decode()
            p = q
        else:
            uid = None
            p += 1
        label, weight, offset = _F64x3.unpack_from(data, p)
        count = _U32.unpack_from(data, p + 24)[0]
        p += 28
        features = []
        for _ in range(count):
            n = data[p]
            q = p + 1 + n
            if n >= 0x80 or q > end:
                return None
            name = data[p + 1:q].decode()
            n = data[q]
            p = q + 1 + n
            if n >= 0x80 or p > end:
                return None
            features.append((name, data[q + 1:p].decode(), _F64.unpack_from(data, p)[0]))
            p += 8
        source = None
        if version >= 2:
            p += 1
            if data[p - 1]:
                n = data[p]  # the record's length, a varint of one or two bytes here
                if n < 0x80:
                    p += 1
                else:
                    high = data[p + 1]
                    if high >= 0x80:
                        return None
                    n = (n & 0x7F) | (high << 7)
                    p += 2
                if p + n > end:
                    return None
                source = data[p:p + n]
                p += n
        correction = 0.0
        if version >= 3:
            correction = _F64.unpack_from(data, p)[0]
            p += 8
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if p != end:
        return None
    return Example(entity, timestamp, uid, label, weight, offset, tuple(features), source, correction)


def encode_example_group(encoded_examples: Sequence[bytes]) -> bytes:
    """Encoded examples (of one entity) as one element: see "Example groups" above."""
    w = _Writer(EXAMPLE_GROUP_VERSION)
    w.varint(len(encoded_examples))
    for encoded in encoded_examples:
        w.varint(len(encoded))
        w.parts.append(encoded)
    return w.getvalue()


def decode_example_group(data: bytes) -> List[bytes]:
    """The encoded examples of ``encode_example_group``'s bytes."""
    _check_version(data, (EXAMPLE_GROUP_VERSION,), "ExampleGroup")
    r = _Reader(data)
    members = [bytes(r.take(r.varint())) for _ in range(r.varint())]
    r.done()
    return members


_PACKED = b"\xf0"  # after a buffer entry's mini-batch end: the entry packs several examples
_END_BYTES = _I64.size  # a buffer entry starts with its mini-batch end


def buffer_entry(batch_end_ms: int, encoded_examples: Sequence[bytes]) -> bytes:
    """Buffered examples of one mini-batch as one entry: its end, then the encoded example, or for
    several, 0xF0 and their example group (a packed entry)."""
    if isinstance(encoded_examples, (bytes, bytearray)):
        raise TypeError("buffer_entry takes a sequence of encoded examples, not one example's bytes.")
    if len(encoded_examples) == 1:
        return _I64.pack(batch_end_ms) + encoded_examples[0]
    return _I64.pack(batch_end_ms) + _PACKED + encode_example_group(encoded_examples)


def repack(batch_end_ms: int, entries: Sequence[bytes]) -> bytes:
    """Single (not packed) buffer entries of one mini-batch as one entry (``buffer_entry``)."""
    if len(entries) == 1:
        return entries[0]
    return buffer_entry(batch_end_ms, [entry[_END_BYTES:] for entry in entries])


def is_packed(entry: bytes) -> bool:
    """Whether a buffer entry packs several examples (``buffer_entry``)."""
    return entry[_END_BYTES] == _PACKED[0]


def buffered_examples(entry: bytes) -> List[Example]:
    """The examples of a buffer entry: its one example, or a packed entry's."""
    if is_packed(entry):
        return [decode_example(e) for e in decode_example_group(entry[_END_BYTES + 1:])]
    return [decode_example(entry[_END_BYTES:])]


def buffer_batch_end(entry: bytes) -> int:
    """The mini-batch end of a buffered entry, without decoding the example."""
    return _I64.unpack_from(entry, 0)[0]


class EntityStateCoder(coders.Coder):
    """Beam coder of ``EntityState`` (see ``encode_model``)."""

    def encode(self, value: EntityState) -> bytes:
        return encode_model(value.model, value.recent_uids)

    def decode(self, encoded: bytes) -> EntityState:
        return decode_entity_state(encoded)

    def is_deterministic(self) -> bool:
        return True


class FlushMarksCoder(coders.Coder):
    """Beam coder of an entity's flush marks ``(flushed_until, flush_at)`` in ms (0: none): the end
    of the last interval flushed, and when the flush timer is set. Two unsigned LEB128 varints.

    The cell holding them kept the name of the one that held ``flushed_until`` alone, as Beam's
    ``VarIntCoder`` (one varint, the same bytes for these non-negative numbers): such bytes decode
    as ``(flushed_until, 0)``. A job updated in place therefore keeps which intervals it flushed
    (so late examples stay late); it forgets when its timers were set, so an entity's next example
    sets its timer again, possibly later than the one it replaces, and that flush trains every
    interval due by then, in order.
    """

    def encode(self, value: Tuple[int, int]) -> bytes:
        w = _Writer(None)  # no version byte: the bytes of the cell's earlier VarIntCoder must still read
        w.varint(value[0])
        w.varint(value[1])
        return w.getvalue()

    def decode(self, encoded: bytes) -> Tuple[int, int]:
        r = _Reader(encoded, 0)
        flushed_until = r.varint()
        if r.pos == len(r.buf):  # a single VarIntCoder varint
            return flushed_until, 0
        flush_at = r.varint()
        r.done()
        return flushed_until, flush_at

    def is_deterministic(self) -> bool:
        return True


def example_timestamp(encoded_example: bytes) -> int:
    """The event time of an encoded example, read without decoding the rest."""
    _check_version(encoded_example, READABLE_EXAMPLE_VERSIONS, "Example")
    return _I64.unpack_from(encoded_example, 1)[0]
