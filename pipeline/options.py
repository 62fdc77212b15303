"""The job's command-line options, as a Beam ``PipelineOptions`` subclass, and their validation."""

import argparse
from typing import List

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from lambda_core import FORGETTING_TARGETS, TRAINERS
from transforms.update import FORGETTING_CLOCKS, GLOBAL_CORRECTIONS, HESSIANS, UpdateConfig

from . import flink  # declares the Flink runner's fault-tolerance flags; FlinkRunner defaults


class UsageError(Exception):
    """A mistake in the command line: reported as one line on stderr with exit code 2."""


class LambdaLearnerOptions(PipelineOptions):
    """Options of ``python -m pipeline`` (any Beam option may be given too)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument
        add("--input", dest="input", help="glob of example files (.avro or .jsonl)")
        add("--input-format", dest="input_format", choices=["avro", "json"],
            help="override the extension of every file read (examples, and initial models unless "
                 "--initial-models-format says otherwise)")
        add("--input-subscription", dest="input_subscription",
            help="Pub/Sub subscription of JSON examples (projects/P/subscriptions/S), instead of --input")
        add("--watch", dest="watch", action="store_true", help="keep following --input for new files (streaming)")
        add("--watch-interval-seconds", dest="watch_interval_seconds", type=float, default=10.0)
        add("--watch-duration-seconds", dest="watch_duration_seconds", type=float, default=0.0,
            help="stop following --input after this long (0: never); the job then finishes its work and ends")
        add("--output", dest="output", help="output directory (local or gs://)")
        add("--initial-models", dest="initial_models", help="Photon/GDMix model directory, file or glob")
        add("--initial-models-format", dest="initial_models_format", choices=["avro", "json"],
            help="override the model files' extensions (default: --input-format, else by extension)")
        add("--entity-field", dest="entity_field", help="field (or metadataMap key) holding the entity id")
        add("--timestamp-field", dest="timestamp_field", help="field (or metadataMap key) with event time, epoch ms")
        add("--trainer", dest="trainer", default=UpdateConfig.trainer,
            help=f"one of {', '.join(TRAINERS)} (all incremental)")
        add("--penalty", dest="penalty", type=float, default=UpdateConfig.penalty,
            help="L2 penalty lambda: the prior precision of a coefficient nothing is known about")
        add("--forgetting-factor", dest="forgetting_factor", type=float, default=None,
            help="delta in [0, 1]: the weight the past keeps per --minibatch-seconds of event time; 1: no "
                 "forgetting at all (default: the half-life below)")
        add("--forgetting-half-life-seconds", dest="forgetting_half_life_seconds", type=float, default=None,
            help="instead of --forgetting-factor: the past's weight halves every this many seconds of event time "
                 f"(default {UpdateConfig.forgetting_half_life_seconds:g})")
        add("--forgetting-clock", dest="forgetting_clock", default=UpdateConfig.forgetting_clock,
            help=f"one of {', '.join(FORGETTING_CLOCKS)}: forget by elapsed event time, or by delta once per "
                 "update (lambda-learner)")
        add("--forgetting-target", dest="forgetting_target", default=UpdateConfig.forgetting_target,
            help=f"one of {', '.join(FORGETTING_TARGETS)}: where forgetting pulls: zero (mean 0, precision "
                 "lambda), initial (the entity's initial model) or variance (keep the mean, relax the precision)")
        add("--hessian", dest="hessian", default=UpdateConfig.hessian, help=f"one of {', '.join(HESSIANS)}")
        add("--minibatch-seconds", dest="minibatch_seconds", type=float, default=UpdateConfig.minibatch_seconds)
        add("--max-minibatch-size", dest="max_minibatch_size", type=int, default=UpdateConfig.max_minibatch_size)
        add("--dedup-horizon-seconds", dest="dedup_horizon_seconds", type=float,
            default=UpdateConfig.dedup_horizon_seconds,
            help="an example whose uid its entity trained on within this much event time is a duplicate "
                 "(dead letter, not trained again); 0: off")
        add("--global-correction", dest="global_correction", default=UpdateConfig.global_correction,
            help=f"one of {', '.join(GLOBAL_CORRECTIONS)}: independent adds a second coordinate, one global "
                 "model learned interval by interval from every example, whose score raises each example's "
                 "offset before its entity's model sees it; auto: independent for the logistic trainer, none "
                 "for the others (see the README)")
        add("--global-penalty", dest="global_penalty", type=float, default=UpdateConfig.global_penalty,
            help="the global correction model's L2 penalty (its prior precision, and where forgetting relaxes it to)")
        add("--initial-global-model", dest="initial_global_model",
            help="the global correction model to start from: a snapshot's fixed-effect/global-correction "
                 "directory, a model file or glob (the newest record is used)")
        add("--coordinate", dest="coordinate", help="random-effect coordinate name (default: the entity field)")
        add("--feature-shard", dest="feature_shard", default="features", help="feature shard name for id-info")
        add("--max-features", dest="max_features", type=int, default=1000, help="per example")
        add("--max-model-coefficients", dest="max_model_coefficients", type=int, default=100_000)
        add("--output-window-seconds", dest="output_window_seconds", type=float, default=60.0,
            help="streaming: event-time window of the update and dead-letter files")
        add("--validation-bucket-seconds", dest="validation_bucket_seconds", type=float, default=3600.0,
            help="event-time bucket of the progressive-validation report")
        add("--snapshot-shards", dest="snapshot_shards", type=int, default=1)
        add("--progress-seconds", dest="progress_seconds", type=float, default=0.0,
            help="print records read and updates made every N seconds (per worker process; 0: off)")


class _QuietParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` with its one-line message instead of printing the usage
    of every Beam flag and exiting."""

    def error(self, message):
        raise UsageError(f"{message}; see --help.")


def _all_options_parser() -> argparse.ArgumentParser:
    # "resolve": an options class seen twice (a re-imported module) just re-adds its own flags.
    parser = _QuietParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    seen = set()

    def visit(cls):
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                sub._add_argparse_args(parser)
                visit(sub)

    visit(PipelineOptions)
    return parser


def parse_options(argv: List[str]) -> PipelineOptions:
    """Options from ``argv``; ``UsageError`` for unknown flags or invalid values."""
    try:
        _, unknown = _all_options_parser().parse_known_args(argv)
    except SystemExit:  # argparse exits itself for a few cases its error() does not cover
        raise UsageError(f"could not parse the command line {' '.join(argv)!r}; see --help.") from None
    if unknown:
        raise UsageError(f"unknown flag(s) {' '.join(unknown)}; see python -m pipeline --help.")
    options = PipelineOptions(argv)
    validate(options)
    flink.apply_defaults(options, argv)  # FlinkRunner: the cached job server and its Flink minor
    return options


def update_config(o: LambdaLearnerOptions) -> UpdateConfig:
    """The per-entity update the flags ask for (``ValueError`` naming the field when invalid).

    Without ``--forgetting-factor`` the half-life (``--forgetting-half-life-seconds``, else
    ``UpdateConfig``'s default) sets the forgetting; with it, the factor does (1: none).
    """
    half_life = UpdateConfig.forgetting_half_life_seconds
    if o.forgetting_half_life_seconds is not None:
        half_life = o.forgetting_half_life_seconds
    return UpdateConfig(trainer=o.trainer, penalty=o.penalty, forgetting_factor=o.forgetting_factor, hessian=o.hessian,
                        minibatch_seconds=o.minibatch_seconds, max_minibatch_size=o.max_minibatch_size,
                        coordinate=o.coordinate or o.entity_field, dedup_horizon_seconds=o.dedup_horizon_seconds,
                        forgetting_half_life_seconds=half_life, forgetting_clock=o.forgetting_clock,
                        forgetting_target=o.forgetting_target, global_correction=o.global_correction,
                        global_penalty=o.global_penalty)


def validate(options: PipelineOptions) -> None:
    """Check the values a user can get wrong; ``UsageError`` names the flag and what to do."""
    o = options.view_as(LambdaLearnerOptions)
    if not o.input and not o.input_subscription:
        raise UsageError("--input (a glob of example files) or --input-subscription is required.")
    if o.input and o.input_subscription:
        raise UsageError("give --input or --input-subscription, not both.")
    for flag, value in (("--output", o.output), ("--entity-field", o.entity_field),
                        ("--timestamp-field", o.timestamp_field)):
        if not value:
            raise UsageError(f"{flag} is required.")
    if o.forgetting_factor is not None and o.forgetting_half_life_seconds is not None:
        raise UsageError("give --forgetting-factor or --forgetting-half-life-seconds, not both.")
    try:
        update_config(o)
    except ValueError as err:
        # UpdateConfig names the field first ("forgetting_factor must be ..."): say it as the flag.
        field, _, rest = str(err).partition(" ")
        raise UsageError(f"--{field.replace('_', '-')} {rest}") from None
    if o.initial_global_model and not update_config(o).corrects:
        raise UsageError("--initial-global-model needs the global correction (--global-correction independent).")
    for flag, value in (("--max-features", o.max_features),
                        ("--max-model-coefficients", o.max_model_coefficients),
                        ("--snapshot-shards", o.snapshot_shards)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}.")
    if o.watch_interval_seconds <= 0 or o.watch_duration_seconds < 0:
        raise UsageError("--watch-interval-seconds must be > 0 and --watch-duration-seconds >= 0.")
    if o.watch and not o.input:
        raise UsageError("--watch follows --input; give --input.")
    if o.input_subscription and o.input_format == "avro":
        raise UsageError("--input-subscription messages are JSON examples; --input-format avro does not apply.")
    if (o.watch or o.input_subscription) and not options.view_as(StandardOptions).streaming:
        options.view_as(StandardOptions).streaming = True

