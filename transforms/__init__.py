"""transforms: the Beam layer (DoFns, PTransforms, state) and the file formats it reads and writes.

Element logic lives here; the math lives in ``lambda_core``; ``pipeline`` only wires named steps.
What a user composes into a pipeline of their own is exported here: ``UpdateRandomEffects`` (raw
examples and initial models in; updates, dead letters and validation out), the readers and
writers of the job's formats, and the record types.
"""

from .examples import DeadLetter, Example, ExampleParser, read_examples
from .formats import load_schema, write_avro, write_json_lines
from .io import AvroSink, JsonLinesSink, ReadModelRecords, ReadRecords, WriteRecords, WriteSnapshot
from .models import (
    ModelParser,
    RandomEffectModel,
    cold_model,
    latest_record,
    load_models,
    model_record,
    newer,
    update_record,
    write_snapshot,
)
from .random_effects import RandomEffectOutputs, UpdateRandomEffects, UpdateRandomEffectsFn
from .update import UpdateConfig, train_minibatch
from .validation import ProgressiveValidationFn

__all__ = [
    # The job's per-entity step, as a PTransform, its DoFn, its outputs and its configuration.
    "UpdateRandomEffects",
    "UpdateRandomEffectsFn",
    "RandomEffectOutputs",
    "UpdateConfig",
    "train_minibatch",
    # Reading and writing the job's formats in a pipeline.
    "ReadRecords",
    "ReadModelRecords",
    "WriteRecords",
    "WriteSnapshot",
    "AvroSink",
    "JsonLinesSink",
    "ProgressiveValidationFn",
    # Records, parsing and files outside Beam.
    "DeadLetter",
    "Example",
    "ExampleParser",
    "read_examples",
    "ModelParser",
    "RandomEffectModel",
    "cold_model",
    "newer",
    "latest_record",
    "load_models",
    "model_record",
    "update_record",
    "write_snapshot",
    "load_schema",
    "write_avro",
    "write_json_lines",
]
