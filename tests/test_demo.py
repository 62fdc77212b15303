"""``make demo`` end to end at a small size, through the demo's own code path."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_reports_plots_and_random_effects_beat_offset_only(tmp_path):
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / "stale-file-from-an-earlier-run").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", "--size", "0.1", "--output-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Cleaning" in proc.stdout and not (out / "stale-file-from-an-earlier-run").exists()
    assert "progress:" in proc.stderr
    for text in ("Progressive validation", "dead letters", "correlation", "before -> after", "Plot of progressive"):
        assert text in proc.stdout, text
    png = out / "progressive-logloss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "job" / "summary.json").read_text())
    assert summary["streaming"] is True
    assert summary["dead_letters"] > 0 and summary["examples_trained"] == summary["examples"]
    overall = summary["progressive_validation"]["overall"]
    assert overall["log_loss_with_random_effects"] < overall["log_loss_offset_only"]
    assert overall["auc_with_random_effects"] > overall["auc_offset_only"]
    assert (out / "job" / "random-effect" / "per-user" / "coefficients" / "part-00000.avro").exists()
