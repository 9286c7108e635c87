"""Two CPU processes under ``accelerate launch`` compute the gradients of one process with the
same global batch, and train to the same weights.

``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.x (its
multi-CPU path needs MPI), so the test launches through torchrun with ``--multi_gpu`` and no
visible GPU: two processes on the CPU talking over gloo.
Run as a script (``--worker OUT``) this file is the worker.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

STEPS = 3
EXTRA = ("trainer.grad_accum=2", "trainer.device=cpu", "data.params.conditional=true", "objective.cond_drop_prob=0.3")


def worker(out: Path) -> None:
    """One gradient computation and a short training run; rank 0 writes what it saw."""
    from multidiff.train.testing import tiny_config
    from multidiff.train.trainer import Trainer

    trainer = Trainer(tiny_config(out / "run", *EXTRA, batch=16, steps=STEPS))
    loss = trainer.forward_backward(next(trainer.batches()))
    grads = {f"grad.{n}": p.grad.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.fit()
    weights = {f"weight.{n}": p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
    weights.update({f"ema.{n}": p.detach().clone() for n, p in trainer.ema.module.named_parameters()})
    if trainer.is_main:
        save_file({**grads, **weights, "loss": torch.tensor([loss], dtype=torch.float64),
                   "world": torch.tensor([trainer.world])}, str(out / "result.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ACCELERATE_DISABLE_RICH="1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes talking over gloo, also on a GPU machine
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           __file__, "--worker", str(tmp_path / "two")]
    # the reference: the same worker as one plain process (a subprocess too, so this test process's
    # accelerate state, perhaps set up for CUDA by other tests, does not matter)
    ref = [sys.executable, __file__, "--worker", str(tmp_path / "one")]
    procs = [subprocess.Popen(c, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in (cmd, ref)]
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-5000:]
    two = load_file(tmp_path / "two" / "result.safetensors")
    assert int(two["world"]) == 2
    one = load_file(tmp_path / "one" / "result.safetensors")
    assert int(one["world"]) == 1
    assert float(one["loss"]) == pytest.approx(float(two["loss"]), rel=1e-6)
    grads = [k for k in one if k.startswith("grad.")]
    assert grads
    for k in grads:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    for k in one:
        if k.startswith(("weight.", "ema.")):
            torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    # both wrote the same loss curve
    one_csv = (tmp_path / "one" / "run" / "losses.csv").read_text().splitlines()
    two_csv = (tmp_path / "two" / "run" / "losses.csv").read_text().splitlines()
    assert len(one_csv) == len(two_csv) == STEPS + 1
    for a, b in zip(one_csv[1:], two_csv[1:]):
        assert float(a.split(",")[2]) == pytest.approx(float(b.split(",")[2]), rel=1e-5)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
