"""``python -m pipeline``: run the Lambda Learner job. See ``--help`` and the README."""

import logging
import sys

from apache_beam.options.pipeline_options import StandardOptions, TestOptions

from .options import LambdaLearnerOptions, UsageError, parse_options


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split(":")[1].strip(),
                                         epilog="Any Apache Beam pipeline option (--runner, --streaming, ...) "
                                                "is accepted too.")
        LambdaLearnerOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    try:
        options = parse_options(argv)
        from .job import format_summary, run, summarize

        result, paths, seconds = run(options)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if options.view_as(TestOptions).dry_run:
        print(f"Dry run: the job was built and translated for {options.view_as(StandardOptions).runner}; nothing ran.")
        return 0
    summary = summarize(result, options, paths, seconds)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.ERROR)
    sys.exit(main())
