"""SIGTERM during ``multidiff train`` saves a checkpoint and exits 0; the run then resumes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from multidiff.train import checkpoint as ckpt
from multidiff.train.testing import tiny_config, tiny_overrides
from multidiff.train.tracking import read_csv
from multidiff.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, steps=1_000_000)  # far longer than the test waits
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "multidiff.cli", "train", str(REPO / "recipes/toy/gmm.yaml"),
                             *overrides], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        csv = out / "losses.csv"
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until some steps are logged
            if csv.exists() and len(read_csv(csv)) >= 3:
                break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        else:
            raise AssertionError("training did not start in time")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "stopped by signal SIGTERM" in output and "wrote checkpoint:" in output, output

    folder = ckpt.resolve(out)
    saved = int(folder.name.split("-")[1])
    assert saved >= 3 * 64 and saved % 64 == 0
    trainer = Trainer(tiny_config(out, "trainer.resume=auto", f"trainer.duration_samples={saved + 3 * 64}"))
    assert trainer.resumed_from == folder and trainer.state.samples_seen == saved
    result = trainer.fit()
    assert result.status == "finished" and result.samples_seen == saved + 3 * 64
    rows = read_csv(out / "losses.csv")
    assert [int(r["samples_seen"]) for r in rows] == list(range(64, saved + 3 * 64 + 1, 64))
