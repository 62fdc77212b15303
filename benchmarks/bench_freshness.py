"""Freshness of the streaming job: how long after a mini-batch closes its update is in a file.

A feeder writes a JSON-lines file of live examples (event time = the wall clock when written) into
a watched directory every ``--feed-interval`` seconds, atomically (written beside it, then renamed).
``python -m pipeline --watch --streaming`` follows the directory; a poller lists ``<out>/updates/``
every 50 ms and notes when each update file first appears. For every update whose mini-batch ended
during the feed the delay is

    first seen  -  windowEnd (the end of the update's mini-batch, in event time = wall time)

The watch's watermark is its poll time, so a mini-batch is due at most one poll after its end: the
delay includes that poll. After the feed the job gets an output window, a poll, a mini-batch and
``--slack`` seconds more, then is stopped; updates only the job's final flush would write are not
counted. Per setting it prints p50 / p99 / max:

* ``default``: the job's own ``--output-window-seconds`` and ``--watch-interval-seconds``
* ``short``: ``--output-window-seconds 5 --watch-interval-seconds 1``

with ``--minibatch-seconds`` as given (default 10). This runs the DirectRunner (Beam's Python local
runner, where the job writes a file per bundle); the README's "Freshness" says what bounds the delay
on other runners and why Flink is not measured. Nothing is required.

    python benchmarks/bench_freshness.py [--seconds 60] [--minibatch-seconds 10] [--settings default,short]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import fastavro
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from bench_pipeline import example_line, job_command  # noqa: E402
from pipeline.options import LambdaLearnerOptions  # noqa: E402

_JOB_DEFAULTS = PipelineOptions([]).view_as(LambdaLearnerOptions)
# (output window, watch interval) in seconds per setting.
SETTINGS = {
    "default": (_JOB_DEFAULTS.output_window_seconds, _JOB_DEFAULTS.watch_interval_seconds),
    "short": (5.0, 1.0),
}
# The watch outlasts the feed: the benchmark stops the job once every mini-batch that closed during
# the feed could have been written.
WATCH_DURATION_SECONDS = "1000000000"


def feed(directory, stop, seconds, interval, rate, entities, seed):
    """Write one file of live examples every ``interval`` seconds for ``seconds``; return how many."""
    rng = np.random.default_rng(seed)
    staging = directory + ".staging"
    os.makedirs(staging)
    started, n, i = time.time(), 0, 0
    while time.time() - started < seconds and not stop.is_set():
        now_ms = int(time.time() * 1000)
        lines = []
        for _ in range(max(1, int(rate * interval))):
            lines.append(example_line(rng, n, int(rng.integers(entities)), now_ms, 3))
            n += 1
        staged = os.path.join(staging, f"batch-{i:06d}.json")
        with open(staged, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(staged, os.path.join(directory, f"batch-{i:06d}.json"))
        i += 1
        stop.wait(max(0.0, started + i * interval - time.time()))
    return n


def watch_updates(directory, seen, stop):
    """Note the wall time (ms) at which each finalised update file first appears under ``directory``."""
    while not stop.is_set():
        if os.path.isdir(directory):
            now_ms = time.time() * 1000
            for name in os.listdir(directory):
                if name.startswith("updates-"):
                    seen.setdefault(name, now_ms)
        stop.wait(0.05)


def run_setting(name, window, poll, args, work):
    """(records fed, delays in ms of the updates whose mini-batch ended during the feed)."""
    watched = os.path.join(work, name, "in")
    updates = os.path.join(work, name, "out", "updates")
    os.makedirs(watched)
    cmd = job_command(os.path.join(watched, "*.json"), os.path.dirname(updates), "--streaming", "--watch",
                      "--watch-duration-seconds", WATCH_DURATION_SECONDS, "--watch-interval-seconds", str(poll),
                      "--output-window-seconds", str(window))
    cmd[cmd.index("--minibatch-seconds") + 1] = str(args.minibatch_seconds)
    log = open(os.path.join(work, f"{name}.log"), "w")
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen, stop_poll, stop_feed = {}, threading.Event(), threading.Event()
    poller = threading.Thread(target=watch_updates, args=(updates, seen, stop_poll), daemon=True)
    poller.start()
    try:
        # Give the job time to start before the first event, so start-up is not counted as delay.
        time.sleep(args.warmup)
        feed_started_ms = time.time() * 1000
        records = feed(watched, stop_feed, args.seconds, args.feed_interval, args.rate, args.entities, seed=1)
        feed_end_ms = time.time() * 1000
        # Every mini-batch that ended during the feed should be written within one output window and a
        # poll; wait for that (plus slack for a loaded machine), then stop the job.
        deadline = time.time() + window + poll + args.minibatch_seconds + args.slack
        while time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        if job.poll() is not None:
            with open(log.name) as f:
                sys.exit(f"{name}: the job stopped early (exit {job.returncode}):\n{f.read()[-3000:]}")
    finally:
        job.kill()
        job.wait()
        stop_poll.set()
        poller.join()
        log.close()
    delays = []
    for file_name, first_seen_ms in seen.items():
        with open(os.path.join(updates, file_name), "rb") as f:
            for update in fastavro.reader(f):
                if feed_started_ms < update["windowEnd"] <= feed_end_ms:
                    delays.append(first_seen_ms - update["windowEnd"])
    return records, delays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the feeder writes files")
    parser.add_argument("--feed-interval", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100, help="records per second")
    parser.add_argument("--entities", type=int, default=300)
    parser.add_argument("--minibatch-seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=15, help="seconds between starting the job and the first file")
    parser.add_argument("--slack", type=float, default=20, help="extra seconds to wait for the last files")
    parser.add_argument("--settings", default="default,short")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-freshness-")
    try:
        print(f"feed: {args.seconds:g} s, a file every {args.feed_interval:g} s, {args.rate:g} records/s, "
              f"{args.entities} entities; --minibatch-seconds {args.minibatch_seconds:g}; DirectRunner")
        for name in args.settings.split(","):
            window, poll = SETTINGS[name]
            records, delays = run_setting(name, window, poll, args, work)
            print(f"{name:<8} --output-window-seconds {window:g} --watch-interval-seconds {poll:g}: "
                  f"{records:,} records fed")
            if not delays:
                sys.exit(f"{name}: no update of a mini-batch that closed during the feed reached a finalised file")
            p50, p99, worst = np.percentile(delays, [50, 99, 100]) / 1000
            print(f"         {len(delays):,} updates in finalised files; delay after the mini-batch's end: "
                  f"p50 {p50:.1f} s, p99 {p99:.1f} s, max {worst:.1f} s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
