"""``python -m pipeline.compact``: build a GAME snapshot from an update stream.

A streaming job never "ends", so it cannot write a final snapshot; this folds its ``updates/``
files (plus, optionally, the initial models of entities that never updated) into the latest model
per entity, in the same layout the batch job writes, ready for the next run's ``--initial-models``.

    python -m pipeline.compact --updates 'out/updates/*.avro' [--initial-models PATH] --output DIR
        [--coordinate NAME] [--entity-field F] [--feature-shard S] [--penalty L] [--trainer T]
"""

import argparse
import sys

from apache_beam.io.filesystems import FileSystems

from transforms.formats import write_json_lines
from transforms.models import load_models, write_snapshot
from transforms.paths import data_files

from .options import UsageError


def compact(updates: str, output: str, coordinate: str, entity_field: str, initial_models: str = None,
            feature_shard: str = "features", penalty: float = 10.0, trainer: str = "sequential_bayesian_logistic"):
    """Write the snapshot; return (number of models, number of dead letters)."""
    if not data_files(updates):
        raise UsageError(f"--updates {updates!r} matches no files.")
    models, dead = load_models(updates, penalty)
    if initial_models:
        try:
            initial, dead_initial = load_models(initial_models, penalty)
        except FileNotFoundError as err:
            raise UsageError(f"--initial-models: {err}") from None
        dead += dead_initial
        for entity, model in initial.items():
            models.setdefault(entity, model)
    written = write_snapshot(models.values(), output, coordinate, entity_field, feature_shard, trainer)
    if dead:
        write_json_lines(FileSystems.join(output, "dead-letter", "compact-dead-letter.jsonl"),
                         (d.to_dict() for d in dead))
    return written["models"], len(dead)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compact", description=__doc__.splitlines()[0])
    parser.add_argument("--updates", required=True, help="glob of update files (.avro or .jsonl)")
    parser.add_argument("--initial-models", help="models of entities that may not have updated")
    parser.add_argument("--output", required=True)
    parser.add_argument("--coordinate", default="per-entity")
    parser.add_argument("--entity-field", default="entityId")
    parser.add_argument("--feature-shard", default="features")
    parser.add_argument("--penalty", type=float, default=10.0, help="precision for coefficients without variance")
    parser.add_argument("--trainer", default="sequential_bayesian_logistic")
    args = parser.parse_args(argv)
    try:
        n, dead = compact(args.updates, args.output, args.coordinate, args.entity_field, args.initial_models,
                          args.feature_shard, args.penalty, args.trainer)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote the latest model of {n:,} entities to {args.output}/random-effect/{args.coordinate}/"
          f" ({dead} dead letters).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
