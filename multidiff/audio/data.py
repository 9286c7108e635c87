"""Audio data adapter: a folder or a manifest (CSV / JSONL with path, label, text) of audio files.

Each item is a dict:
  x            (channels, length) float32 waveform in [-1, 1]
  loss_mask    (1, length) float32, 1 where there is real audio, 0 on padding
  label        int class label (-1 when unlabelled)
  text         caption string ("" when none)
Decoding goes through ``load_audio`` (soundfile, PyAV otherwise) and an optional on-disk
cache of decoded, resampled, trimmed audio, so later epochs do not decode again. A file
that fails to decode is skipped (the next file is used), counted in ``bad_files`` and
named in a warning; the run goes on. Random choices (crop offset, polarity) come from a
generator seeded by (seed, epoch, index), so an item does not depend on batch
composition or worker layout.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.utils import item_generator
from ..errors import DataError
from ..manifest import ManifestRows, check_labels, read_rows, row_label, select_split
from ..manifest import scan_folder as scan_files
from ..shards import cache_key
from .io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio


def scan_folder(root) -> list[dict]:
    """Audio files under root, labelled by class folder (multidiff.manifest.scan_folder)."""
    return scan_files(root, AUDIO_EXTENSIONS)


@dataclass
class AudioLoadParams:
    """The loading settings shared by the training data sets built on :class:`AudioDataset`
    (``audio``, ``audio_mel``): its arguments, plus ``num_classes`` (None reads it from the labels)."""

    sample_rate: int = 16000
    channels: int = 1
    length: int = 16000
    split: str | None = "train"
    random_crop: bool = True
    normalize: str | None = None
    target_rms: float = 0.1
    trim_db: float | None = None
    polarity_flip: float = 0.0
    cache_dir: str | None = None
    label_column: str = "label"
    num_classes: int | None = None

    def dataset(self, path, seed: int) -> AudioDataset:
        return AudioDataset(path, self.sample_rate, self.channels, self.length, split=self.split,
                            random_crop=self.random_crop, normalize=self.normalize, target_rms=self.target_rms,
                            trim_db=self.trim_db, polarity_flip=self.polarity_flip, cache_dir=self.cache_dir,
                            seed=seed, label_column=self.label_column)


class AudioDataset(ManifestRows, Dataset):
    """Fixed-length audio clips from a folder or manifest.

    source: folder, or .csv / .jsonl manifest. length: clip length in samples (None: whole
    files; then batch size 1 or your own collate). split: keep rows whose 'split' equals it.
    normalize: None, "peak" (to 0.95) or "rms" (to ``target_rms``). trim_db: trim leading /
    trailing silence below this many dB under the peak (librosa), None to keep.
    polarity_flip: probability of multiplying by -1. random_crop: False takes the start.
    """

    def __init__(self, source, sample_rate: int = 16000, channels: int = 1, length: int | None = 16000, *,
                 split: str | None = None, random_crop: bool = True, normalize: str | None = None,
                 target_rms: float = 0.1, trim_db: float | None = None, polarity_flip: float = 0.0,
                 cache_dir=None, seed: int = 0, label_column: str = "label"):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"audio data source {source} does not exist")
        rows = read_rows(source, AUDIO_EXTENSIONS, "audio")
        rows, self.split_record = select_split(rows, source, split)
        if not rows:
            raise DataError(f"{source}: no audio files" + (f" in split {split!r}" if split else ""))
        check_labels(rows, label_column, source)
        if normalize not in (None, "peak", "rms"):
            raise ValueError(f"normalize must be None, 'peak' or 'rms', got {normalize!r}")
        self.rows, self.source = rows, source
        self.sample_rate, self.channels, self.length = sample_rate, channels, length
        self.random_crop, self.normalize, self.target_rms = random_crop, normalize, target_rms
        self.trim_db, self.polarity_flip, self.seed = trim_db, polarity_flip, seed
        self.label_column = label_column
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.epoch = 0
        self.bad_files: dict[str, str] = {}

    # properties the trainer and recipes read
    @property
    def shape(self) -> tuple:
        return (self.channels, self.length)

    # ------------------------------------------------------------------ the loading hook
    def _cache_path(self, path) -> Path | None:
        if self.cache_dir is None:
            return None
        file_key = cache_key(path)
        key = f"{file_key}|{self.sample_rate}|{self.channels}|{self.trim_db}"
        return self.cache_dir / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def load(self, path) -> torch.Tensor:
        """Decode (or read from cache) one file or shard member -> (channels, samples) at the dataset's rate."""
        cached = self._cache_path(path)
        if cached is not None and cached.is_file():
            return torch.from_numpy(np.load(cached))
        wave, _ = load_audio(path, self.sample_rate, self.channels)
        if self.trim_db is not None:
            import librosa

            _, (start, end) = librosa.effects.trim(wave.mean(0).numpy(), top_db=self.trim_db)
            if end > start:
                wave = wave[:, start:end]
        if cached is not None:
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, wave.numpy())
            os.replace(tmp, cached)
        return wave

    def _rng(self, index: int) -> torch.Generator:
        return item_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.rows)):
            k = (index + attempt) % len(self.rows)
            row = self.rows[k]
            if row["path"] in self.bad_files:
                continue
            try:
                wave = self.load(row.get("member") or row["path"])
            except (AudioDecodeError, OSError, ValueError) as err:
                self.bad_files[row["path"]] = str(err)
                warnings.warn(f"skipping unreadable audio file {row['path']}: {err} "
                              f"({len(self.bad_files)} skipped so far)", stacklevel=2)
                continue
            return self._make_item(wave, row, index)
        raise DataError(f"{self.source}: every audio file failed to decode ({len(self.bad_files)} files; the first: "
                        f"{next(iter(self.bad_files.values()), '')})")

    def _make_item(self, wave: torch.Tensor, row: dict, index: int) -> dict:
        g = self._rng(index)
        n = wave.shape[-1]
        mask = torch.ones(1, n)
        if self.length is not None:
            if n > self.length:
                start = int(torch.randint(0, n - self.length + 1, (1,), generator=g)) if self.random_crop else 0
                wave, mask = wave[:, start:start + self.length], mask[:, start:start + self.length]
            elif n < self.length:
                pad = self.length - n
                wave = torch.nn.functional.pad(wave, (0, pad))
                mask = torch.nn.functional.pad(mask, (0, pad))
        if self.normalize == "peak":
            wave = wave * (0.95 / wave.abs().max().clamp(min=1e-5))
        elif self.normalize == "rms":
            rms = wave[:, mask[0] > 0].pow(2).mean().sqrt().clamp(min=1e-5)
            wave = (wave * (self.target_rms / rms)).clamp(-1, 1)
        if self.polarity_flip > 0 and float(torch.rand((), generator=g)) < self.polarity_flip:
            wave = -wave
        return {"x": wave.float().contiguous(), "loss_mask": mask,
                "label": row_label(row, self.label_column), "text": str(row.get("text", "") or "")}
