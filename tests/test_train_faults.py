"""Fault injection: SIGKILL a checkpointing run at random moments, several times, then resume.

The resumed run must end bit-identical to an uninterrupted one (weights, EMA, optimizer, the
loss log), and at no moment may a folder that looks like a checkpoint be incomplete, or
``latest`` point at one (docs/reliability.md)."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from multidiff.train import checkpoint as ckpt
from multidiff.train.testing import tiny_overrides
from multidiff.train.tracking import read_csv

REPO = Path(__file__).resolve().parents[1]
STEPS = 48
# every step saves (and prunes), so kills land inside saves and deletions as often as between them
RUN = ("trainer.checkpoint_every_samples=64", "trainer.keep_checkpoints=2", "trainer.resume=auto",
       "optimizer.schedule=cosine", "optimizer.warmup_samples=256", "data.params.conditional=true")


def command(out):
    return [sys.executable, "-m", "multidiff.cli", "train", str(REPO / "recipes/toy/gmm.yaml"),
            *tiny_overrides(out, steps=STEPS), *RUN]


def environment():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def assert_no_incomplete_checkpoint(out):
    root = out / "checkpoints"
    for folder in root.iterdir() if root.is_dir() else ():
        if ckpt.NAME_RE.match(folder.name):
            assert not ckpt.missing_files(folder), f"{folder} looks like a checkpoint but lacks {ckpt.missing_files(folder)}"
    latest = root / ckpt.LATEST
    if latest.exists():
        assert not ckpt.missing_files(latest), f"latest -> {os.readlink(latest)} is incomplete"


def newest(out) -> int:
    found = ckpt.list_checkpoints(out / "checkpoints")
    return ckpt.position(found[-1]) if found else -1


def test_repeated_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = environment()
    full = tmp_path / "full"
    subprocess.run(command(full), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(5):
        before = newest(out)
        proc = subprocess.Popen(command(out), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while newest(out) <= before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)  # training has started: a new checkpoint appeared
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            proc.wait(timeout=60)
        assert_no_incomplete_checkpoint(out)
    assert kills >= 3  # most of the runs were killed before they finished
    subprocess.run(command(out), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    assert_no_incomplete_checkpoint(out)

    a, b = ckpt.resolve(full), ckpt.resolve(out)
    assert a.name == b.name == f"ckpt-{64 * STEPS:012d}"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (name, key)
    columns = ("step", "samples_seen", "loss", "lr", "grad_norm")
    rows = [[{k: r[k] for k in columns} for r in read_csv(d / "losses.csv")] for d in (full, out)]
    assert rows[0] == rows[1]  # every logged loss, as text
    assert not list((out / "checkpoints").glob(".tmp-*")) and not list((out / "checkpoints").glob(".trash-*"))


def test_a_half_deleted_checkpoint_is_not_a_checkpoint(tmp_path, capsys):
    """A folder that lost files (an outside deletion, an old interrupted prune) keeps its name but is
    skipped, with a note; an explicit path to it is refused by name; resuming uses the last complete one."""
    from multidiff.train.testing import tiny_config
    from multidiff.train.trainer import Trainer

    Trainer(tiny_config(tmp_path, "trainer.checkpoint_every_samples=64", "trainer.keep_checkpoints=3", steps=3)).fit()
    root = tmp_path / "checkpoints"
    newest_folder = root / "ckpt-000000000192"
    for name in ("optimizer.safetensors", "ema.safetensors", "rng-0.json", "model.safetensors"):
        (newest_folder / name).unlink()
    assert ckpt.resolve(tmp_path).name == "ckpt-000000000128"  # latest -> 192 is ignored: incomplete
    assert "ignoring incomplete checkpoint folder" in capsys.readouterr().err
    try:
        ckpt.resolve(newest_folder)
        raise AssertionError("an incomplete folder was accepted")
    except ckpt.CheckpointError as err:
        assert "model.safetensors" in str(err)
    resumed = Trainer(tiny_config(tmp_path, "trainer.resume=auto", steps=4))
    assert resumed.state.samples_seen == 128


def test_latest_lagging_a_newer_complete_checkpoint(tmp_path):
    """A kill between publishing a checkpoint and moving ``latest``: the newer complete checkpoint wins."""
    from multidiff.train.testing import tiny_config
    from multidiff.train.trainer import Trainer

    Trainer(tiny_config(tmp_path, "trainer.checkpoint_every_samples=64", steps=3)).fit()
    root = tmp_path / "checkpoints"
    (root / "latest").unlink()
    os.symlink("ckpt-000000000128", root / "latest")
    assert ckpt.resolve(tmp_path).name == "ckpt-000000000192"
    assert Trainer(tiny_config(tmp_path, "trainer.resume=auto", steps=4)).state.samples_seen == 192


def test_rollback_replaces_later_checkpoints_instead_of_reporting_them(tmp_path, capsys):
    """Roll back to an earlier checkpoint and train again with another learning rate: the checkpoint
    that run reports writing holds what it computed (its lr, its weights); the earlier run's later
    checkpoints are moved aside, not deleted and not mixed in."""
    import hashlib
    import json

    from multidiff.cli import main

    run = tmp_path / "run"
    assert main(["train", str(REPO / "recipes/toy/gmm.yaml"), *tiny_overrides(run, steps=4),
                 "trainer.checkpoint_every_samples=64", "trainer.keep_checkpoints=5"]) == 0
    root = run / "checkpoints"

    def digest(folder):
        return hashlib.sha1((folder / "model.safetensors").read_bytes()).hexdigest()

    old = digest(root / "ckpt-000000000256")
    capsys.readouterr()
    assert main(["train", str(root / "ckpt-000000000128"), f"trainer.out_dir={run}", "optimizer.lr=1e-4"]) == 0
    printed = capsys.readouterr().out
    assert "optimizer.lr 0.003 (now 0.0001)" in printed
    assert "moved 2 checkpoint(s) of an earlier run" in printed
    assert f"wrote checkpoint: {root / 'ckpt-000000000256'}" in printed
    new = root / "ckpt-000000000256"
    assert digest(new) != old
    assert json.loads((new / "config.json").read_text())["optimizer"]["lr"] == 1e-4
    aside = list(root.glob("superseded-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["ckpt-000000000192", "ckpt-000000000256"]
    assert digest(aside[0] / "ckpt-000000000256") == old


def test_a_longer_run_says_how_its_schedule_changes(tmp_path, capsys):
    """Resuming with a longer duration moves the cosine schedule's horizon: printed, with the lr jump."""
    from multidiff.cli import main

    run = tmp_path / "run"
    assert main(["train", str(REPO / "recipes/toy/gmm.yaml"), *tiny_overrides(run, steps=4),
                 "optimizer.schedule=cosine"]) == 0
    capsys.readouterr()
    assert main(["train", str(run / "checkpoints" / "latest"), "trainer.duration_samples=512"]) == 0
    printed = capsys.readouterr().out
    assert "cosine learning-rate schedule now ends at 512 samples instead of 256" in printed
    assert "the lr moves from" in printed


def test_a_preset_value_written_out_resumes_as_the_preset_default():
    """A checkpoint whose config spells out the preset's value (dropout 0.0) resumes under a config that
    leaves it to the preset (None); a real change of the built model is still refused."""
    from multidiff.train.trainer import resume_conflicts

    saved = {"model": {"name": "m", "params": {"preset": "small", "dropout": 0.0, "depth": 4}}}
    current = {"model": {"name": "m", "params": {"preset": "small", "dropout": None, "depth": None}}}
    built = {"dropout": 0.0, "depth": 4}
    assert resume_conflicts(saved, current, built) == []
    assert resume_conflicts(saved, current, {"dropout": 0.1, "depth": 4}) == ["model.params.dropout 0.0 (now 0.1)"]
    assert resume_conflicts(saved, current) != []  # without the built model nothing is assumed
