"""CUDA-only trainer checks: bf16 / fp16 mixed precision and torch.compile, each in a fresh process
(accelerate's state cannot change precision inside one process). Run with MULTIDIFF_TEST_DEVICE=cuda."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multidiff.train import checkpoint as ckpt
from multidiff.train.testing import device_under_test, tiny_overrides
from multidiff.train.tracking import read_csv

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(device_under_test() != "cuda", reason="set MULTIDIFF_TEST_DEVICE=cuda on a GPU machine")]


@pytest.mark.parametrize("extra", [
    ["trainer.mixed_precision=bf16", "model.gradient_checkpointing=true"],
    ["trainer.mixed_precision=fp16", "trainer.grad_accum=2"],
    ["trainer.compile=true"],
], ids=["bf16-checkpointing", "fp16-accumulation", "compile"])
def test_cuda_variants_train(tmp_path, extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "multidiff.cli", "train", str(REPO / "recipes/toy/gmm.yaml"),
           *tiny_overrides(tmp_path, steps=10), *extra]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on cuda" in proc.stdout
    rows = read_csv(tmp_path / "losses.csv")
    assert len(rows) >= 8 and all(float(r["loss"]) < 10 for r in rows)
    assert ckpt.resolve(tmp_path).name == "ckpt-000000000640"
