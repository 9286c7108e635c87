"""Checkpoints: exact resume, atomic saves that survive a crash mid-write, keep-last-N."""
import json
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from multidiff.train import checkpoint as ckpt
from multidiff.train.testing import device_under_test, tiny_config
from multidiff.train.tracking import read_csv
from multidiff.train.trainer import Trainer

EXACT = device_under_test() == "cpu"
# a run that exercises warm-up, cosine decay, clipping, the EMA and class-label dropout
RUN = ("optimizer.schedule=cosine", "optimizer.warmup_samples=256", "optimizer.grad_clip=0.5",
       "data.params.conditional=true", "objective.cond_drop_prob=0.2", "trainer.checkpoint_every_samples=320")
STEPS = 16


def losses(csv):
    """The loss curve: exact text on the CPU, floats rounded to 5 digits on a GPU."""
    return [(int(r["samples_seen"]), r["loss"] if EXACT else float(f"{float(r['loss']):.5g}")) for r in read_csv(csv)]


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if EXACT:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def final_state(out_dir):
    folder = ckpt.resolve(out_dir)
    return {name: ckpt.read_module_state(folder / name) for name in ("model.safetensors", "ema.safetensors")}, folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result = Trainer(tiny_config(out, *RUN, steps=STEPS)).fit()
    assert result.status == "finished" and result.samples_seen == 64 * STEPS
    return out


def stop_at(trainer, step, how):
    """Interrupt ``trainer`` after ``step`` steps: like SIGTERM ("signal") or a crash ("crash")."""
    real = trainer.apply_update

    def apply_update(loss):
        applied = real(loss)
        if trainer.state.step == step:
            if how == "signal":
                trainer._stop_signal = signal.SIGTERM
            else:
                raise RuntimeError("simulated crash")
        return applied

    trainer.apply_update = apply_update


def test_resume_after_signal_is_bit_exact(uninterrupted, tmp_path):
    first = Trainer(tiny_config(tmp_path, *RUN, steps=STEPS))
    stop_at(first, 7, "signal")
    result = first.fit()
    assert result.status == "interrupted" and result.samples_seen == 7 * 64
    assert result.checkpoint.name == "ckpt-000000000448"

    second = Trainer(tiny_config(tmp_path, *RUN, "trainer.resume=auto", steps=STEPS))
    assert second.resumed_from == result.checkpoint and second.state.samples_seen == 448
    assert second.fit().status == "finished"

    assert losses(tmp_path / "losses.csv") == losses(uninterrupted / "losses.csv")  # every step, as text
    (a, folder_a), (b, folder_b) = final_state(uninterrupted), final_state(tmp_path)
    for name in a:
        assert_same_tensors(a[name], b[name])
    assert_same_tensors(load_file(folder_a / "optimizer.safetensors"), load_file(folder_b / "optimizer.safetensors"))
    state_a, state_b = (json.loads((f / "state.json").read_text())["train"] for f in (folder_a, folder_b))
    state_a.pop("elapsed_s"), state_b.pop("elapsed_s")
    assert state_a == state_b


def test_resume_after_crash_from_periodic_checkpoint(uninterrupted, tmp_path):
    first = Trainer(tiny_config(tmp_path, *RUN, steps=STEPS))
    stop_at(first, 8, "crash")  # the last save was at step 5 (320 samples)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit()
    assert ckpt.resolve(tmp_path).name == "ckpt-000000000320"
    assert len(read_csv(tmp_path / "losses.csv")) == 7  # the crash came before step 8 was logged
    second = Trainer(tiny_config(tmp_path, *RUN, f"trainer.resume={tmp_path / 'checkpoints' / 'latest'}", steps=STEPS))
    second.fit()
    # rows logged after the checkpoint were dropped and logged again identically
    assert losses(tmp_path / "losses.csv") == losses(uninterrupted / "losses.csv")
    (a, _), (b, _) = final_state(uninterrupted), final_state(tmp_path)
    assert_same_tensors(a["ema.safetensors"], b["ema.safetensors"])


@pytest.mark.parametrize("fail_at", ["optimizer.safetensors", "state.json"])
def test_crash_during_save_keeps_the_latest_checkpoint(tmp_path, monkeypatch, fail_at):
    trainer = Trainer(tiny_config(tmp_path, steps=4))
    trainer.fit()
    good = ckpt.resolve(tmp_path)
    assert good.name == "ckpt-000000000256"

    trainer.state.samples_seen += 64  # pretend one more step happened
    real_tensors, real_json = ckpt.write_tensors, ckpt.write_json

    def half_written(path, *args, **kwargs):
        if path.name == fail_at:  # leave a truncated file behind, as a kill mid-write would
            path.write_bytes(b"\x00" * 17)
            raise OSError("simulated kill during save")
        return (real_tensors if path.suffix == ".safetensors" else real_json)(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "write_tensors", half_written)
    monkeypatch.setattr(ckpt, "write_json", half_written)
    with pytest.raises(OSError, match="simulated kill"):
        trainer.save()
    monkeypatch.undo()

    root = tmp_path / "checkpoints"
    assert (root / ".tmp-ckpt-000000000320").is_dir()  # the debris stays aside
    assert ckpt.resolve(tmp_path) == good  # latest still points to a complete checkpoint
    resumed = Trainer(tiny_config(tmp_path, "trainer.resume=auto", steps=6))
    assert resumed.resumed_from == good and resumed.state.samples_seen == 256
    resumed.fit()
    assert ckpt.resolve(tmp_path).name == "ckpt-000000000384"
    assert not list(root.glob(".tmp-*"))  # the next save cleaned up


def test_keep_last_n_and_resolve(tmp_path):
    Trainer(tiny_config(tmp_path, "trainer.checkpoint_every_samples=64", "trainer.keep_checkpoints=2", steps=5)).fit()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["ckpt-000000000256", "ckpt-000000000320"]
    latest = tmp_path / "checkpoints" / "latest"
    assert latest.is_symlink() and ckpt.resolve(latest).name == names[-1]
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / names[0]):
        assert ckpt.resolve(path).name in names
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.resolve(tmp_path / "nothing")
    # no pickle anywhere: every file is JSON or safetensors
    for f in (tmp_path / "checkpoints" / names[-1]).iterdir():
        assert f.suffix in (".json", ".safetensors"), f


def test_nested_state_round_trip(tmp_path):
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0], "capturable": False, "x": None}]}
    ckpt.write_state(tmp_path, "opt", state)
    back = ckpt.read_state(tmp_path, "opt")
    assert back["param_groups"] == state["param_groups"]
    assert list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot store"):
        ckpt.write_state(tmp_path, "bad", {"f": lambda: 0})


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(json.loads(json.dumps(state)))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_copied_checkpoint_resumes_in_a_new_run(tmp_path):
    Trainer(tiny_config(tmp_path / "a", steps=3)).fit()
    src = ckpt.resolve(tmp_path / "a")
    shutil.copytree(src, tmp_path / "elsewhere")
    trainer = Trainer(tiny_config(tmp_path / "b", f"trainer.resume={tmp_path / 'elsewhere'}", steps=5))
    assert trainer.state.samples_seen == 192
    assert trainer.fit().samples_seen == 320
