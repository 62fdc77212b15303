"""transforms: the Beam layer (DoFns, PTransforms, state) and the file formats it reads and writes.

Element logic lives here; the math lives in ``lambda_core``; ``pipeline`` only wires named steps.
"""

from .examples import DeadLetter, Example, ExampleParser, read_examples
from .formats import load_schema, write_avro, write_json_lines
from .models import (
    ModelParser,
    RandomEffectModel,
    cold_model,
    load_models,
    model_record,
    update_record,
    write_snapshot,
)

__all__ = [
    "DeadLetter",
    "Example",
    "ExampleParser",
    "read_examples",
    "load_schema",
    "write_avro",
    "write_json_lines",
    "ModelParser",
    "RandomEffectModel",
    "cold_model",
    "load_models",
    "model_record",
    "update_record",
    "write_snapshot",
]
