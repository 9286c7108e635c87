"""The images modality's registrations: the 2D U-Net, the image-array data set, and the modality
record (PNG previews, classifier metrics). Imported by multidiff.train.registry.load_plugins."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..nn.presets import build_preset, preset_params
from ..train.modality import Modality, register_modality
from ..train.registry import DataSpec, register_dataset, register_model
from .data import ImageArrayDataset
from .unet2d import UNET2D_PRESETS, UNet2D

MODALITY = "images"
JUDGE = "image_classifier.safetensors"  # beside the .npz: datasets/train_image_classifier.py

UNet2DParams = preset_params("UNet2DParams", UNet2D, UNET2D_PRESETS, default="small")


def build_unet2d(params, spec: DataSpec, *, gradient_checkpointing: bool = False):
    """A UNet2D for (channels, height, width) images."""
    if len(spec.sample_shape) != 3:
        raise ValueError(f"image_unet2d needs samples of shape (channels, height, width), got {tuple(spec.sample_shape)}")
    return build_preset(params, gradient_checkpointing=gradient_checkpointing, in_channels=spec.sample_shape[0],
                        num_classes=spec.num_classes,
                        defaults={"extra_in_channels": int(spec.meta.get("concat_channels", 0))})


register_model("image_unet2d", build_unet2d, params=UNet2DParams, modality=MODALITY, example_shape=(1, 32, 32),
               example_batch=64, description="2D image U-Net (multidiff.images.unet2d)")


@dataclass
class ImageArrayParams:
    """An .npz of uint8 images (datasets/mnist_images.py). split: the rows to train on; eval_split: the
    held-out rows the evaluator compares with; size: the canvas the images are centred on;
    conditional: give class labels."""

    split: str | None = "train"
    eval_split: str = "test"
    size: int | None = 32
    conditional: bool = True


class ImageTrainData(torch.utils.data.Dataset):
    def __init__(self, params: ImageArrayParams, path: str | None, seed: int):
        if path is None:
            raise ValueError("data.path: the image_array data set needs an .npz (datasets/mnist_images.py writes one)")
        self.images = ImageArrayDataset(path, params.split, params.size)
        classes = self.images.num_classes if params.conditional else 0
        if params.conditional and classes == 0:
            raise ValueError("data.params.conditional: the image array has no labels")
        self.spec = DataSpec((self.images.channels, self.images.size, self.images.size), classes, MODALITY,
                             {"eval_split": params.eval_split})

    @property
    def rows(self) -> list[dict]:
        return self.images.rows

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        if self.spec.num_classes == 0:
            item.pop("label")
        return item


register_dataset("image_array", ImageTrainData, params=ImageArrayParams, modality=MODALITY, needs_path=True,
                 description="uint8 images in an .npz, e.g. MNIST digits (multidiff.images.data)")


def image_preview(samples: torch.Tensor, out_dir: Path, name: str, *, labels=None, spec=None,
                  columns: int = 10) -> list[Path]:
    """One PNG grid of the samples (labels in row-major order), 2x enlarged."""
    from PIL import Image

    x = ((samples.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)   # (n, c, h, w)
    n, c, h, w = x.shape
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    grid = torch.zeros(c, rows * (h + 2), cols * (w + 2), dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = x[k]
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)
    image = image.resize((image.width * 2, image.height * 2), Image.NEAREST)
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return [path]


def image_evaluate(samples: torch.Tensor, config, *, labels=None, spec=None) -> dict:
    """Pixel statistics, plus (with the judge beside the .npz) accuracy against the requested labels
    and the classifier Frechet distance to the held-out split, beside the judge's own accuracy on real
    held-out images and the real-train vs held-out distance."""
    x = samples.float()
    out = {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std()),
           "clipped_fraction": float((x.abs() >= 0.999).float().mean())}
    path = getattr(getattr(config, "data", None), "path", None)
    judge = Path(path).parent / JUDGE if path and Path(path).is_file() else None
    if judge is None or not judge.is_file():
        return out
    from .metrics import ImageClassifier, classifier_report

    params = dict(config.data.params or {})
    size = x.shape[-1]
    held_out = ImageArrayDataset(path, params.get("eval_split", "test"), size)
    train = ImageArrayDataset(path, params.get("split", "train"), size)
    requested = None
    if labels is not None and spec is not None and spec.num_classes:
        requested = torch.as_tensor(labels)
        keep = requested < spec.num_classes  # null-label samples have no class to check
        x, requested = x[keep], requested[keep]
    spread = torch.linspace(0, len(train) - 1, min(len(train), len(held_out))).round().long()  # every class alike
    out.update(classifier_report(ImageClassifier.load(judge), x, requested, held_out.all_images(), held_out.labels,
                                 train.all_images()[spread]))
    return out


register_modality(Modality(MODALITY, preview=image_preview, evaluate=image_evaluate,
                           deterministic_data={"split": None},
                           description="images (channels, height, width): PNG grids, classifier accuracy / FD"))
