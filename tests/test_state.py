"""State evolution: bytes written by earlier and current releases must keep decoding.

The hex strings below are state as it was encoded when each version shipped. They are frozen:
never regenerate them from the current encoder (that would make the test pass by construction).
A change to the encoding needs a new version byte, a decoder branch for it, and a new golden value.
"""

import numpy as np
import pytest

from lambda_core import INTERCEPT
from transforms.examples import Example
from transforms.models import RandomEffectModel
from transforms.state import (
    EXAMPLE_VERSION,
    MODEL_STATE_VERSION,
    READABLE_MODEL_STATE_VERSIONS,
    EntityState,
    EntityStateCoder,
    StateDecodeError,
    buffer_batch_end,
    buffer_entry,
    buffered_examples,
    decode_entity_state,
    decode_example,
    decode_example_group,
    decode_model,
    encode_example,
    encode_example_group,
    encode_model,
    example_timestamp,
    is_packed,
)

T0 = 1_764_028_800_000

# Version 1 (model only), as encoded by commit 989873e.
GOLDEN_V1_DIAGONAL = bytes.fromhex(
    "0106757365722d3703e08cc1c2ab330209696e7465726365707409696e7465726365707402616402c3a9000000000000d03f"
    "000000000000f8bf0100000000000024400000000000002940")
GOLDEN_V1_FULL = bytes.fromhex(
    "0102753201e0d4030209696e7465726365707409696e7465726365707401660131000000000000f03f0000000000000040"
    "020000000000001040000000000000e03f000000000000e03f0000000000001440")
GOLDEN_V1_NO_HESSIAN = bytes.fromhex(
    "0102753300000109696e7465726365707409696e74657263657074000000000000e03f00")
# Version 2 (model + recent uids grouped by mini-batch end).
GOLDEN_V2_WITH_UIDS = bytes.fromhex(
    "0206757365722d3703e08cc1c2ab330209696e7465726365707409696e7465726365707402616402c3a9000000000000d03f"
    "000000000000f8bf01000000000000244000000000000029400280b8bdc2ab330105696d702d30e08cc1c2ab330205696d70"
    "2d3105696d702d32")
GOLDEN_V2_FULL_NO_UIDS = bytes.fromhex(
    "0202753201e0d4030209696e7465726365707409696e7465726365707401660131000000000000f03f0000000000000040"
    "020000000000001040000000000000e03f000000000000e03f000000000000144000")
# Version 3 (version 2 + the forgetting reference of --forgetting-target initial).
GOLDEN_V3_WITH_REFERENCE = bytes.fromhex(
    "0302753402c0e1c4c2ab330309696e7465726365707409696e746572636570740166013101670132000000000000e83f"
    "000000000000e0bf000000000000c03f0100000000000018400000000000002240000000000000244001c0e1c4c2ab3301"
    "05696d702d3902000000000000e03f000000000000d0bf00000000000010400000000000002040")
# Version 4 (names and terms as their lengths, then their bytes together; a reference flag byte).
GOLDEN_V4_WITH_UIDS = bytes.fromhex(
    "0406757365722d3703e08cc1c2ab330209090202696e74657263657074696e746572636570746164c3a9000000000000d03f"
    "000000000000f8bf01000000000000244000000000000029400280b8bdc2ab330105696d702d30e08cc1c2ab330205696d70"
    "2d3105696d702d3200")
GOLDEN_V4_FULL_NO_UIDS = bytes.fromhex(
    "0402753201e0d4030209090101696e74657263657074696e746572636570746631000000000000f03f000000000000004002"
    "0000000000001040000000000000e03f000000000000e03f00000000000014400000")
GOLDEN_V4_WITH_REFERENCE = bytes.fromhex(
    "0402753402c0e1c4c2ab3303090901010101696e74657263657074696e7465726365707466316732000000000000e83f0000"
    "00000000e0bf000000000000c03f0100000000000018400000000000002240000000000000244001c0e1c4c2ab330105696d"
    "702d390102000000000000e03f000000000000d0bf00000000000010400000000000002040")
# Example encoding version 1 (buffered examples), and a buffer entry (mini-batch end + example).
GOLDEN_EXAMPLE_V1 = bytes.fromhex(
    "017b5c4fb89a01000006757365722d3701057569642d31000000000000f03f0000000000000040000000000000e0bf0200"
    "000002616402c3a9000000000000e83f01710178000000000000f0bf")
GOLDEN_EXAMPLE_V1_NO_UID = bytes.fromhex(
    "0105000000000000000175000000000000000000000000000000f03f000000000000000000000000")
GOLDEN_BUFFER_ENTRY = bytes.fromhex("604650b89a010000") + GOLDEN_EXAMPLE_V1
# Example encoding version 2: version 1's fields, then the record as read (flag, length, bytes).
SOURCE = b'{"userId": "user-7"}'
GOLDEN_EXAMPLE_V2 = bytes.fromhex(
    "027b5c4fb89a01000006757365722d3701057569642d31000000000000f03f0000000000000040000000000000e0bf0200"
    "000002616402c3a9000000000000e83f01710178000000000000f0bf01147b22757365724964223a2022757365722d37227d")
GOLDEN_EXAMPLE_V2_NO_SOURCE = bytes.fromhex(
    "0205000000000000000175000000000000000000000000000000f03f00000000000000000000000000")

MODEL_1 = RandomEffectModel("user-7", (INTERCEPT, ("ad", "é")), np.array([0.25, -1.5]), np.array([10.0, 12.5]),
                            3, T0 + 60_000)
MODEL_2 = RandomEffectModel("u2", (INTERCEPT, ("f", "1")), np.array([1.0, 2.0]), np.array([4.0, 5.0]), 1, 60_000,
                            np.array([[4.0, 0.5], [0.5, 5.0]]))
MODEL_3 = RandomEffectModel("u3", (INTERCEPT,), np.array([0.5]), None, 0, 0)
MODEL_4 = RandomEffectModel("u4", (INTERCEPT, ("f", "1"), ("g", "2")), np.array([0.75, -0.5, 0.125]),
                            np.array([6.0, 9.0, 10.0]), 2, T0 + 120_000, None,
                            (np.array([0.5, -0.25]), np.array([4.0, 8.0])))
EXAMPLE = Example("user-7", T0 + 123, "uid-1", 1.0, 2.0, -0.5, (("ad", "é", 0.75), ("q", "x", -1.0)))
UIDS = (("imp-0", T0), ("imp-1", T0 + 60_000), ("imp-2", T0 + 60_000))


def assert_same_model(got: RandomEffectModel, want: RandomEffectModel):
    assert (got.entity_id, got.feature_names, got.version, got.window_end_ms) == \
        (want.entity_id, want.feature_names, want.version, want.window_end_ms)
    assert got.means.tobytes() == want.means.tobytes()
    assert (got.reference is None) == (want.reference is None)
    pairs = [(got.precisions, want.precisions), (got.precision_matrix, want.precision_matrix)]
    if want.reference is not None:
        pairs += list(zip(got.reference, want.reference))
    for a, b in pairs:
        assert (a is None) == (b is None)
        if a is not None:
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("golden, model", [
    (GOLDEN_V1_DIAGONAL, MODEL_1), (GOLDEN_V1_FULL, MODEL_2), (GOLDEN_V1_NO_HESSIAN, MODEL_3)])
def test_version_1_state_still_decodes_with_no_recent_uids(golden, model):
    assert golden[0] == 1
    state = decode_entity_state(golden)
    assert_same_model(state.model, model)
    assert state.recent_uids == ()
    assert_same_model(EntityStateCoder().decode(golden).model, model)
    # re-encoding upgrades it to the current version
    assert encode_model(state.model)[0] == MODEL_STATE_VERSION


def test_version_2_state_still_decodes():
    state = decode_entity_state(GOLDEN_V2_WITH_UIDS)
    assert_same_model(state.model, MODEL_1)
    assert state.recent_uids == UIDS
    assert_same_model(decode_model(GOLDEN_V2_FULL_NO_UIDS), MODEL_2)
    # models without a reference decode with None
    assert decode_model(GOLDEN_V2_WITH_UIDS).reference is None


def test_version_3_state_holds_the_forgetting_reference_and_still_decodes():
    assert GOLDEN_V3_WITH_REFERENCE[0] == 3
    state = decode_entity_state(GOLDEN_V3_WITH_REFERENCE)
    assert_same_model(state.model, MODEL_4)
    assert state.recent_uids == (("imp-9", T0 + 120_000),)


def test_version_4_state_is_what_the_encoder_writes_today():
    assert MODEL_STATE_VERSION == 4 and READABLE_MODEL_STATE_VERSIONS == (1, 2, 3, 4)
    # Exactly these bytes, whatever order the uids are given in.
    assert encode_model(MODEL_1, tuple(reversed(UIDS))) == GOLDEN_V4_WITH_UIDS
    assert EntityStateCoder().encode(EntityState(MODEL_1, UIDS)) == GOLDEN_V4_WITH_UIDS
    assert encode_model(MODEL_2) == GOLDEN_V4_FULL_NO_UIDS
    assert encode_model(MODEL_4, (("imp-9", T0 + 120_000),)) == GOLDEN_V4_WITH_REFERENCE
    state = decode_entity_state(GOLDEN_V4_WITH_UIDS)
    assert_same_model(state.model, MODEL_1)
    assert state.recent_uids == UIDS
    assert_same_model(decode_model(GOLDEN_V4_FULL_NO_UIDS), MODEL_2)
    assert_same_model(decode_model(GOLDEN_V4_WITH_REFERENCE), MODEL_4)
    # the same size as version 2, plus the reference flag byte
    assert len(GOLDEN_V4_WITH_UIDS) == len(GOLDEN_V2_WITH_UIDS) + 1


@pytest.mark.parametrize("names", [
    ((INTERCEPT, ("ad", "é"), ("q" * 200, "ß" * 130), ("", ""))),  # multi-byte text, lengths of two varint bytes
    ((("a" * 300, "x"), ("b", "")) + tuple((f"f{i}", str(i)) for i in range(200))),
    (INTERCEPT,),
])
def test_version_4_names_round_trip_whatever_their_characters_and_lengths(names):
    d = len(names)
    model = RandomEffectModel("ü-1", names, np.arange(d, dtype=float), np.ones(d), 1, T0)
    back = decode_model(encode_model(model))
    assert back.feature_names == names


def test_version_4_names_whose_bytes_are_damaged_fail_clearly():
    data = encode_model(MODEL_1)
    at = data.index(b"intercept")
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_entity_state(data[:at + 3])
    with pytest.raises(UnicodeDecodeError):  # as every other string of the state
        decode_entity_state(data[:at] + b"\xff" + data[at + 1:])
    with pytest.raises(StateDecodeError, match="unknown reference flag 7"):
        decode_entity_state(GOLDEN_V4_FULL_NO_UIDS[:-1] + b"\x07")


def test_example_and_buffer_encodings_still_decode():
    assert decode_example(GOLDEN_EXAMPLE_V1) == EXAMPLE
    assert decode_example(GOLDEN_EXAMPLE_V1_NO_UID) == Example("u", 5, None, 0.0, 1.0, 0.0, ())
    assert (buffer_batch_end(GOLDEN_BUFFER_ENTRY), buffered_examples(GOLDEN_BUFFER_ENTRY)) == (T0 + 60_000, [EXAMPLE])
    assert example_timestamp(GOLDEN_EXAMPLE_V1) == T0 + 123
    assert decode_example(GOLDEN_EXAMPLE_V1).source is None  # version 1 kept no record


def test_example_version_2_keeps_the_record_as_read():
    assert EXAMPLE_VERSION == 2
    assert encode_example(EXAMPLE, SOURCE) == GOLDEN_EXAMPLE_V2
    assert encode_example(EXAMPLE._replace(source=SOURCE)) == GOLDEN_EXAMPLE_V2
    assert decode_example(GOLDEN_EXAMPLE_V2) == EXAMPLE._replace(source=SOURCE)
    assert example_timestamp(GOLDEN_EXAMPLE_V2) == T0 + 123
    no_source = Example("u", 5, None, 0.0, 1.0, 0.0, ())
    assert encode_example(no_source) == GOLDEN_EXAMPLE_V2_NO_SOURCE
    assert decode_example(GOLDEN_EXAMPLE_V2_NO_SOURCE) == no_source
    entry = buffer_entry(T0 + 60_000, [GOLDEN_EXAMPLE_V2])
    assert (buffer_batch_end(entry), buffered_examples(entry)) == (T0 + 60_000, [EXAMPLE._replace(source=SOURCE)])


def test_example_version_3_is_version_2_then_the_global_correction():
    corrected = EXAMPLE._replace(source=SOURCE, correction=-0.375)
    golden_v3 = b"\x03" + GOLDEN_EXAMPLE_V2[1:] + bytes.fromhex("000000000000d8bf")  # -0.375, float64 LE
    assert encode_example(corrected) == golden_v3
    assert decode_example(golden_v3) == corrected
    assert example_timestamp(golden_v3) == T0 + 123
    assert encode_example(corrected._replace(correction=0.0)) == GOLDEN_EXAMPLE_V2  # no correction: version 2


def test_a_packed_buffer_entry_is_the_interval_end_0xf0_then_an_example_group():
    members = [EXAMPLE._replace(uid=f"u{i}", source=SOURCE) for i in range(3)]
    entry = buffer_entry(T0 + 60_000, [encode_example(ex) for ex in members])
    group = encode_example_group([encode_example(ex) for ex in members])
    assert entry == GOLDEN_BUFFER_ENTRY[:8] + b"\xf0" + group
    assert is_packed(entry) and not is_packed(GOLDEN_BUFFER_ENTRY)
    assert buffered_examples(entry) == members
    assert buffered_examples(GOLDEN_BUFFER_ENTRY) == [EXAMPLE]
    with pytest.raises(TypeError, match="sequence of encoded examples"):
        buffer_entry(T0, encode_example(EXAMPLE))


def test_example_groups_carry_their_examples_byte_for_byte():
    members = [encode_example(EXAMPLE._replace(source=SOURCE, correction=c)) for c in (0.0, -0.375, 2.5)]
    members.append(b"\x02" + b"x" * 300)  # a member over 127 bytes: a two-byte length
    group = encode_example_group(members)
    assert group[:2] == b"\x01\x04"  # version 1, four members
    assert encode_example_group([b"\x02ab", b"\x01" * 130]) == bytes.fromhex("0102" "03" "026162" "8201") + b"\x01" * 130
    assert decode_example_group(group) == members
    assert decode_example_group(encode_example_group([])) == []
    with pytest.raises(StateDecodeError, match=r"ExampleGroup state has encoding version 2"):
        decode_example_group(b"\x02" + group[1:])
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_example_group(group[:-1])
    with pytest.raises(StateDecodeError, match="trailing"):
        decode_example_group(group + b"\x00")


@pytest.mark.parametrize("version", [0, 5, 9, 255])
def test_unknown_model_state_version_fails_with_a_clear_message(version):
    data = bytes([version]) + GOLDEN_V2_WITH_UIDS[1:]
    with pytest.raises(StateDecodeError, match=rf"Model state has encoding version {version}, but this code reads "
                                               r"version\(s\) 1, 2, 3, 4: run a release of lambda-learner-beam"):
        decode_entity_state(data)
    with pytest.raises(StateDecodeError):
        EntityStateCoder().decode(data)


def test_unknown_example_version_and_damaged_bytes_fail_clearly():
    with pytest.raises(StateDecodeError, match=r"Example state has encoding version 4, but this code reads version\(s\) 1, 2, 3"):
        decode_example(b"\x04" + GOLDEN_EXAMPLE_V1[1:])
    # a version-2 body read as version 3 lacks the correction: truncated, not silently wrong
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_example(b"\x03" + encode_example(decode_example(GOLDEN_EXAMPLE_V1))[1:])
    # a version-1 body read as version 2 lacks the record flag: truncated, not silently wrong
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_example(b"\x02" + GOLDEN_EXAMPLE_V1[1:])
    with pytest.raises(StateDecodeError, match="empty"):
        decode_entity_state(b"")
    for cut in (1, 5, len(GOLDEN_V2_WITH_UIDS) - 1):
        with pytest.raises(StateDecodeError, match="truncated"):
            decode_entity_state(GOLDEN_V2_WITH_UIDS[:cut])
    with pytest.raises(StateDecodeError, match="trailing"):
        decode_entity_state(GOLDEN_V2_WITH_UIDS + b"\x00")
    # a version-1 body read as version 2 lacks the uid section: truncated, not silently wrong
    with pytest.raises(StateDecodeError, match="truncated"):
        decode_entity_state(b"\x02" + GOLDEN_V1_DIAGONAL[1:])


def test_state_round_trips_with_many_uids_and_stays_compact():
    uids = tuple((f"{i:08x}-impression", T0 + 60_000 * (i % 7)) for i in range(500))
    data = encode_model(MODEL_1, uids)
    back = decode_entity_state(data)
    assert sorted(back.recent_uids) == sorted(uids)
    assert list(back.recent_uids) == sorted(uids, key=lambda p: (p[1], p[0]))
    # the mini-batch end is written once per mini-batch: about one byte of overhead per uid
    uid_bytes = sum(len(u) for u, _ in uids)
    assert len(data) - len(encode_model(MODEL_1)) <= uid_bytes + len(uids) + 7 * 8


def test_flush_marks_round_trip_and_read_the_flushed_until_cell_of_earlier_releases():
    from apache_beam.coders import VarIntCoder

    from transforms.state import FlushMarksCoder

    coder = FlushMarksCoder()
    for marks in [(0, 0), (T0 + 60_000, 0), (T0, T0 + 120_000), (2**62, 1)]:
        assert coder.decode(coder.encode(marks)) == marks
    assert coder.encode((T0, T0 + 60_000)) == coder.encode((T0, T0 + 60_000)) and coder.is_deterministic()
    # The cell's earlier coder wrote flushed_until alone; its timer time is then unknown (0).
    assert coder.decode(VarIntCoder().encode(T0 + 60_000)) == (T0 + 60_000, 0)
    assert coder.decode(VarIntCoder().encode(0)) == (0, 0)
    with pytest.raises(StateDecodeError, match="trailing"):
        coder.decode(coder.encode((1, 2)) + b"\x00")
