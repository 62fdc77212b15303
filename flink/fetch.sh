#!/usr/bin/env bash
# `make flink-jar`: fetch, once, what running the job on Flink needs, into the cache that
# `python -m pipeline.flink env` names (~/.cache/lambda-learner/flink unless LAMBDA_LEARNER_CACHE is set):
#   - Beam's Flink job server, shaded by Maven from the Flink runner module (flink/job-server/pom.xml);
#   - the Flink distribution of the same version, from the PyPI wheels apache-flink and
#     apache-flink-libraries, unpacked with --no-deps into the cache (never into the project's
#     venv: they pin an old Beam), for flink/cluster.sh.
# Each piece is written to a temporary name and renamed when complete, so a cut-off run leaves
# nothing that looks finished. Usage: flink/fetch.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
eval "$("$PY" -m pipeline.flink env)"
mkdir -p "$FLINK_CACHE"

if [ ! -f "$JOB_SERVER_JAR" ]; then
    echo "flink-jar: building the Beam $JOB_SERVER_BEAM_VERSION Flink $FLINK_MINOR job server with Maven (once)"
    build=$(mktemp -d "$FLINK_CACHE/job-server-build.XXXXXX")
    trap 'rm -rf "$build"' EXIT
    cp flink/job-server/pom.xml "$build/"
    mvn -B -q -Dstyle.color=never -f "$build/pom.xml" -Dbeam.version="$JOB_SERVER_BEAM_VERSION" -Dflink.minor="$FLINK_MINOR" package
    mv "$build/target/flink-job-server-$JOB_SERVER_BEAM_VERSION-flink-$FLINK_MINOR.jar" "$JOB_SERVER_JAR.tmp"
    mv "$JOB_SERVER_JAR.tmp" "$JOB_SERVER_JAR"
    rm -rf "$build"
    trap - EXIT
fi

dist=$(dirname "$FLINK_HOME")
if [ ! -x "$FLINK_HOME/bin/start-cluster.sh" ] || [ ! -f "$FLINK_HOME/lib/flink-dist-$FLINK_VERSION.jar" ]; then
    echo "flink-jar: unpacking the Flink $FLINK_VERSION distribution from PyPI (once)"
    work=$(mktemp -d "$FLINK_CACHE/flink-dist.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download --quiet --no-deps -d "$work/wheels" \
        "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
    "$PY" -m pip install --quiet --no-deps --no-compile --target "$work/target" "$work"/wheels/*
    chmod +x "$work/target/pyflink/bin/"*.sh "$work/target/pyflink/bin/flink"
    rm -rf "$dist"
    mv "$work/target" "$dist"
    rm -rf "$work"
    trap - EXIT
fi
echo "flink-jar: job server $JOB_SERVER_JAR"
echo "flink-jar: Flink $FLINK_VERSION at $FLINK_HOME"
