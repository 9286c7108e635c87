"""Audio reading and writing, and spectrogram sheets.

``load_audio`` reads wav / flac / ogg through soundfile and everything soundfile cannot
(mp3, m4a, opus, ...) through PyAV, then resamples (torchaudio) and down/up-mixes on
request. Failures raise ``AudioDecodeError`` naming the file.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".aiff", ".aif", ".webm")


class AudioDecodeError(DataError):
    """A file could not be decoded as audio; the message names the file and the cause."""


def check_wav_payload(path, data: bytes | None = None) -> None:
    """AudioDecodeError when a RIFF/WAVE file's data chunk is shorter than its header declares (a
    copy or download cut short): libsndfile would read the part that is there without a word.
    ``data``: the file's bytes when they are already read (a shard member)."""
    import io
    import struct

    size = os.path.getsize(path) if data is None else len(data)
    with (open(path, "rb") if data is None else io.BytesIO(data)) as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        offset = 12
        for _ in range(64):  # a WAV has a handful of chunks before its data
            f.seek(offset)
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            name, declared = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                available = size - offset - 8
                if declared not in (0, 0xFFFFFFFF) and declared > available:  # 0 / ~0: streamed, length unknown
                    raise AudioDecodeError(f"{path}: truncated WAV: the header declares {declared} bytes of audio, "
                                           f"the file holds {max(available, 0)}")
                return
            offset += 8 + declared + (declared & 1)


def _read_soundfile(path):
    import soundfile as sf

    data, sr = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def _read_pyav(path):
    import av

    with av.open(path) as container:  # a path or a file object
        streams = container.streams.audio
        if not streams:
            raise AudioDecodeError(f"{path}: no audio stream")
        stream = streams[0]
        chunks, sr = [], None
        resampler = av.AudioResampler(format="fltp")
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                sr = out.sample_rate
                chunks.append(out.to_ndarray())  # (channels, samples) planar float
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks or sr is None:
        raise AudioDecodeError(f"{path}: the audio stream holds no samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), int(sr)


def load_audio(path, sample_rate: int | None = None, channels: int | None = None):
    """Read an audio file -> (waveform (channels, samples) float32 in [-1, 1], sample_rate).

    path: a file, or a shard member (multidiff.shards.Member).
    sample_rate: resample to this rate (torchaudio's band-limited sinc).
    channels: 1 averages to mono; 2 duplicates mono or keeps the first two channels.
    """
    from ..shards import Member

    data = None
    if isinstance(path, Member):
        try:
            data, ext, path = path.read(), path.ext, path.name
        except OSError as err:
            raise AudioDecodeError(str(err)) from None
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise AudioDecodeError(f"{path}: no such file")
        ext = os.path.splitext(path)[1].lower()
    if ext in (".wav", ".wave"):
        check_wav_payload(path, data)

    def opened():  # each decoder gets its own file object over the bytes
        if data is None:
            return path
        import io

        f = io.BytesIO(data)
        f.name = f"member{ext}"
        return f

    try:
        try:
            wave, sr = _read_soundfile(opened())
        except Exception:  # soundfile lacks the codec (mp3 on old libsndfile, m4a, opus-in-mp4, ...)
            wave, sr = _read_pyav(opened())
    except AudioDecodeError:
        raise
    except Exception as err:
        raise AudioDecodeError(f"{path}: cannot decode audio ({type(err).__name__}: {err})") from err
    if wave.numel() == 0:
        raise AudioDecodeError(f"{path}: empty audio")
    if not torch.isfinite(wave).all():
        raise AudioDecodeError(f"{path}: audio contains NaN or inf samples")
    if channels is not None:
        wave = mix_channels(wave, channels)
    if sample_rate is not None and sample_rate != sr:
        import torchaudio.functional as AF

        wave = AF.resample(wave, sr, sample_rate)
        sr = sample_rate
    return wave.clamp(-1, 1).contiguous(), sr


def probe_audio(path) -> dict:
    """{"duration" (s), "rate" (samples/s)} of an audio file from its header (soundfile, else PyAV),
    without decoding; AudioDecodeError names a file that cannot be opened or is cut short."""
    path = os.fspath(path)
    if path.lower().endswith((".wav", ".wave")):
        check_wav_payload(path)
    try:
        import soundfile as sf

        info = sf.info(path)
        return {"duration": float(info.duration), "rate": float(info.samplerate)}
    except Exception:  # noqa: BLE001 - soundfile lacks the codec; ask PyAV
        pass
    try:
        import av

        with av.open(path) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path}: no audio stream")
            s = container.streams.audio[0]
            duration = (float(s.duration * s.time_base) if s.duration is not None and s.time_base is not None
                        else container.duration / 1e6 if container.duration is not None else None)
            return {"duration": duration, "rate": float(s.sample_rate or 0) or None}
    except AudioDecodeError:
        raise
    except Exception as err:  # noqa: BLE001
        raise AudioDecodeError(f"{path}: cannot open as audio ({type(err).__name__}: {err})") from None


def mix_channels(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, N) -> (channels, N): average to mono, duplicate mono, or keep the first channels."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if wave.shape[0] == channels:
        return wave
    if channels == 1:
        return wave.mean(0, keepdim=True)
    if wave.shape[0] == 1:
        return wave.expand(channels, -1).clone()
    if wave.shape[0] > channels:
        return wave[:channels]
    return torch.cat([wave, wave[-1:].expand(channels - wave.shape[0], -1)])


def save_wav(path, waveform: torch.Tensor, sample_rate: int) -> Path:
    """Write (channels, samples) or (samples,) float audio as 16-bit PCM WAV; returns the path."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = waveform.detach().float().cpu()
    if wave.ndim == 1:
        wave = wave[None]
    sf.write(str(path), wave.clamp(-1, 1).numpy().T, int(sample_rate), subtype="PCM_16")
    return path


def spectrogram_sheet(waveforms: Sequence[torch.Tensor], sample_rate: int, path, titles: Sequence[str] | None = None,
                      columns: int = 4, n_fft: int = 512) -> Path:
    """Save a PNG grid of log-magnitude spectrograms, one panel per (channels, samples) waveform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(waveforms)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    window = torch.hann_window(n_fft)
    for idx, ax in enumerate(axes.flat):
        if idx >= n:
            ax.axis("off")
            continue
        wave = waveforms[idx].detach().float().cpu().reshape(-1, waveforms[idx].shape[-1]).mean(0)
        if wave.numel() < n_fft:
            wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
        spec = torch.stft(wave, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp(min=1e-5))
        ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-100, vmax=float(db.max()),
                  extent=(0, wave.numel() / sample_rate, 0, sample_rate / 2000))
        ax.set_title(titles[idx] if titles else f"#{idx}", fontsize=8)
        ax.set_xlabel("s", fontsize=7)
        ax.set_ylabel("kHz", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


_PYAV_CODECS = {".mp3": ("mp3", "mp3"), ".m4a": ("aac", "mp4"), ".opus": ("libopus", "ogg"), ".aac": ("aac", "adts")}


def save_audio(path, waveform: torch.Tensor, sample_rate: int) -> Path:
    """Write (channels, samples) float audio; the format follows the extension.

    wav / flac / ogg through soundfile, mp3 / m4a / opus / aac through PyAV (opus is
    resampled to 48 kHz, its only rate).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".wav":
        return save_wav(path, waveform, sample_rate)
    wave = waveform.detach().float().cpu()
    if wave.ndim == 1:
        wave = wave[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext in (".flac", ".ogg"):
        import soundfile as sf

        sf.write(str(path), wave.clamp(-1, 1).numpy().T, int(sample_rate), format=ext[1:].upper())
        return path
    if ext not in _PYAV_CODECS:
        raise ValueError(f"{path}: cannot write audio with extension {ext!r}")
    import av

    codec, container_format = _PYAV_CODECS[ext]
    if codec == "libopus" and sample_rate != 48000:
        import torchaudio.functional as AF

        wave, sample_rate = AF.resample(wave, sample_rate, 48000), 48000
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave.clamp(-1, 1).numpy()), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
