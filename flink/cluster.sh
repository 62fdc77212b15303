#!/usr/bin/env bash
# A standalone Flink cluster on this machine, from the distribution `make flink-jar` unpacked
# (the Flink version the job server is built for). Everything binds to 127.0.0.1.
#
#   flink/cluster.sh start [RUN_DIR]   # a JobManager and $FLINK_TASKMANAGERS TaskManagers (default 1)
#   flink/cluster.sh stop [RUN_DIR]
#   flink/cluster.sh status [RUN_DIR]  # the REST overview (TaskManagers, slots, jobs)
#
# RUN_DIR (default: the cache's cluster/) holds the configuration, logs, pid files, checkpoints
# (RUN_DIR/checkpoints) and savepoints (RUN_DIR/savepoints). The REST API and web UI are on
# localhost:$FLINK_REST_PORT (default 8081): submit the job with --flink_master=localhost:8081.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
eval "$("$PY" -m pipeline.flink env)"
cmd=${1:-}
RUN_DIR=$(realpath -m "${2:-$FLINK_CACHE/cluster}")
REST_PORT=${FLINK_REST_PORT:-8081}
TASKMANAGERS=${FLINK_TASKMANAGERS:-1}
export FLINK_CONF_DIR="$RUN_DIR/conf" FLINK_LOG_DIR="$RUN_DIR/log" FLINK_PID_DIR="$RUN_DIR"

if [ ! -x "$FLINK_HOME/bin/jobmanager.sh" ]; then
    echo "no Flink distribution at $FLINK_HOME: run \`make flink-jar\` first" >&2
    exit 2
fi

overview() { curl -sf "http://127.0.0.1:$REST_PORT/overview"; }

write_config() {
    mkdir -p "$FLINK_CONF_DIR" "$FLINK_LOG_DIR" "$RUN_DIR/checkpoints" "$RUN_DIR/savepoints"
    cp "$FLINK_HOME/conf/log4j.properties" "$FLINK_HOME/conf/log4j-console.properties" "$FLINK_CONF_DIR/"
    # The distribution's JVM flags for Java 17 (module opens Flink needs), kept as they are.
    java_opts=$(grep -E '^ *all: ' "$FLINK_HOME/conf/config.yaml" | head -1 | sed 's/^ *all: //')
    cat > "$FLINK_CONF_DIR/config.yaml" <<EOF
env.java.opts.all: $java_opts
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.address: localhost
jobmanager.rpc.port: ${FLINK_RPC_PORT:-6123}
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: 127.0.0.1
taskmanager.host: localhost
taskmanager.numberOfTaskSlots: 2
taskmanager.memory.process.size: 1536m
parallelism.default: 1
rest.address: localhost
rest.bind-address: 127.0.0.1
rest.port: $REST_PORT
blob.server.port: 0
# A TaskManager that dies is noticed in seconds, not the default 50 s.
heartbeat.interval: 2000
heartbeat.timeout: 10000
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 20
restart-strategy.fixed-delay.delay: 2 s
state.checkpoints.dir: file://$RUN_DIR/checkpoints
state.savepoints.dir: file://$RUN_DIR/savepoints
EOF
}

case "$cmd" in
start)
    if overview >/dev/null 2>&1; then
        echo "something already answers on localhost:$REST_PORT; stop it first" >&2
        exit 1
    fi
    write_config
    "$FLINK_HOME/bin/jobmanager.sh" start >/dev/null
    for _ in $(seq "$TASKMANAGERS"); do "$FLINK_HOME/bin/taskmanager.sh" start >/dev/null; done
    for _ in $(seq 120); do
        if overview 2>/dev/null | grep -q "\"taskmanagers\":$TASKMANAGERS,"; then
            echo "Flink $FLINK_VERSION: JobManager + $TASKMANAGERS TaskManager(s) up, REST on localhost:$REST_PORT ($RUN_DIR)"
            exit 0
        fi
        sleep 1
    done
    echo "the cluster did not come up in 120 s; logs in $FLINK_LOG_DIR" >&2
    exit 1
    ;;
stop)
    [ -d "$FLINK_CONF_DIR" ] || { echo "no cluster configured in $RUN_DIR" >&2; exit 1; }
    "$FLINK_HOME/bin/taskmanager.sh" stop-all >/dev/null || true
    "$FLINK_HOME/bin/jobmanager.sh" stop-all >/dev/null || true
    for _ in $(seq 30); do overview >/dev/null 2>&1 || { echo "stopped"; exit 0; }; sleep 1; done
    echo "the JobManager still answers on localhost:$REST_PORT" >&2
    exit 1
    ;;
status)
    overview && echo
    ;;
*)
    sed -n '2,11p' "$0" >&2
    exit 2
    ;;
esac
