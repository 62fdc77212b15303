"""Per-entity random-effect models: reading Photon-ML/GDMix model files, validating them, and
writing update records and snapshots in Photon's GAME layout.

A ``RandomEffectModel`` holds one entity's coefficients by (name, term), the intercept first as
the core's ``("intercept", "intercept")``, with their precision (the Hessian diagonal).
"""

import functools
import math
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from lambda_core import INTERCEPT, photon_model_class

from .examples import PHOTON_INTERCEPT, DeadLetter
from apache_beam.io.filesystems import FileSystems

from .formats import (AVRO, NOT_JSON, decode_json_line, detect_format, is_blank, iter_avro, line_text, open_path,
                      to_json, write_avro)
from .paths import data_files, is_glob, tree

NameTerm = Tuple[str, str]
LOGISTIC_MODEL_CLASS = "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel"
LINEAR_MODEL_CLASS = "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel"
DEFAULT_MAX_COEFFICIENTS = 100_000
ID_INFO = "id-info"
COEFFICIENTS = "coefficients"


class RandomEffectModel(NamedTuple):
    """One entity's model.

    ``feature_names`` are (name, term) keys with the intercept first; ``means`` the coefficients;
    ``precisions`` the Hessian diagonal (``1/variance``), or None for a model kept without a Hessian;
    ``precision_matrix`` the full Hessian when the job keeps one (``--hessian=full``); ``version``
    counts updates; ``window_end_ms`` is the end of the last mini-batch trained (0 if none);
    ``reference`` the (means, precisions) of the model the entity entered the job with, over its
    first coefficients, kept only for ``--forgetting-target initial`` (None otherwise).
    """

    entity_id: str
    feature_names: Tuple[NameTerm, ...]
    means: np.ndarray
    precisions: Optional[np.ndarray]
    version: int = 0
    window_end_ms: int = 0
    precision_matrix: Optional[np.ndarray] = None
    reference: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def variances(self) -> Optional[np.ndarray]:
        """Coefficient variances, ``1/H_ii`` (None without a Hessian)."""
        return None if self.precisions is None else 1.0 / self.precisions

    def coefficient(self, name: str, term: str = "") -> Tuple[float, Optional[float]]:
        """(mean, variance) of one coefficient; ``ValueError`` if the model does not have it."""
        i = self.feature_names.index((name, term))
        variance = None if self.precisions is None else float(1.0 / self.precisions[i])
        return float(self.means[i]), variance


def cold_model(entity_id: str, penalty: float) -> RandomEffectModel:
    """The model of an entity never seen before: theta = 0, H = penalty * I (intercept only)."""
    return RandomEffectModel(entity_id, (INTERCEPT,), np.zeros(1), np.full(1, float(penalty)))


def _core_name(name: str, term: str) -> NameTerm:
    return INTERCEPT if (name, term) in (PHOTON_INTERCEPT, INTERCEPT) else (name, term)


class _InvalidModel(Exception):
    """Internal: carries the one-sentence reason a model record is rejected."""


class ModelParser:
    """Validates ``BayesianLinearModelAvro`` records into ``RandomEffectModel`` s.

    Either intercept convention (Photon's ``("(INTERCEPT)", "")`` or ``("intercept", "intercept")``)
    maps to the core's intercept. A model without ``variances`` gets precision ``penalty`` for every
    coefficient. Non-finite means, non-positive or non-finite variances, duplicate coefficients and
    more than ``max_coefficients`` coefficients make a dead letter (stage "model").
    """

    def __init__(self, penalty: float, max_coefficients: int = DEFAULT_MAX_COEFFICIENTS):
        self.penalty = float(penalty)
        self.max_coefficients = max_coefficients

    def parse(self, record: Any) -> Union[RandomEffectModel, DeadLetter]:
        """A ``RandomEffectModel`` or a ``DeadLetter``; never raises."""
        try:
            return self._parse(record)
        except _InvalidModel as err:
            return DeadLetter(str(err), "model", record, "model")
        except Exception as err:  # an unforeseen record shape must not stop the job
            return DeadLetter(f"model record could not be read ({type(err).__name__}: {err}).", "model",
                              record if isinstance(record, dict) else repr(record), "model")

    def parse_as_read(self, record: Any) -> Union[RandomEffectModel, DeadLetter, None]:
        """``parse`` of a record as a reader yields it: a dict from Avro, or a JSON line (a line
        that is not JSON is a dead letter with the line as text); None for a blank line."""
        if isinstance(record, (bytes, str)):
            if is_blank(record):
                return None
            value = decode_json_line(record)
            record = line_text(record) if value is NOT_JSON else value
        return self.parse(record)

    def _parse(self, record: Any) -> RandomEffectModel:
        if not isinstance(record, dict):
            raise _InvalidModel(f"model record is a {type(record).__name__}, not an object.")
        entity = record.get("modelId")
        if isinstance(entity, bool) or not isinstance(entity, (str, int)) or not str(entity).strip():
            raise _InvalidModel("model has no modelId (the entity id).")
        entity = str(entity)
        means = record.get("means")
        if not isinstance(means, list):
            raise _InvalidModel(f"model {entity} has no list of means.")
        variances = record.get("variances")
        if variances is not None and not isinstance(variances, list):
            raise _InvalidModel(f"model {entity} has variances that are not a list.")
        count = len(means) + len(variances or ())
        if len(means) > self.max_coefficients or len(variances or ()) > self.max_coefficients:
            raise _InvalidModel(f"model {entity} has {count} coefficient entries, more than the limit of "
                             f"{self.max_coefficients}.")
        index: Dict[NameTerm, int] = {INTERCEPT: 0}
        names: List[NameTerm] = [INTERCEPT]
        mean_values = [0.0]
        seen_means = set()
        for ntv in means:
            key, value = self._ntv(ntv, entity, "mean")
            if not math.isfinite(value):
                raise _InvalidModel(f"model {entity} has a non-finite mean {value} for {key}.")
            if key in seen_means:
                raise _InvalidModel(f"model {entity} lists the mean of {key} more than once.")
            seen_means.add(key)
            if key not in index:
                index[key] = len(names)
                names.append(key)
                mean_values.append(value)
            else:
                mean_values[index[key]] = value
        precisions = [self.penalty] * len(names)
        seen_variances = set()
        for ntv in variances or ():
            key, value = self._ntv(ntv, entity, "variance")
            if not (math.isfinite(value) and value > 0 and math.isfinite(1.0 / value)):
                raise _InvalidModel(f"model {entity} has variance {value} for {key}; variances must be finite, "
                                    "> 0 and have a finite inverse.")
            if key in seen_variances:
                raise _InvalidModel(f"model {entity} lists the variance of {key} more than once.")
            seen_variances.add(key)
            if key not in index:  # a variance without a mean: the mean is 0
                index[key] = len(names)
                names.append(key)
                mean_values.append(0.0)
                precisions.append(1.0 / value)
            else:
                precisions[index[key]] = 1.0 / value
        version = record.get("version") or 0
        window_end = record.get("windowEnd") or 0
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise _InvalidModel(f"model {entity} has an invalid version {version!r}.")
        if isinstance(window_end, bool) or not isinstance(window_end, int):
            raise _InvalidModel(f"model {entity} has an invalid windowEnd {window_end!r}.")
        return RandomEffectModel(entity, tuple(names), np.array(mean_values), np.array(precisions),
                                 version, window_end)

    @staticmethod
    def _ntv(ntv: Any, entity: str, what: str) -> Tuple[NameTerm, float]:
        if not isinstance(ntv, dict):
            raise _InvalidModel(f"model {entity} has a {what} that is not a name-term-value record.")
        name, term, value = ntv.get("name"), ntv.get("term"), ntv.get("value")
        term = "" if term is None else term
        if not isinstance(name, str) or not isinstance(term, str):
            raise _InvalidModel(f"model {entity} has a {what} whose name or term is not a string.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _InvalidModel(f"model {entity} has a {what} of ({name}, {term}) that is not a number.")
        return _core_name(name, term), float(value)


def model_files(path: str, any_extension: bool = False) -> List[str]:
    """The model files under ``path`` (any Beam filesystem): a GAME coordinate directory (its
    ``coefficients/`` files), a GDMix ``models/`` directory, a directory tree of model files, a
    single file, or a glob; files of any name with ``any_extension`` (the format was given).
    ``FileNotFoundError`` when there are none."""
    files = [] if is_glob(path) else tree(FileSystems.join(path.rstrip("/"), COEFFICIENTS), any_extension)
    files = files or data_files(path, any_extension)
    if not files:
        raise FileNotFoundError(f"No model files (.avro or .jsonl) found at {path!r}.")
    return files


def read_model_records(path: str, input_format: Optional[str] = None) -> Iterator[Any]:
    """Every model record under ``path`` (see ``model_files``) as read: Avro records as dicts, JSON
    lines as bytes (``ModelParser.parse_as_read`` takes either)."""
    for file in model_files(path, bool(input_format)):
        if detect_format(file, input_format) == AVRO:
            yield from iter_avro(file)
        else:
            with open_path(file) as f:
                for line in f:
                    yield line.rstrip(b"\r\n")


def _recency(record: dict) -> Tuple[int, int]:
    return record.get("version") or 0, record.get("windowEnd") or 0


def newer_record(a: dict, b: dict) -> dict:
    """The one rule for "the latest model of an entity", on model records (updates, initial models,
    snapshot rows): the higher ``version``, then the later ``windowEnd``; on a tie, more
    coefficients, then the content itself (means, variances), so the choice never depends on which
    record arrived first."""
    ka, kb = _recency(a), _recency(b)
    if ka != kb:
        return a if ka > kb else b
    # Ties are rare (two initial records of one version): only then is the content looked at.
    ca = (len(a.get("means") or ()), to_json([a.get("means"), a.get("variances")]))
    cb = (len(b.get("means") or ()), to_json([b.get("means"), b.get("variances")]))
    return a if ca >= cb else b


def latest_record(records: Iterable[dict]) -> dict:
    """``newer_record`` over several records of one entity (e.g. a combiner's input)."""
    return functools.reduce(newer_record, records)


def newer(a: RandomEffectModel, b: RandomEffectModel) -> RandomEffectModel:
    """``newer_record`` on models: the same choice the snapshot makes from their records."""
    ka, kb = (a.version, a.window_end_ms), (b.version, b.window_end_ms)
    if ka != kb:
        return a if ka > kb else b
    ra = model_record(a)
    return a if newer_record(ra, model_record(b)) is ra else b


def load_models(path: str, penalty: float, max_coefficients: int = DEFAULT_MAX_COEFFICIENTS,
                input_format: Optional[str] = None) -> Tuple[Dict[str, RandomEffectModel], List[DeadLetter]]:
    """All valid models under ``path`` by entity (the newest when an entity appears more than once,
    as in an update stream) and the dead letters of the invalid ones."""
    parser = ModelParser(penalty, max_coefficients)
    models: Dict[str, RandomEffectModel] = {}
    dead: List[DeadLetter] = []
    for record in read_model_records(path, input_format):
        parsed = parser.parse_as_read(record)
        if parsed is None:  # a blank line
            continue
        if isinstance(parsed, DeadLetter):
            dead.append(parsed)
        else:
            current = models.get(parsed.entity_id)
            models[parsed.entity_id] = parsed if current is None else newer(current, parsed)
    return models, dead


def model_class(trainer: str) -> str:
    """Photon's model class name for one of our trainers (from the trainer registry)."""
    return photon_model_class(trainer)


def _ntv_list(names: Sequence[NameTerm], values: Iterable[float]) -> List[dict]:
    out = []
    for (name, term), value in zip(names, values):
        if (name, term) == INTERCEPT:
            name, term = PHOTON_INTERCEPT
        out.append({"name": name, "term": term, "value": float(value)})
    return out


def _ntv_list_intercept_first(names: Sequence[NameTerm], values: List[float]) -> List[dict]:
    """``_ntv_list`` when ``names[0]`` is the intercept (and, names being unique, no other one is)."""
    out = [{"name": name, "term": term, "value": value} for (name, term), value in zip(names, values)]
    out[0] = {"name": PHOTON_INTERCEPT[0], "term": PHOTON_INTERCEPT[1], "value": values[0]}
    return out


def model_record(model: RandomEffectModel, trainer: str = "sequential_bayesian_logistic",
                 sparsity_threshold: float = 0.0) -> dict:
    """The ``BayesianLinearModelAvro`` record of a model, intercept first as ``("(INTERCEPT)", "")``.

    Coefficients with ``|mean| < sparsity_threshold`` are dropped (never the intercept); the default
    0 keeps all of them.
    """
    names = model.feature_names
    if not sparsity_threshold > 0 and names and names[0] == INTERCEPT:
        # Every model the job builds has the intercept first and keeps all coefficients: one pass each.
        precisions = model.precisions
        return {
            "modelId": model.entity_id,
            "modelClass": model_class(trainer),
            "means": _ntv_list_intercept_first(names, model.means.tolist()),
            "variances": None if precisions is None else _ntv_list_intercept_first(names, (1.0 / precisions).tolist()),
            "lossFunction": "",
        }
    keep = [i for i, nt in enumerate(model.feature_names)
            if nt == INTERCEPT or not abs(model.means[i]) < sparsity_threshold]
    # The intercept is index 0 of every model we build; keep it first whatever the input order was.
    keep.sort(key=lambda i: model.feature_names[i] != INTERCEPT)
    names = [model.feature_names[i] for i in keep]
    return {
        "modelId": model.entity_id,
        "modelClass": model_class(trainer),
        "means": _ntv_list(names, model.means[keep]),
        "variances": None if model.precisions is None else _ntv_list(names, 1.0 / model.precisions[keep]),
        "lossFunction": "",
    }


def update_record(model: RandomEffectModel, *, num_examples: int, loss: Optional[float], converged: bool,
                  coordinate: str, trainer: str = "sequential_bayesian_logistic") -> dict:
    """The record of one model update (``ModelUpdateAvro``: the Photon record plus bookkeeping)."""
    record = model_record(model, trainer)
    record.update(
        version=int(model.version),
        windowEnd=int(model.window_end_ms),
        numExamples=int(num_examples),
        loss=None if loss is None or not math.isfinite(loss) else float(loss),
        converged=bool(converged),
        coordinate=coordinate,
    )
    return record


def write_id_info(coordinate_dir: str, entity_field: str, feature_shard: str) -> str:
    """Photon's ``id-info``: the entity field and the feature shard, one per line (local or gs://)."""
    path = FileSystems.join(coordinate_dir, ID_INFO)
    with FileSystems.create(path) as f:
        f.write(f"{entity_field}\n{feature_shard}\n".encode("utf-8"))
    return path


def coordinate_dir(output: str, coordinate: str) -> str:
    """``<output>/random-effect/<coordinate>``: Photon's GAME layout."""
    return FileSystems.join(output, "random-effect", coordinate)


def fixed_effect_dir(output: str, coordinate: str) -> str:
    """``<output>/fixed-effect/<coordinate>``: where Photon's GAME layout keeps a global model (its
    ``coefficients/`` and no ``id-info``)."""
    return FileSystems.join(output, "fixed-effect", coordinate)


def snapshot_dir(output: str, coordinate: str, fixed_effect: bool = False) -> str:
    """Where a snapshot of ``coordinate`` goes: ``fixed_effect_dir`` for a global model, else
    ``coordinate_dir``."""
    return (fixed_effect_dir if fixed_effect else coordinate_dir)(output, coordinate)


def write_snapshot(models: Iterable[RandomEffectModel], output: str, coordinate: str, entity_field: str,
                   feature_shard: str = "features", trainer: str = "sequential_bayesian_logistic",
                   records_per_part: int = 100_000, sparsity_threshold: float = 0.0,
                   fixed_effect: bool = False) -> Dict[str, Any]:
    """Write the latest model of every entity in Photon's GAME layout under ``output`` (any Beam
    filesystem).

    Writes ``random-effect/<coordinate>/id-info`` and ``coefficients/part-NNNNN.avro`` (entities in
    sorted order, so the files are reproducible); returns the paths and the count. ``fixed_effect``:
    ``fixed-effect/<coordinate>/coefficients/`` instead, without ``id-info`` (a global model).
    """
    base = snapshot_dir(output, coordinate, fixed_effect)
    if not fixed_effect:  # a global model (the global correction) has no id-info
        write_id_info(base, entity_field, feature_shard)
    ordered = sorted(models, key=lambda m: m.entity_id)
    parts = []
    for part, start in enumerate(range(0, max(len(ordered), 1), records_per_part)):
        chunk = ordered[start:start + records_per_part]
        path = FileSystems.join(base, COEFFICIENTS, f"part-{part:05d}.avro")
        # With version and windowEnd (Photon readers read the superset schema): see io.WriteSnapshot.
        write_avro(path, "ModelUpdateAvro", (dict(model_record(m, trainer, sparsity_threshold), version=int(m.version),
                                                  windowEnd=int(m.window_end_ms)) for m in chunk))
        parts.append(path)
    return {"directory": base, "parts": parts, "models": len(ordered)}
