"""Freshness of the streaming job: how long after a mini-batch closes its update is in a file.

A feeder writes a JSON-lines file of live examples (event time = the wall clock when written) into
a watched directory every ``--feed-interval`` seconds, atomically (written beside it, then renamed).
``python -m pipeline --watch --streaming`` follows the directory; a poller lists ``<out>/updates/``
every 50 ms and notes when each update file first appears, finalised or still in the writer's
temporary folder. For every update whose mini-batch ended during the feed the delay is

    first seen  -  windowEnd (the end of the update's mini-batch, in event time = wall time)

On a runner that honours the watch's watermark (its poll time), the watermark passes a
mini-batch's end at most one poll after that end, so the delay of a finalised file is an upper
bound of "watermark passes the mini-batch's end -> update written", by at most the poll interval.
After the feed the job gets an output window, a poll, a mini-batch and ``--slack`` seconds more,
then is stopped; updates only the job's final flush would write are not counted. Per setting it
prints p50 / p99 / max of finalised files' delays, and of updates still in temporary files (with
how many were certainly written before their mini-batch ended: their file's last change was):

* ``default``: the job's defaults (``--output-window-seconds 60``, ``--watch-interval-seconds 10``)
* ``short``: ``--output-window-seconds 5 --watch-interval-seconds 1``

with ``--minibatch-seconds`` as given (default 10). This runs the DirectRunner (Beam's Python local
runner); the README's "Freshness" says what it shows and why Flink is not measured. Nothing is
required.

    python benchmarks/bench_freshness.py [--seconds 60] [--minibatch-seconds 10] [--settings default,short]
"""

import argparse
import json
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import job_command  # noqa: E402

SETTINGS = {
    "default": [],
    "short": ["--output-window-seconds", "5", "--watch-interval-seconds", "1"],
}
# The watch outlasts the feed: the benchmark stops the job once every mini-batch that closed during
# the feed could have been written.
WATCH_DURATION_SECONDS = "1000000000"


def feed(directory, stop, seconds, interval, rate, entities, seed):
    """Write one file of live examples every ``interval`` seconds for ``seconds``."""
    rng = np.random.default_rng(seed)
    staging = directory + ".staging"
    os.makedirs(staging)
    started, n, i = time.time(), 0, 0
    while time.time() - started < seconds and not stop.is_set():
        now_ms = int(time.time() * 1000)
        lines = []
        for _ in range(max(1, int(rate * interval))):
            feats = [{"name": "f", "term": str(int(t)), "value": float(np.round(rng.normal(), 4))}
                     for t in rng.choice(50, size=3, replace=False)]
            lines.append(json.dumps({"uid": f"e{n}", "entity": f"n{int(rng.integers(entities))}", "ts": now_ms,
                                     "label": int(rng.random() < 0.3),
                                     "offset": float(np.round(rng.normal(scale=0.5), 4)), "features": feats}))
            n += 1
        staged = os.path.join(staging, f"batch-{i:06d}.json")
        with open(staged, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(staged, os.path.join(directory, f"batch-{i:06d}.json"))
        i += 1
        stop.wait(max(0.0, started + i * interval - time.time()))
    return n


def watch_updates(directory, seen, stop):
    """Note the wall time (ms) at which each update file first appears: finalised files under
    ``directory``, and the writer's temporary files (``.temp*/``) before they are finalised."""
    while not stop.is_set():
        if os.path.isdir(directory):
            now_ms = time.time() * 1000
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if name.startswith(".temp") and os.path.isdir(path):
                    for temp in os.listdir(path):
                        seen.setdefault(os.path.join(path, temp), now_ms)
                elif name.startswith("updates-"):
                    seen.setdefault(path, now_ms)
        stop.wait(0.05)


def read_updates(path):
    """The updates in one Avro file; a temporary file cut off mid-block yields what it holds."""
    updates = []
    try:
        with open(path, "rb") as f:
            for update in fastavro.reader(f):
                updates.append(update)
    except (OSError, ValueError, EOFError, StopIteration):
        pass
    return updates


def run_setting(name, extra, args, work):
    watched = os.path.join(work, name, "in")
    out = os.path.join(work, name, "out")
    os.makedirs(watched)
    cmd = job_command(os.path.join(watched, "*.json"), out, "--streaming", "--watch",
                      "--watch-duration-seconds", WATCH_DURATION_SECONDS,
                      *(["--watch-interval-seconds", "10"] if "--watch-interval-seconds" not in extra else []),
                      *extra)
    cmd[cmd.index("--minibatch-seconds") + 1] = str(args.minibatch_seconds)
    log = open(os.path.join(work, f"{name}.log"), "w")
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen, stop_poll, stop_feed = {}, threading.Event(), threading.Event()
    poller = threading.Thread(target=watch_updates, args=(os.path.join(out, "updates"), seen, stop_poll), daemon=True)
    poller.start()
    try:
        # Give the job time to start before the first event, so start-up is not counted as delay.
        time.sleep(args.warmup)
        feed_started_ms = time.time() * 1000
        records = feed(watched, stop_feed, args.seconds, args.feed_interval, args.rate, args.entities, seed=1)
        feed_end_ms = time.time() * 1000
        # Every mini-batch that ended during the feed should be written within one output window and a
        # poll; wait for that (plus slack for a loaded machine), then stop the job.
        window = float(extra[extra.index("--output-window-seconds") + 1]) if "--output-window-seconds" in extra else 60
        poll = float(extra[extra.index("--watch-interval-seconds") + 1]) if "--watch-interval-seconds" in extra else 10
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
    final, temporary = [], []
    for path, first_seen_ms in seen.items():
        finalised = not os.path.basename(os.path.dirname(path)).startswith(".temp")
        if not os.path.exists(path):
            continue  # a temporary file since finalised: its updates are counted there
        # A temporary file is written to for a whole bundle: an update in it was written after the
        # file first appeared and before its last modification.
        last_written_ms = None if finalised else os.path.getmtime(path) * 1000
        for update in read_updates(path):
            end = update["windowEnd"]
            if finalised and feed_started_ms < end <= feed_end_ms:
                final.append(first_seen_ms - end)
            elif not finalised and feed_started_ms < end:
                temporary.append((first_seen_ms - end, last_written_ms - end))
    return records, final, temporary


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
            extra = SETTINGS[name]
            records, delays, temporary = run_setting(name, extra, args, work)
            flags = " ".join(extra) or "(job defaults: --output-window-seconds 60 --watch-interval-seconds 10)"
            print(f"{name:<8} {flags}: {records:,} records fed")
            if delays:
                p50, p99, worst = np.percentile(delays, [50, 99, 100]) / 1000
                print(f"         {len(delays):,} updates in finalised files; delay after the mini-batch's end: "
                      f"p50 {p50:.1f} s, p99 {p99:.1f} s, max {worst:.1f} s")
            else:
                print("         no update of a mini-batch that closed during the feed reached a finalised file")
            if temporary:
                p50, p99 = np.percentile([first for first, _ in temporary], [50, 99]) / 1000
                early = sum(last < 0 for _, last in temporary)
                print(f"         {len(temporary):,} updates only in the writer's temporary files when the job was stopped; "
                      f"their files appeared p50 {p50:.1f} s, p99 {p99:.1f} s after their mini-batch's end; {early:,} "
                      f"({early / len(temporary):.0%}) were written before it ended (their file's last change was)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
