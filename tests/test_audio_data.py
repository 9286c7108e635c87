import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from multidiff.audio.builders import DIGITS, build_notes, build_spoken_digits, center_clip, digit_caption
from multidiff.audio.data import AudioDataset
from multidiff.audio.io import save_audio

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="Debian espeak-ng not installed")


def tone(freq, seconds, sr=16000):
    t = torch.arange(int(sr * seconds)) / sr
    return (0.3 * torch.sin(2 * math.pi * freq * t))[None]


@pytest.fixture
def folder(tmp_path):
    for k, (cls, ext) in enumerate([("a", "wav"), ("a", "flac"), ("b", "mp3"), ("b", "ogg")]):
        save_audio(tmp_path / cls / f"{k}.{ext}", tone(200 + 100 * k, 0.5 + 0.25 * k), 16000)
    return tmp_path


def test_folder_dataset_labels_crop_pad_and_mask(folder):
    ds = AudioDataset(folder, sample_rate=8000, length=4000, seed=1)
    assert len(ds) == 4 and ds.num_classes == 2 and sorted(ds.labels) == [0, 0, 1, 1]
    for i in range(4):
        item = ds[i]
        assert item["x"].shape == (1, 4000) and item["loss_mask"].shape == (1, 4000)
    # the 0.5 s file at 8 kHz has exactly 4000 samples; longer ones are cropped (mask all ones)
    assert all(float(ds[i]["loss_mask"].sum()) == 4000 for i in range(4))
    short = AudioDataset(folder, sample_rate=8000, length=12000)
    item = short[0]  # 0.5 s = 4000 real samples, padded to 12000
    assert float(item["loss_mask"].sum()) == 4000 and float(item["x"][0, 4000:].abs().max()) == 0


def test_items_are_deterministic_per_index_and_epoch(folder):
    ds = AudioDataset(folder, sample_rate=8000, length=1000, seed=3, polarity_flip=0.5)
    a, b = ds[3]["x"], ds[3]["x"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    crops = {tuple(ds[3]["x"][0, :5].tolist()) for _ in range(2)}
    assert len(crops) == 1


def test_manifest_csv_and_jsonl_and_bad_files_are_skipped_and_counted(folder, tmp_path):
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows = [{"path": "a/0.wav", "label": 3, "text": "low tone"}, {"path": "broken.wav", "label": 1, "text": "x"},
            {"path": "missing.flac", "label": 1, "text": "y"}, {"path": "b/2.mp3", "label": 2, "text": "high"}]
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    ds = AudioDataset(manifest, length=8000)
    with pytest.warns(UserWarning) as record:
        item = ds[1]  # broken and missing -> skipped; the next readable file is used
    assert item["label"] == 2 and item["text"] == "high"
    messages = " ".join(str(w.message) for w in record)
    assert "broken.wav" in messages and "missing.flac" in messages
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.bad_files) == ["broken.wav", "missing.flac"]
    assert ds[2]["label"] == 2  # known-bad files are not retried
    assert ds[0]["label"] == 3 and ds[0]["text"] == "low tone"


def test_cache_avoids_decoding_again(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = AudioDataset(folder, length=4000, cache_dir=cache)
    first = ds[0]["x"]
    assert len(list(cache.glob("*.npy"))) == 1
    import multidiff.audio.data as data_module

    def fail(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_module, "load_audio", fail)
    assert torch.equal(ds[0]["x"], first)


def test_rms_normalisation_and_errors(folder):
    ds = AudioDataset(folder, length=4000, normalize="rms", target_rms=0.05)
    assert abs(float(ds[0]["x"].pow(2).mean().sqrt()) - 0.05) < 1e-3
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AudioDataset(folder / "nowhere")
    with pytest.raises(ValueError, match="normalize"):
        AudioDataset(folder, normalize="loud")


def test_center_clip():
    x = torch.arange(10.0)[None]
    assert center_clip(x, 4).tolist() == [[3.0, 4.0, 5.0, 6.0]]
    assert center_clip(x, 14)[0, 2:12].tolist() == x[0].tolist()


@needs_espeak
def test_spoken_digits_builder_is_deterministic_and_splits_by_voice(tmp_path):
    kw = dict(accents=("en", "en-us"), variants=["f3", "m3", "klatt", "Alex", "steph", "john"], progress=False,
              test_fraction=0.4, seed=0)
    m1 = build_spoken_digits(tmp_path / "a", **kw)
    m2 = build_spoken_digits(tmp_path / "b", **kw)
    assert m1.read_text() == m2.read_text()
    ds = AudioDataset(m1, length=16000, random_crop=False)
    assert len(ds) == 2 * 6 * 10 and ds.num_classes == 10
    rows = ds.rows
    train_voices = {r["variant"] for r in rows if r["split"] == "train"}
    test_voices = {r["variant"] for r in rows if r["split"] == "test"}
    assert train_voices and test_voices and not (train_voices & test_voices)
    assert {r["word"] for r in rows} == set(DIGITS)
    for r in rows:  # captions say what was synthesised
        assert r["text"] == digit_caption(r["word"], r["accent"], int(r["speed"]), int(r["espeak_pitch"]))
        assert r["text"].startswith(f"{r['word']}, ") and r["text"].endswith(f"{r['accent']} accent")
    item = ds[0]
    assert item["x"].shape == (1, 16000) and 0.5 < float(item["x"].abs().max()) <= 0.91
    names = [Path(r["path"]).relative_to(m1.parent) for r in rows]  # the manifest's paths are made absolute
    differ = [str(n) for n in names if (m1.parent / n).read_bytes() != (m2.parent / n).read_bytes()]
    assert not differ, f"the two builds wrote different audio for {differ}"
    torch.testing.assert_close(item["x"], AudioDataset(m2, length=16000, random_crop=False)[0]["x"], rtol=0, atol=1e-6)


def test_notes_builder_renders_the_requested_pitch(tmp_path):
    from multidiff.audio.metrics import estimate_pitch, midi_to_hz

    manifest = build_notes(tmp_path, pitches=[57, 69], programs=(0, 40), velocities=(100,), progress=False)
    ds = AudioDataset(manifest, length=16000, random_crop=False)
    assert len(ds) == 4
    assert sorted(r["text"] for r in ds.rows) == ["piano playing A3, loud", "piano playing A4, loud",
                                                  "violin playing A3, loud", "violin playing A4, loud"]
    for row, k in zip(ds.rows, range(4)):
        f0 = estimate_pitch(ds[k]["x"], 16000)
        assert abs(1200 * math.log2(f0 / midi_to_hz(int(row["pitch"])))) < 50


def test_every_default_notes_instrument_sounds_at_its_written_pitch(tmp_path):
    """The notes set's labels are MIDI pitches, so each default program must sound at its note: the
    soundfont's church organ (19), the set's organ before, sounded an octave low on 54 of 72 notes and
    capped pitch accuracy on the real notes at 0.875."""
    import inspect

    from multidiff.audio.metrics import estimate_pitch, midi_to_hz

    programs = inspect.signature(build_notes).parameters["programs"].default
    assert 19 not in programs
    manifest = build_notes(tmp_path, pitches=[50, 76], programs=programs, velocities=(100,), progress=False)
    ds = AudioDataset(manifest, length=16000, random_crop=False)
    assert len(ds) == 2 * len(programs)
    for k, row in enumerate(ds.rows):
        cents = 1200 * math.log2(estimate_pitch(ds[k]["x"], 16000) / midi_to_hz(int(row["pitch"])))
        assert abs(cents) < 50, f"program {row['program']} ({row['instrument']}) at MIDI {row['pitch']}: {cents:.0f} cents"
