"""Scores of generated images: a small CNN judge trained on the data set's training split gives the
accuracy of samples against their requested class and a Frechet distance on its features (FID-like,
not Inception FID); its own accuracy on real test images is reported beside them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..frechet import feature_frechet_distance


class ImageClassifier(nn.Module):
    """(batch, channels, h, w) in [-1, 1] -> logits: 3 stages of conv-GroupNorm-SiLU (stride 2),
    global average pooling, a ``feature_dim`` embedding (``features``) and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}
        layers, c = [], in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            c = out
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.embed(self.body(x).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps(self.config))
        return path

    @classmethod
    def load(cls, path) -> ImageClassifier:
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(**json.loads(path.with_suffix(".json").read_text()))
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def train_image_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 1500,
                           batch_size: int = 64, lr: float = 2e-3, shift: int = 2, seed: int = 0) -> ImageClassifier:
    """Fit the judge on clean images with random shifts of up to ``shift`` pixels (no noise: a judge
    that is not lenient with noisy samples)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ImageClassifier(images.shape[1], num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx]
        if shift:
            dy, dx = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def classifier_outputs(model: ImageClassifier, images: torch.Tensor, batch_size: int = 256):
    """(predicted classes (n,), features (n, feature_dim))."""
    preds, feats = [], []
    for k in range(0, len(images), batch_size):
        f = model.features(images[k:k + batch_size].float())
        feats.append(f)
        preds.append(model.head(f).argmax(1))
    return torch.cat(preds), torch.cat(feats)


def classifier_report(model: ImageClassifier, samples: torch.Tensor, requested: torch.Tensor | None,
                      real_test: torch.Tensor, test_labels: torch.Tensor, real_train: torch.Tensor) -> dict:
    """Accuracy of samples against ``requested`` and their Frechet distance to the real test images,
    beside the judge's accuracy on the real test images (clean, and with Gaussian noise of std 0.1)
    and the real-train vs real-test distance (the floor)."""
    pred, feats = classifier_outputs(model, samples)
    real_pred, real_feats = classifier_outputs(model, real_test)
    out = {"classifier_frechet": feature_frechet_distance(feats, real_feats)}
    if requested is not None and len(requested):
        out["classifier_accuracy"] = float((pred == requested).float().mean())
    noisy = (real_test + 0.1 * torch.randn(real_test.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    out["classifier_real_accuracy"] = float((real_pred == test_labels).float().mean())
    out["classifier_real_accuracy_noise0.1"] = float((classifier_outputs(model, noisy)[0] == test_labels).float().mean())
    _, train_feats = classifier_outputs(model, real_train)
    out["classifier_frechet_real_floor"] = feature_frechet_distance(train_feats, real_feats)
    return out
