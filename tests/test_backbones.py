"""eval/backbones.py: a row stopped part-way resumes from its last checkpoint, and its wall time
counts the earlier attempt up to that checkpoint."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from eval import backbones


def test_a_killed_row_resumes_from_last_ckpt_and_adds_its_time(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd, stdout, stderr):
        calls.append(cmd)
        run = Path(next(c for c in cmd if c.startswith("paths.output_dir=")).split("=", 1)[1])
        if len(calls) == 1:  # the first attempt saves a checkpoint, then is killed
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
            t = json.loads((run / "attempts.json").read_text())[0]["start"]
            os.utime(run / "checkpoints" / "last.ckpt", (t + 600, t + 600))
            return subprocess.CompletedProcess(cmd, -9)
        (run / "model").mkdir()
        (run / "model" / "config.json").write_text("{}")
        (run / "summary.json").write_text(json.dumps({"wall_seconds": 100.0}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(backbones.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="exited -9"):
        backbones.train_row("gemma2", ["predictor=gemma"], tmp_path, seed=0)
    assert not any(c.startswith("ckpt_path=") for c in calls[0])
    out = backbones.train_row("gemma2", ["predictor=gemma"], tmp_path, seed=0)
    assert f"ckpt_path={tmp_path / 'gemma2' / 'checkpoints' / 'last.ckpt'}" in calls[1]
    # 600 s of the killed attempt (to its checkpoint) + 100 s of the one that finished
    assert out["wall_seconds"] == pytest.approx(700.0, abs=1)
    assert out["attempts"] == 2 and out["wall_seconds_this_attempt"] == 100.0
    # a finished row is not trained again and reports the same figures
    assert backbones.train_row("gemma2", ["predictor=gemma"], tmp_path, seed=0) == out
    assert len(calls) == 2
