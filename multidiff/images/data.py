"""Images held in memory from an .npz: ``images`` uint8 (N, height, width[, channels]), ``labels``
(N,) and ``split`` (N,) strings (datasets/mnist_images.py writes one from MNIST digits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError


class ImageArrayDataset(Dataset):
    """Items {"x": (channels, size, size) float in [-1, 1], "label": int, "text": ""}: each image
    centred on a ``size`` canvas of background (-1) when it is smaller (28 -> 32 for a U-Net's
    down-sampling). split: keep the rows whose split equals it (None: all)."""

    def __init__(self, path, split: str | None = "train", size: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image array {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                images = z["images"]
                labels = z["labels"] if "labels" in z else None
                splits = z["split"].astype(str) if "split" in z else None
        except (KeyError, ValueError, OSError) as err:
            raise DataError(f"{path}: not an image array with an 'images' entry ({err})") from None
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(f"{path}: 'images' must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[..., None]
        keep = np.ones(len(images), bool) if split is None or splits is None else splits == split
        if not keep.any():
            raise DataError(f"{path}: no images in split {split!r}")
        h, w = images.shape[1:3]
        self.size = int(size or max(h, w))
        if self.size < max(h, w):
            raise DataError(f"{path}: size {self.size} is smaller than the images ({h}x{w})")
        self.images = torch.from_numpy(np.ascontiguousarray(images[keep]))  # (N, H, W, C) uint8
        self.labels = torch.from_numpy(labels[keep].astype(np.int64)) if labels is not None else \
            torch.full((int(keep.sum()),), -1, dtype=torch.long)
        self.splits = [str(s) for s in splits[keep]] if splits is not None else [""] * len(self.images)
        self.path = path

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and int(self.labels.max()) >= 0 else 0

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def rows(self) -> list[dict]:
        return [{"split": s, "text": ""} for s in self.splits]

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        """(channels, size, size) in [-1, 1], the image centred on a background canvas."""
        img = self.images[index].permute(2, 0, 1).float() / 127.5 - 1.0
        h, w = img.shape[1:]
        top, left = (self.size - h) // 2, (self.size - w) // 2
        return torch.nn.functional.pad(img, (left, self.size - w - left, top, self.size - h - top), value=-1.0)

    def all_images(self) -> torch.Tensor:
        return torch.stack([self.image(k) for k in range(len(self))]) if len(self) else torch.empty(0)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.image(index), "label": int(self.labels[index]), "text": ""}
