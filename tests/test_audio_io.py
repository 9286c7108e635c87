import math

import pytest
import torch

from multidiff.audio.io import AudioDecodeError, load_audio, mix_channels, save_audio, spectrogram_sheet


def tone(freq=440.0, sr=16000, seconds=1.0, channels=2):
    t = torch.arange(int(sr * seconds)) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t))[None].repeat(channels, 1)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a", "opus"])
def test_load_every_format_resampled_and_mixed(tmp_path, ext):
    x = tone()
    path = save_audio(tmp_path / f"a.{ext}", x, 16000)
    wave, sr = load_audio(path, sample_rate=8000, channels=1)
    assert sr == 8000 and wave.shape[0] == 1 and wave.dtype == torch.float32
    assert abs(wave.shape[1] - 8000) <= 1200  # codec priming / padding
    assert float(wave.abs().max()) <= 1.0
    # the tone survives: its spectrum peaks at 440 Hz
    spec = torch.fft.rfft(wave[0, 1000:7000])
    peak_hz = float(spec.abs().argmax()) * 8000 / 6000
    assert abs(peak_hz - 440) < 5


def test_lossless_round_trip_is_exact_to_16_bits(tmp_path):
    x = tone(channels=1)
    wave, sr = load_audio(save_audio(tmp_path / "a.flac", x, 16000))
    assert sr == 16000 and wave.shape == x.shape
    assert float((wave - x).abs().max()) < 1 / 2**15 + 1e-6


def test_channel_mixing():
    stereo = torch.stack([torch.ones(10), -torch.ones(10)])
    assert torch.equal(mix_channels(stereo, 1), torch.zeros(1, 10))
    mono = torch.ones(1, 10)
    assert mix_channels(mono, 2).shape == (2, 10)
    with pytest.raises(ValueError, match="channels"):
        mix_channels(mono, 0)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        load_audio(bad)
    with pytest.raises(AudioDecodeError, match="nothere.flac"):
        load_audio(tmp_path / "nothere.flac")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty.mp3"):
        load_audio(empty)


def test_spectrogram_sheet_writes_png(tmp_path):
    path = spectrogram_sheet([tone(channels=1), tone(880, channels=1)], 16000, tmp_path / "s.png", titles=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
