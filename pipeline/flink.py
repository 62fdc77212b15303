"""Running the job on Apache Flink: the versions, where ``make flink-jar`` caches what Flink needs,
and the Flink flags a ``--runner=FlinkRunner`` command line gets when the user does not give them.

Beam's Python FlinkRunner starts a Java job server (``java -jar <job-server jar>``) that translates
the pipeline for Flink, either into an embedded MiniCluster (``--flink_master=[local]``) or onto a
running cluster (``--flink_master=host:port``). Beam downloads that jar by URL, which the machines
here cannot; ``make flink-jar`` builds it from Maven instead (``flink/job-server/pom.xml``) and
unpacks the Flink distribution of the same minor from PyPI for ``flink/cluster.sh``.

    python -m pipeline.flink env     # shell assignments of the versions and paths, for the scripts
"""

import os
import sys
from typing import Dict, List

from apache_beam.options.pipeline_options import PipelineOptions

# The newest Beam release whose Flink runner module resolves from Maven with all its dependencies
# (no release's shaded job-server jar is served); its Flink minor and the exact Flink patch release
# it is built against, which the standalone cluster uses too (the cluster and the runner must share it).
JOB_SERVER_BEAM_VERSION = "2.62.0"
FLINK_MINOR = "1.19"
FLINK_VERSION = "1.19.0"


class FlinkJobServerOptions(PipelineOptions):
    """Options of Beam's Java Flink runner that Python does not declare, for fault tolerance.

    Beam's PortableRunner passes any option the job server describes; ``python -m pipeline``
    rejects flags it does not know, so the ones this job documents are declared here (the Java
    names in snake case). Unset ones are not sent: the job server keeps its defaults.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument
        add("--checkpointing_interval", type=int, default=None,
            help="Flink: milliseconds between checkpoints (default: no checkpoints)")
        add("--savepoint_path", default=None, help="Flink: start the job from this savepoint")
        add("--allow_non_restored_state", action="store_true", default=None,
            help="Flink: start from a savepoint that holds state of steps the job no longer has")
        add("--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None,
            help="Flink: keep the last checkpoint when the job is cancelled")
        add("--number_of_execution_retries", type=int, default=None,
            help="Flink: restarts after a failure (-1: Flink's restart strategy)")
        add("--execution_retry_delay", type=int, default=None, help="Flink: milliseconds before a restart")
        add("--shutdown_sources_after_idle_ms", type=int, default=None,
            help="Flink: stop a finished source after this long (with checkpointing Beam's default is never, "
                 "which holds back the watermark of every step downstream of it)")


# Flink 1.19 on Java 17 reflects into JDK classes (its Kryo fallback serializer, for one): the
# distribution's launch scripts open these packages, a plain `java -jar` job server must too, or an
# embedded job fails with "module java.base does not "opens java.util" to unnamed module".
JAVA_17_OPENS = tuple(f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
    "java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "sun.nio.ch", "java.text", "java.time",
    "java.util", "java.util.concurrent", "java.util.concurrent.atomic", "java.util.concurrent.locks"))


def cache_dir() -> str:
    """Where ``make flink-jar`` puts the job server and the Flink distribution."""
    base = os.environ.get("LAMBDA_LEARNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lambda-learner")
    return os.path.join(base, "flink")


def job_server_jar() -> str:
    return os.path.join(cache_dir(), f"beam-runners-flink-{FLINK_MINOR}-job-server-{JOB_SERVER_BEAM_VERSION}.jar")


def flink_home() -> str:
    """The unpacked ``apache-flink`` + ``apache-flink-libraries`` wheels: bin/, conf/, lib/."""
    return os.path.join(cache_dir(), f"flink-{FLINK_VERSION}", "pyflink")


def paths() -> Dict[str, str]:
    return {
        "JOB_SERVER_BEAM_VERSION": JOB_SERVER_BEAM_VERSION,
        "FLINK_MINOR": FLINK_MINOR,
        "FLINK_VERSION": FLINK_VERSION,
        "FLINK_CACHE": cache_dir(),
        "JOB_SERVER_JAR": job_server_jar(),
        "FLINK_HOME": flink_home(),
    }


def _given(flags: List[str], name: str) -> bool:
    return any(f == name or f.startswith(name + "=") for f in flags)


FLINK_STREAMING_NOTE = ("note: FlinkRunner runs the job in streaming mode (on the bounded input, the same models): "
                        "the global correction's one-key stage overflows Flink's batch sort buffer; "
                        "--global-correction none keeps batch.")


def apply_defaults(options, flags: List[str]) -> None:
    """For ``--runner=FlinkRunner``: streaming execution when the job has the global correction
    (``FLINK_STREAMING_NOTE``); without a job endpoint, the cached job server and its Flink minor,
    started with the JVM flags Flink needs on Java 17.

    ``flags`` is the command line, to tell a flag the user gave from Beam's default (2.2 for
    ``--flink_version``). A user who passes ``--flink_job_server_jar`` gets exactly what they asked.
    """
    from apache_beam.options.pipeline_options import (FlinkRunnerOptions, JobServerOptions, PortableOptions,
                                                      StandardOptions)

    from .options import LambdaLearnerOptions, UsageError, update_config

    runner = options.view_as(StandardOptions).runner or ""
    if runner.split(".")[-1].lower() not in ("flinkrunner", "flink"):
        return
    standard = options.view_as(StandardOptions)
    if update_config(options.view_as(LambdaLearnerOptions)).corrects and not standard.streaming:
        # Flink's batch execution hands a stateful step a key's elements sorted as one record, and
        # the global correction's stage has one key: 30,000 examples already overflowed the sort
        # buffer (78 MB). Its streaming execution reads the bounded input just as well, key by key
        # in state, and gives the same models (tested).
        standard.streaming = True
        print(FLINK_STREAMING_NOTE, file=sys.stderr)
    if options.view_as(PortableOptions).job_endpoint:
        return
    flink = options.view_as(FlinkRunnerOptions)
    if flink.flink_job_server_jar:
        return
    if _given(flags, "--flink_version") and flink.flink_version != FLINK_MINOR:
        raise UsageError(f"--flink_version {flink.flink_version}: the job server `make flink-jar` caches is for "
                         f"Flink {FLINK_MINOR}; pass --flink_job_server_jar for another minor.")
    if options.view_as(LambdaLearnerOptions).watch:
        raise UsageError(f"--watch does not work on Flink with the Beam {JOB_SERVER_BEAM_VERSION} job server: its "
                         "portable runner does not run Python's file watch as a streaming source (no file "
                         "is read while the job runs, or none after the first poll); see the README, "
                         "\"Run on Flink\". Use a bounded --input, or pass --flink_job_server_jar of a newer Beam.")
    jar = job_server_jar()
    if not os.path.exists(jar):
        raise UsageError(f"no Flink job server at {jar}; run `make flink-jar` first "
                         "(or pass --flink_job_server_jar).")
    flink.flink_job_server_jar = jar
    flink.flink_version = FLINK_MINOR
    jvm = options.view_as(JobServerOptions)
    jvm.job_server_jvm_properties = list(jvm.job_server_jvm_properties or []) + [
        flag for flag in JAVA_17_OPENS if flag not in (jvm.job_server_jvm_properties or [])]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["env"]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for name, value in paths().items():
        print(f"{name}='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
