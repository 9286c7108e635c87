"""Trackers by name: previews logged as media (wandb offline, TensorBoard) and the loss curve PNG."""
from __future__ import annotations

import math

import pytest
import torch

from multidiff.audio.io import save_audio
from multidiff.manifest import write_manifest
from multidiff.train import Trainer, load_config
from multidiff.train.tracking import write_loss_curve

pytestmark = pytest.mark.usefixtures("single_thread")


def _tones(root):
    rows = []
    for k in range(6):
        t = torch.arange(256) / 8000
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * (300 + 400 * (k % 2)) * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": k % 2, "split": "train"})
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def _run(tmp_path, tracker):
    manifest = _tones(tmp_path)
    config = load_config(None, [
        f"trainer.out_dir={tmp_path / 'run'}", "trainer.device=cpu", "trainer.batch_size=4", "trainer.duration_samples=8",
        f"trainer.tracker={tracker}", "trainer.progress=false", "trainer.cpu_threads=1", "trainer.log_every_samples=4",
        "trainer.preview_every_samples=8", "trainer.preview_samples=2", "model.name=audio_unet1d",
        "model.params.preset=tiny", "model.params.channels=[8, 16]", "model.params.factors=[4]",
        "model.params.attention_heads=2", "model.params.emb_dim=32", "data.name=audio", f"data.path={manifest}",
        "data.params.sample_rate=8000", "data.params.length=256", "sampling.steps=2"])
    result = Trainer(config).fit()
    assert result.previews, "the run wrote no preview"
    return tmp_path / "run", result


def test_wandb_offline_run_logs_previews_as_media(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the trainer chooses offline itself
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, result = _run(tmp_path, "wandb")
    media = list((run / "wandb").glob("offline-run-*/files/media/**/*.*"))
    kinds = {p.parent.parent.name for p in media}
    assert {"images", "audio"} <= kinds, media  # the spectrogram sheet and the WAVs
    wavs = [p for p in result.previews if p.suffix == ".wav"]
    assert len([p for p in media if p.suffix == ".wav"]) == len(wavs) == 2
    assert (run / "losses.png").is_file()


def test_tensorboard_run_logs_pictures_and_sounds(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = _run(tmp_path, "tensorboard")
    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent),
                              size_guidance={"images": 0, "audio": 0})
    events.Reload()
    tags = events.Tags()
    assert any(t.startswith("preview/") for t in tags["images"]), tags
    assert len([t for t in tags["audio"] if t.startswith("preview/")]) == 2, tags
    assert "loss" in tags["scalars"]


def test_loss_curve_png_from_the_csv(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_text("step,samples_seen,loss\n1,16,2.0\n2,32,nan\n3,48,0.5\n")
    png = write_loss_curve(path, tmp_path / "losses.png")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (600, 350)
    (tmp_path / "empty.csv").write_text("step,samples_seen,loss\n")
    assert write_loss_curve(tmp_path / "empty.csv", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
