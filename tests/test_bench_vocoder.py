"""benchmarks/vocoder.py on a tiny vocoder: its conclusion fields follow from the scores it wrote."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from multidiff.audio.io import save_audio
from multidiff.cli import main
from multidiff.manifest import write_manifest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("pesq")


def voiced(seconds: float, f0: float, seed: int, sample_rate: int = 16000) -> torch.Tensor:
    """A speech-like clip PESQ will score: harmonics of a gliding pitch under a syllable-rate envelope."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    pitch = f0 * (1 + 0.15 * torch.sin(2 * math.pi * 1.5 * t + float(torch.rand(1, generator=g)) * 6))
    cycles = torch.cumsum(pitch, 0) / sample_rate
    wave = sum(torch.sin(2 * math.pi * h * cycles) / h ** 1.2 for h in range(1, 16))
    envelope = torch.sin(math.pi * 3 * t).abs() ** 2 * (t > 0.1) * (t < seconds - 0.1)
    return 0.2 * wave * envelope


@pytest.fixture(scope="module")
def speech_like_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("voiced")
    rows = []
    for k in range(12):
        label = k % 2
        save_audio(root / f"{k}.wav", voiced(1.0, 110.0 if label == 0 else 210.0, k)[None], 16000)
        rows.append({"path": f"{k}.wav", "label": label, "split": "train" if k < 8 else "test"})
    return write_manifest(root / "manifest.csv", rows)


def test_vocoder_benchmark_conclusions_follow_from_its_scores(speech_like_manifest, tmp_path):
    from multidiff.train.testing import device_under_test

    run = tmp_path / "vocoder"
    assert main(["train", str(REPO / "recipes/audio/mel_vocoder.yaml"), f"data.path={speech_like_manifest}",
                 f"trainer.device={device_under_test()}", "trainer.tracker=none", "trainer.progress=false",
                 "trainer.resume=null", "trainer.preview_every_samples=0", "model.params.dim=32",
                 "model.params.hidden=64", "model.params.layers=2", "model.params.phase_init=pghi",
                 "model.params.phase_iterations=4", "model.params.silence_gate=true", "data.params.length=4096", "optimizer.warmup_samples=0",
                 "trainer.batch_size=4", "trainer.duration_samples=32", "trainer.checkpoint_every_samples=32",
                 f"trainer.out_dir={run}"]) == 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import vocoder as bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out, records = tmp_path / "result", tmp_path / "records"
    ckpt = str(run / "checkpoints" / "latest")
    assert bench.main([ckpt, ckpt, "--manifest", str(speech_like_manifest), "--num", "4", "--out", str(out),
                       "--result-dir", str(records), "--samples", str(tmp_path / "listen"), "--sample-count", "2"]) == 0
    assert sorted(p.relative_to(tmp_path / "listen").as_posix() for p in (tmp_path / "listen").rglob("*.*")) == [
        "griffin-lim/clip0000.wav", "griffin-lim/clip0001.wav", "real/clip0000.wav", "real/clip0001.wav",
        "spectrograms.png", "vocoder/clip0000.wav", "vocoder/clip0001.wav"]
    r = json.loads(out.with_suffix(".json").read_text())
    gl, pghi, runs = r["results"]["griffin_lim"], r["results"]["griffin_lim_pghi"], r["results"]["vocoder"]
    assert r["clips"] == 4 and all(s["pesq_scored"] == 4 for s in (gl, pghi, *runs))
    assert all(s["phase_init"] == "pghi" and s["phase_iterations"] == 4 for s in runs)
    reductions = [1 - s["mr_stft"] / gl["mr_stft"] for s in runs]
    gains = [s["pesq_wb"] - gl["pesq_wb"] for s in runs]
    assert r["summary"]["mr_stft_reduction"]["values"] == pytest.approx(reductions)
    assert r["summary"]["pesq_gain"]["mean"] == pytest.approx(sum(gains) / len(gains))
    assert r["targets"]["mr_stft_reduction >= 0.30"] == (sum(reductions) / len(reductions) >= 0.30)
    assert r["targets"]["pesq_gain >= 0.5"] == (sum(gains) / len(gains) >= 0.5)
    assert "Griffin-Lim started from PGHI" in out.with_suffix(".md").read_text()
    seed_record = json.loads((records / "test-seed0.json").read_text())
    assert seed_record["decoding"] == {"phase_iterations": 4, "phase_init": "pghi", "silence_gate": True}
    assert seed_record["metrics"]["pesq_gain"] == pytest.approx(gains[0])
    pghi_record = json.loads((records / "test-griffin-lim-pghi.json").read_text())
    assert pghi_record["metrics"]["mr_stft_reduction"] == pytest.approx(1 - pghi["mr_stft"] / gl["mr_stft"])
