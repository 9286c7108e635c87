"""The audio demo's pip-only data and the demo itself at a few training steps; completion helpers."""
import hashlib
import json

import pytest
import torch

from multidiff.audio.builders import SYNTH_TIMBRES, build_synth_notes, synth_note
from multidiff.audio.complete import completion_mask, copy_baseline
from multidiff.audio.metrics import estimate_pitch, midi_to_hz
from multidiff.manifest import read_manifest


def test_synth_note_has_the_requested_pitch_and_harmonics():
    sr = 16000
    for timbre in SYNTH_TIMBRES:
        for pitch in (48, 69, 83):
            wave = torch.from_numpy(synth_note(pitch, sr, 8000, timbre, note_seconds=0.4))
            f0 = estimate_pitch(wave, sr)
            assert abs(1200 * torch.log2(torch.tensor(f0 / midi_to_hz(pitch)))) < 10, (timbre, pitch, f0)
            assert wave.abs().max() == pytest.approx(0.8, abs=1e-3)
    # square: odd harmonics only; saw: every harmonic
    spectrum = torch.fft.rfft(torch.from_numpy(synth_note(57, sr, 16000, "square", note_seconds=0.9))).abs()
    f0_bin = 220  # 220 Hz at 1 Hz resolution
    assert spectrum[3 * f0_bin] > 10 * spectrum[2 * f0_bin]
    saw = torch.fft.rfft(torch.from_numpy(synth_note(57, sr, 16000, "saw", note_seconds=0.9))).abs()
    assert saw[2 * f0_bin] > 0.3 * saw[f0_bin]


def test_build_synth_notes_is_deterministic_and_labelled(tmp_path):
    digests = []
    for name in ("a", "b"):
        manifest = build_synth_notes(tmp_path / name, pitches=range(60, 63), timbres=("sine", "saw"), variants=2,
                                     progress=False)
        rows = read_manifest(manifest)
        digests.append(hashlib.sha256(b"".join((tmp_path / name / r["path"]).read_bytes() for r in rows)).hexdigest())
    assert digests[0] == digests[1]
    assert len(rows) == 3 * 2 * 2
    assert sorted({int(r["label"]) for r in rows}) == list(range(6))
    for r in rows:  # label = pitch index * timbres + timbre index
        assert int(r["label"]) == (int(r["pitch"]) - 60) * 2 + ("sine", "saw").index(r["timbre"])
    with pytest.raises(ValueError, match="unknown timbres"):
        build_synth_notes(tmp_path / "c", timbres=("kazoo",), progress=False)


def test_audio_demo_writes_wavs_sheet_and_pitch_metrics(tmp_path, capsys):
    from multidiff.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--part", "audio", "--out", str(out), "--audio-train-samples", "64", "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train_samples"] == 64
    assert len(list((out / "samples").glob("*.wav"))) == 36
    assert (out / "samples" / "spectrograms.png").stat().st_size > 50_000
    m = summary["metrics"]
    assert m["n"] == 36 and m["pitch_n"] == 36 and 0.0 <= m["pitch_accuracy"] <= 1.0
    assert summary["labels"]["4"] == "square midi 61"
    assert str(out / "samples") in capsys.readouterr().out


def test_completion_masks_and_copy_baseline():
    mask, region = completion_mask(100, "continuation", known=0.3)
    assert region == slice(30, 100) and mask.sum() == 30 and mask[0, :30].all()
    mask, region = completion_mask(100, "inpainting", gap=0.2)
    assert region == slice(40, 60) and mask.sum() == 80 and not mask[0, 40:60].any()
    with pytest.raises(ValueError, match="--gap"):
        completion_mask(100, "inpainting", gap=1.5)
    x = torch.arange(100.0)[None, None]
    filled = copy_baseline(x * mask, region)
    torch.testing.assert_close(filled[..., 40:60], x[..., 20:40])
    torch.testing.assert_close(filled[..., :40], x[..., :40])


def test_intonation_known_answers():
    from multidiff.audio.metrics import intonation

    sr = 16000
    in_tune = [torch.from_numpy(synth_note(p, sr, 16000, "saw", note_seconds=0.9)) for p in (60, 64, 67)]
    detuned = [torch.from_numpy(synth_note(p + 0.3, sr, 16000, "saw", note_seconds=0.9)) for p in (60, 64, 67)]
    noise = [torch.randn(16000, generator=torch.Generator().manual_seed(k)) * 0.3 for k in range(3)]
    a, b, c = intonation(in_tune, sr), intonation(detuned, sr), intonation(noise, sr)
    assert a["voiced_fraction"] > 0.7 and a["in_tune_cents"] < 5 and a["distinct_semitones"] == 1
    assert 25 < b["in_tune_cents"] < 35  # 30 cents sharp
    assert a["in_tune_fraction"] > 0.9 and b["in_tune_fraction"] < 0.1  # 30 cents sharp: no frame within 5
    assert c["in_tune_fraction"] < 0.35  # noise: about 10 / 50 of the frames by chance (pYIN's 10-cent grid)
    assert c["in_tune_cents"] > 20 and c["distinct_semitones"] == 0  # noise: chance tuning, nothing held
    # a two-note melody holds two semitones
    two = torch.cat([in_tune[0][:8000], in_tune[2][:8000]])
    assert intonation([two], sr)["distinct_semitones"] == 2
