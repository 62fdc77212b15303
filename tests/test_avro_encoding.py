"""The direct model-record Avro encoder against fastavro's reader, on random records."""

import io

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.avro_encoding import ModelContainerWriter

text = st.text(max_size=80)
ntv = st.fixed_dictionaries({"name": text, "term": text,
                             "value": st.floats(allow_nan=False, allow_infinity=True)})
model = st.fixed_dictionaries({
    "modelId": text, "modelClass": st.none() | text, "means": st.lists(ntv, max_size=12),
    "variances": st.none() | st.lists(ntv, max_size=12), "lossFunction": st.none() | text,
})
update = st.fixed_dictionaries({
    "version": st.integers(-2**63, 2**63 - 1), "windowEnd": st.integers(-2**63, 2**63 - 1),
    "numExamples": st.integers(0, 2**62), "loss": st.none() | st.floats(allow_nan=False),
    "converged": st.booleans(), "coordinate": text,
})


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(model, update), max_size=30), st.integers(1, 7))
def test_update_records_read_back_with_fastavro(pairs, block_records):
    records = [dict(m, **u) for m, u in pairs]
    buffer = io.BytesIO()
    writer = ModelContainerWriter(buffer, "ModelUpdateAvro", block_records=block_records)
    for r in records:
        writer.write(r)
    writer.flush()
    buffer.seek(0)
    assert list(fastavro.reader(buffer)) == records


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(model, max_size=20))
def test_photon_model_records_read_back_with_fastavro(records):
    buffer = io.BytesIO()
    writer = ModelContainerWriter(buffer, "BayesianLinearModelAvro")
    for r in records:
        writer.write(r)
    writer.flush()
    buffer.seek(0)
    reader = fastavro.reader(buffer)
    assert reader.writer_schema["name"] == "com.linkedin.photon.avro.generated.BayesianLinearModelAvro"
    assert list(reader) == records
