"""Video data adapters: a folder or manifest of video files (PyAV), in-memory clip arrays (.npz,
e.g. Moving MNIST from datasets/moving_mnist.py), and the conditioning of the frame tasks.

Items are dicts:
  x        (channels, frames, height, width) float32 in [-1, 1]
  label    int class label (-1 when unlabelled)
  text     caption string ("" when none; folder / manifest data only)
and, with a conditioning task (:func:`task_conditioning`), also
  concat     (1 + channels, frames, height, width): a mask channel (1 = given frame) and the given
             frames (zeros elsewhere, or with ``extrapolate`` a guess at them), for UNet3D's
             ``extra_in_channels``
  loss_mask  (1, frames, 1, 1): 1 on the frames to generate, so given frames do not count in the loss
Random choices (clip start, task, given frames) come from a generator seeded by (seed, epoch,
index), so an item does not depend on batch composition or worker layout.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.utils import item_generator
from ..errors import DataError
from ..manifest import ManifestRows, check_labels, read_rows, row_label, select_split
from ..manifest import scan_folder as scan_files
from .io import VIDEO_EXTENSIONS, VideoDecodeError, probe_video, read_video
from .metrics import constant_velocity_frames, given_frame_mask

TASKS = ("generate", "predict", "interpolate", "mixed")
EXTRAPOLATIONS = ("none", "constant_velocity")


def scan_folder(root) -> list[dict]:
    """Video files under root, labelled by class folder (multidiff.manifest.scan_folder)."""
    return scan_files(root, VIDEO_EXTENSIONS)


def task_conditioning(x: torch.Tensor, task: str, given: int, g: torch.Generator | None = None,
                      p_unconditional: float = 0.0, extrapolate: str = "none") -> dict:
    """The concat channels and loss mask of a frame task for one clip x (C, T, H, W).

    task: "generate" (nothing given), "predict" (the first ``given`` frames given), "interpolate"
    (the first and last ``given // 2`` (at least 1) frames given) or "mixed" (predict or interpolate,
    at random). With probability ``p_unconditional`` nothing is given (so one model also generates).
    extrapolate: what the concat holds on the frames to generate of a predict task: "none" (zeros)
    or "constant_velocity" (the last given frame moved at the given frames' whole-pixel velocity,
    :func:`multidiff.video.metrics.constant_velocity_frames`; needs given >= 2). A motion-compensated
    first guess, as flow-warped inputs in video prediction (e.g. Reda et al. 2018, SDC-Net): the
    network then corrects a guess already in place (bounces, shape) instead of having to carry the
    content across the frame itself, which a stack of convolutions does not express directly.
    Returns {"concat": (1 + C, T, H, W), "loss_mask": (1, T, 1, 1)}, and with ``extrapolate`` also
    "guess" (C, T, H, W): the guess on the frames to generate, zeros elsewhere (all zeros when
    nothing is given), for a model of the residual x - guess (see TaskParams.residual).
    """
    if task not in TASKS:
        raise ValueError(f"unknown video task {task!r}; known: {TASKS}")
    if extrapolate not in EXTRAPOLATIONS:
        raise ValueError(f"unknown extrapolation {extrapolate!r}; known: {EXTRAPOLATIONS}")
    t = x.shape[1]
    mask = torch.zeros(t)
    u = float(torch.rand((), generator=g)) if (p_unconditional > 0 or task == "mixed") else 1.0
    if task == "mixed":
        task = "predict" if float(torch.rand((), generator=g)) < 0.5 else "interpolate"
    if task != "generate" and not (p_unconditional > 0 and u < p_unconditional):
        mask = given_frame_mask(t, task, given).float()
    m = mask.reshape(1, t, 1, 1).to(x.dtype)
    frames, guess = x * m, None
    if extrapolate != "none":
        guess = torch.zeros_like(x)
        if task == "predict" and mask[0] == 1:
            if given < 2:
                raise ValueError(f"extrapolate {extrapolate!r} needs given_frames >= 2 (a velocity), got {given}")
            guess = constant_velocity_frames(x[None], given)[0] * (1 - m)
            frames = frames + guess
    concat = torch.cat([m.expand(1, t, *x.shape[2:]), frames], dim=0)
    out = {"concat": concat, "loss_mask": 1 - m}
    if guess is not None:
        out["guess"] = guess
    return out


class VideoDataset(ManifestRows, Dataset):
    """Fixed-length clips from a folder or a manifest (.csv / .jsonl) of video files.

    num_frames clips at ``fps`` (None: each file's own rate), resized + centre-cropped to ``size``,
    ``channels`` 3 (RGB) or 1 (luma). Every file is probed once at construction: files that
    cannot be opened or are shorter than a clip are skipped, counted in ``bad_files`` and named in
    one warning; a file that fails later, at decoding, is skipped the same way (the next one is
    used). random_crop: a random start time in the file (else its start, or the row's ``start``).
    """

    def __init__(self, source, num_frames: int = 16, size=64, fps: float | None = None, channels: int = 3, *,
                 split: str | None = None, random_crop: bool = True, seed: int = 0, label_column: str = "label",
                 progress: bool = True):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"video data source {source} does not exist")
        rows = read_rows(source, VIDEO_EXTENSIONS, "video")
        rows, self.split_record = select_split(rows, source, split)
        check_labels(rows, label_column, source)
        self.source, self.num_frames, self.size, self.fps, self.channels = source, num_frames, size, fps, channels
        self.random_crop, self.seed, self.label_column = random_crop, seed, label_column
        self.epoch = 0
        self.bad_files: dict[str, str] = {}
        from tqdm.auto import tqdm

        if hasattr(rows, "subset"):  # shards: probed when packed; only the length check depends on these settings
            self.rows = self._long_enough(rows)
            return
        kept = []
        for row in tqdm(rows, desc=f"probing {source.name}", disable=not progress or len(rows) < 50):
            try:
                info = probe_video(row["path"])
            except VideoDecodeError as err:
                self.bad_files[row["path"]] = str(err)
                continue
            rate = fps or info["fps"] or 25.0
            need = num_frames / rate
            if info["duration"] is not None and info["duration"] + 0.5 / rate < need:
                self.bad_files[row["path"]] = (f"{row['path']}: too short: {info['duration']:.3f} s, a clip of "
                                               f"{num_frames} frames at {rate:g} fps needs {need:.3f} s")
                continue
            kept.append({**row, "_duration": info["duration"], "_rate": rate})
        if self.bad_files:
            names = ", ".join(list(self.bad_files)[:5]) + (" ..." if len(self.bad_files) > 5 else "")
            warnings.warn(f"{source}: skipped {len(self.bad_files)} unreadable or too-short video files: {names}",
                          stacklevel=2)
        if not kept:
            raise DataError(f"{source}: no usable video files" + (f" in split {split!r}" if split else "")
                            + (f" ({len(self.bad_files)} skipped; the first: {next(iter(self.bad_files.values()))})"
                               if self.bad_files else ""))
        self.rows = kept

    def _long_enough(self, rows):
        """Shard rows of clips long enough for ``num_frames`` at the data set's rate (from the index)."""
        rate = np.full(len(rows), float(self.fps)) if self.fps else np.nan_to_num(rows.column("rate"), nan=25.0)
        duration = rows.column("duration")
        short = np.isfinite(duration) & (duration + 0.5 / rate < self.num_frames / rate)
        if short.any():
            warnings.warn(f"{self.source}: skipped {int(short.sum())} video files shorter than {self.num_frames} "
                          f"frames", stacklevel=3)
        if short.all():
            raise DataError(f"{self.source}: no video long enough for {self.num_frames} frames")
        return rows.subset(~short)

    def _rng(self, index: int) -> torch.Generator:
        return item_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict:
        g = self._rng(index)
        for attempt in range(len(self.rows)):
            row = self.rows[(index + attempt) % len(self.rows)]
            if row["path"] in self.bad_files:
                continue
            start = float(row.get("start") or 0.0)
            duration = row.get("_duration")
            if self.random_crop and duration is not None:
                slack = duration - start - self.num_frames / (self.fps or row.get("_rate") or 25.0)
                start += max(slack, 0.0) * float(torch.rand((), generator=g))
            try:
                x, _ = read_video(row.get("member") or row["path"], self.fps, self.num_frames, start, self.size, self.channels)
            except (VideoDecodeError, OSError) as err:
                self.bad_files[row["path"]] = str(err)
                warnings.warn(f"skipping unreadable video file {row['path']}: {err} "
                              f"({len(self.bad_files)} skipped so far)", stacklevel=2)
                continue
            return {"x": x, "label": row_label(row, self.label_column), "text": str(row.get("text", "") or "")}
        raise DataError(f"{self.source}: every video file failed to decode ({len(self.bad_files)} files; the first: "
                        f"{next(iter(self.bad_files.values()), '')})")


def digits_caption(digits) -> str:
    """Moving-MNIST caption from its digit labels: "digit 7", "digits 3 and 5", "digits 1, 4 and 9"."""
    names = [str(int(d)) for d in digits]
    if len(names) == 1:
        return f"digit {names[0]}"
    return f"digits {', '.join(names[:-1])} and {names[-1]}"


class ClipArrayDataset(Dataset):
    """Clips held in memory from an .npz with ``videos`` uint8 (N, frames, height, width[, channels])
    (0..255) and optionally ``labels`` (N,) or (N, k) (k digits -> one product label, most significant
    first) and ``split`` (N,) strings, ``captions`` (N,) strings (else digit labels are named:
    "digits 3 and 5"). num_frames: a random (or the first) window of that many frames.
    """

    def __init__(self, path, num_frames: int | None = None, *, split: str | None = None, random_crop: bool = True,
                 seed: int = 0):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"clip array {path} does not exist")
        with np.load(path, allow_pickle=False) as z:
            if "videos" not in z:
                raise ValueError(f"{path}: no 'videos' array (keys: {sorted(z.keys())})")
            videos = z["videos"]
            labels = z["labels"] if "labels" in z else None
            splits = z["split"] if "split" in z else None
            captions = z["captions"].astype(str) if "captions" in z else None
        if videos.dtype != np.uint8 or videos.ndim not in (4, 5):
            raise ValueError(f"{path}: 'videos' must be uint8 (N, frames, H, W[, C]), got {videos.dtype} {videos.shape}")
        if videos.ndim == 4:
            videos = videos[..., None]
        keep = np.ones(len(videos), bool) if split is None or splits is None else splits.astype(str) == split
        if not keep.any():
            raise ValueError(f"{path}: no clips in split {split!r}")
        self.videos = torch.from_numpy(np.ascontiguousarray(videos[keep]))  # (N, T, H, W, C) uint8
        self.label_digits = 0
        self.captions = None if captions is None else [str(c) for c in captions[keep]]
        self.splits = None if splits is None else [str(v) for v in splits.astype(str)[keep]]
        if labels is not None:
            labels = np.asarray(labels)[keep]
            if self.captions is None and labels.ndim == 2:  # Moving MNIST: name the digits
                self.captions = [digits_caption(row) for row in labels]
            if labels.ndim == 2:
                self.label_digits = labels.shape[1]
                labels = (labels * (10 ** np.arange(labels.shape[1] - 1, -1, -1))).sum(1)
            self.labels_t = torch.from_numpy(labels.astype(np.int64))
        else:
            self.labels_t = torch.full((len(self.videos),), -1, dtype=torch.long)
        t = self.videos.shape[1]
        self.num_frames = num_frames or t
        if self.num_frames > t:
            raise ValueError(f"{path}: clips have {t} frames, num_frames={self.num_frames} asks for more")
        self.random_crop, self.seed, self.epoch, self.path = random_crop, seed, 0, path

    @property
    def channels(self) -> int:
        return int(self.videos.shape[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.num_frames, int(self.videos.shape[2]), int(self.videos.shape[3]))

    @property
    def rows(self) -> list[dict]:
        """Manifest-like rows {"split", "text"} per clip, as the folder data sets have (the latent
        encoder keeps splits and captions from them)."""
        return [{"split": self.splits[k] if self.splits is not None else "",
                 "text": self.captions[k] if self.captions is not None else ""} for k in range(len(self.videos))]

    @property
    def num_classes(self) -> int:
        if self.label_digits:
            return 10 ** self.label_digits
        return int(self.labels_t.max()) + 1 if len(self.labels_t) and int(self.labels_t.max()) >= 0 else 0

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def clip(self, index: int, g: torch.Generator | None = None) -> torch.Tensor:
        v = self.videos[index]
        t = v.shape[0]
        s = 0
        if self.random_crop and t > self.num_frames:
            s = int(torch.randint(0, t - self.num_frames + 1, (1,), generator=g))
        v = v[s:s + self.num_frames]
        return v.permute(3, 0, 1, 2).float() / 127.5 - 1.0

    def __getitem__(self, index: int) -> dict:
        g = item_generator(self.seed, self.epoch, index)
        return {"x": self.clip(index, g), "label": int(self.labels_t[index]),
                "text": self.captions[index] if self.captions is not None else ""}
