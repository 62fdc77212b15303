"""``python -m pipeline.tune``: pick the job's settings by replaying the stream once per setting.

Every combination of the ``--grid`` values is one replay (``pipeline.replay``: the job's own
updates, without Beam), run in parallel processes on every core. Each replay scores every
mini-batch before training on it (progressive validation). The stream is cut in event time into
an earlier *selection* slice, the first hourly buckets holding ``--select-fraction`` of the
examples, on which the settings are ranked, and the *later* slice after it, whose score for the
winner is an estimate that was not used to choose it.

    python -m pipeline.tune --input 'events/*.avro' --entity-field userId --timestamp-field timestamp \\
        --output tune-out/ --grid penalty=1,3,10 --grid forgetting-factor=0.8,0.98 [any job flag]

Writes ``tune.json`` (every setting and its scores) and ``tune.png`` (when matplotlib is there)
under ``--output``, prints the table sorted by selection log loss, and the job command line with
the winner's flags.
"""

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Dict, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from .options import LambdaLearnerOptions, UsageError, parse_options
from .replay import ReplayOptions, replay

TUNE_FILE, PLOT_FILE = "tune.json", "tune.png"


def parse_grid(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``["penalty=1,3", ...]`` -> ``[("penalty", ["1", "3"]), ...]``; ``UsageError`` for a bad spec."""
    known = {}
    probe = argparse.ArgumentParser(add_help=False)
    LambdaLearnerOptions._add_argparse_args(probe)
    ReplayOptions._add_argparse_args(probe)
    for action in probe._actions:
        for flag in action.option_strings:
            known[flag.lstrip("-")] = action
    grid, seen = [], set()
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-")
        if not sep or not name or not values.strip():
            raise UsageError(f"--grid {spec!r} is not NAME=V1,V2,... (e.g. --grid penalty=1,3,10).")
        if name not in known:
            raise UsageError(f"--grid {spec!r}: {name!r} is not a flag of the job (see python -m pipeline --help).")
        if known[name].nargs == 0:
            raise UsageError(f"--grid {spec!r}: --{name} is an on/off flag, not a setting with values.")
        if name in ("input", "output", "initial-models", "entity-field", "timestamp-field"):
            raise UsageError(f"--grid {spec!r}: --{name} names the data, not a setting to tune.")
        if name in seen:
            raise UsageError(f"--grid {spec!r}: --{name} is given twice; list all its values in one --grid.")
        seen.add(name)
        choices = [v.strip() for v in values.split(",")]
        if any(not v for v in choices):
            raise UsageError(f"--grid {spec!r} has an empty value.")
        grid.append((name, choices))
    if not grid:
        raise UsageError("give at least one --grid NAME=V1,V2,... to tune.")
    return grid


def settings_of(grid: List[Tuple[str, List[str]]]) -> List[Dict[str, str]]:
    """Every combination of the grid's values, in the grid's order."""
    names = [name for name, _ in grid]
    return [dict(zip(names, values)) for values in itertools.product(*(values for _, values in grid))]


def _flags(setting: Dict[str, str]) -> List[str]:
    return [x for name, value in setting.items() for x in (f"--{name}", value)]


def _score(task: Tuple[List[str], float]) -> Dict[str, Any]:
    """One replay (in a worker process): its scores on the selection and the later slice."""
    argv, fraction = task
    started = time.process_time()
    # One process per replay: tune already runs one replay per core.
    counts, validation = replay(parse_options(list(argv) + ["--processes", "1"]), write_outputs=False)
    counts_by_bucket = validation.counts()
    total = sum(counts_by_bucket.values())
    split, seen = None, 0
    for start in sorted(counts_by_bucket):
        if seen >= fraction * total:
            split = start
            break
        seen += counts_by_bucket[start]
    selection = validation.report_between(None, split)
    later = validation.report_between(split, None) if split is not None else None
    return {"selection": selection, "later": later, "split_ms": split, "cpu_seconds": time.process_time() - started,
            "updates": counts.get("updates", 0), "late_examples": counts.get("late_examples", 0)}


def tune(argv: Sequence[str], grid_specs: Sequence[str], fraction: float, processes: Optional[int] = None,
         log=print) -> Dict[str, Any]:
    """Replay every setting of the grid over the job's inputs (``argv``: the job's flags); return
    the results sorted by selection log loss, best first."""
    if not 0 < fraction < 1:
        raise UsageError(f"--select-fraction must be strictly between 0 and 1, got {fraction}.")
    grid = parse_grid(grid_specs)
    settings = settings_of(grid)
    base = list(argv)
    tasks = []
    for setting in settings:
        full = base + _flags(setting)
        try:
            parse_options(full)  # every setting's flags are checked before anything runs
        except UsageError as err:
            raise UsageError(f"grid setting {' '.join(_flags(setting))}: {err}") from None
        tasks.append((full, fraction))
    options = parse_options(base)
    output = options.view_as(LambdaLearnerOptions).output
    workers = processes or os.cpu_count() or 1
    log(f"Tuning {len(settings)} settings of {', '.join(name for name, _ in grid)} with {min(workers, len(tasks))} "
        f"processes; each is a replay of {options.view_as(LambdaLearnerOptions).input}.")
    results: List[Optional[Dict[str, Any]]] = [None] * len(settings)
    started = time.time()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_score, task): i for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            result = future.result()
            result["setting"] = settings[i]
            results[i] = result
            log(f"  [{done}/{len(settings)}] {' '.join(_flags(settings[i]))}: selection log loss "
                f"{result['selection']['log_loss_with_random_effects']:.4f} ({time.time() - started:.0f}s)")
    ranked = sorted(results, key=lambda r: (r["selection"]["log_loss_with_random_effects"], json.dumps(r["setting"])))
    report = {"grid": [{"name": n, "values": v} for n, v in grid], "select_fraction": fraction,
              "split_ms": ranked[0]["split_ms"], "results": ranked,
              "winner": ranked[0]["setting"], "job_flags": base}
    with FileSystems.create(FileSystems.join(output, TUNE_FILE)) as f:
        f.write(json.dumps(report, indent=2, sort_keys=True).encode("utf-8"))
    report["plot"] = _plot(report, output)
    return report


def _plot(report: Dict[str, Any], output: str) -> Optional[str]:
    """Selection vs later log loss of every setting, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(results) + 3), 4))
    labels = [" ".join(f"{k}={v}" for k, v in r["setting"].items()) for r in results]
    xs = range(len(results))
    ax.plot(xs, [r["selection"]["log_loss_with_random_effects"] for r in results], "o-", label="selection slice")
    if results[0]["later"] is not None:
        ax.plot(xs, [r["later"]["log_loss_with_random_effects"] for r in results], "s--", label="later slice")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("progressive log loss")
    ax.set_title("Settings ranked by the selection slice")
    ax.legend()
    fig.tight_layout()
    path = FileSystems.join(output, PLOT_FILE)
    with FileSystems.create(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def format_report(report: Dict[str, Any]) -> str:
    """The table, best first, and the job command with the winner's flags."""
    def fmt(v):
        return "   n/a" if v is None else f"{v:.4f}"

    width = max(len("setting"), *(len(" ".join(_flags(r["setting"]))) for r in report["results"])) + 2
    split = report["split_ms"]
    when = "the end" if split is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(split / 1000))
    lines = [f"Ranked by progressive log loss on the selection slice (events before {when}); "
             f"'later' is the slice after it, not used to rank.",
             f"  {'setting':<{width}}{'logloss sel':>12}{'AUC sel':>9}{'logloss later':>15}{'AUC later':>11}"]
    for r in report["results"]:
        later = r["later"] or {}
        lines.append(f"  {' '.join(_flags(r['setting'])):<{width}}{fmt(r['selection']['log_loss_with_random_effects']):>12}"
                     f"{fmt(r['selection']['auc_with_random_effects']):>9}"
                     f"{fmt(later.get('log_loss_with_random_effects')):>15}{fmt(later.get('auc_with_random_effects')):>11}")
    best = report["results"][0]
    offset = best["selection"]["log_loss_offset_only"]
    lines.append(f"  {'(offset only)':<{width}}{fmt(offset):>12}{fmt(best['selection']['auc_offset_only']):>9}"
                 f"{fmt((best['later'] or {}).get('log_loss_offset_only')):>15}"
                 f"{fmt((best['later'] or {}).get('auc_offset_only')):>11}")
    flags = [a for a in report["job_flags"]]
    lines.append("")
    lines.append("The job with the winner:")
    lines.append("  python -m pipeline " + " ".join(_quote(a) for a in _without_output(flags) + _flags(report["winner"])
                                                 + ["--output", "OUT"]))
    if report.get("plot"):
        lines.append(f"Plot: {report['plot']}")
    return "\n".join(lines)


def _without_output(argv: List[str]) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--output":
            skip = True
            continue
        if a.startswith("--output="):
            continue
        out.append(a)
    return out


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " *?[]$") else arg


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", add_help=False)
    parser.add_argument("--grid", action="append", default=[])
    parser.add_argument("--select-fraction", type=float, default=0.5)
    parser.add_argument("--processes", type=int)
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return 0
    try:
        args, job_argv = parser.parse_known_args(argv)
    except SystemExit:
        print("error: could not parse --grid/--select-fraction/--processes; see python -m pipeline.tune --help.",
              file=sys.stderr)
        return 2
    try:
        report = tune(job_argv, args.grid, args.select_fraction, args.processes,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
