"""Video metrics: per-frame PSNR / SSIM for frame prediction (beside the repeat-last-frame
baseline), and Frechet distances between sets of videos.

Videos are (batch, channels, frames, height, width) float in [-1, 1] (data_range 2).

* :func:`psnr`, :func:`ssim`: per frame, (batch, frames). SSIM is Wang et al. (2004) with an
  11-tap Gaussian window of sigma 1.5 over the valid region, the means of channels (the
  settings of ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``, against which the tests check it).
* :func:`prediction_report`: MSE / PSNR / SSIM on the generated frames of a prediction task and
  of the "repeat the last given frame" baseline, and the relative MSE improvement.
* :class:`VideoClassifier` + :func:`train_classifier`: a small 3D-conv classifier trained on the
  real data (e.g. Moving-MNIST digit labels); :func:`classifier_frechet_distance` is the Frechet
  distance between its penultimate features of two sets of videos. This is **not** FVD: the
  features come from a small model trained on the data set itself, so the numbers compare runs
  on the same data set and classifier only.
* :func:`i3d_fvd`: FVD (Unterthiner et al. 2018) with an I3D network the user provides as a
  local TorchScript file (e.g. the ``i3d_torchscript.pt`` used by StyleGAN-V); nothing is
  downloaded. The protocol (frames, size, number of videos) is returned with the score.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..frechet import feature_stats, frechet_distance  # noqa: F401  (re-exported)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(f"expected two (batch, channels, frames, height, width) videos of one shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


def mse_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(batch, frames) mean squared error."""
    _check_pair(pred, target)
    return (pred.double() - target.double()).pow(2).mean(dim=(1, 3, 4))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """(batch, frames) PSNR in dB = 10 log10(data_range^2 / MSE); +inf for identical frames."""
    mse = mse_per_frame(pred, target)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """(batch, frames) SSIM (Wang et al. 2004), Gaussian window, valid region, mean over channels."""
    _check_pair(pred, target)
    b, c, t, h, w = pred.shape
    win = _gaussian_window(sigma)
    n = len(win)
    if h < n or w < n:
        raise ValueError(f"SSIM needs frames of at least {n}x{n} pixels, got {h}x{w}")
    x = pred.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    y = target.double().permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    wv, wh = win.reshape(1, 1, n, 1), win.reshape(1, 1, 1, n)

    def blur(z):
        return F.conv2d(F.conv2d(z, wv), wh)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(b, t, c).mean(-1)


def given_frame_mask(frames: int, task: str, given: int) -> torch.Tensor:
    """Which of a clip's ``frames`` a frame task gives, (frames,) bool: "predict" gives the first
    ``given``; "interpolate" the first and last ``given // 2`` (at least 1) each."""
    if task not in ("predict", "interpolate"):
        raise ValueError(f"frame task must be 'predict' or 'interpolate', got {task!r}")
    if not 0 < given < frames:
        raise ValueError(f"video task {task!r} needs 0 < given_frames < frames, got {given} of {frames}")
    mask = torch.zeros(frames, dtype=torch.bool)
    if task == "predict":
        mask[:given] = True
    else:
        k = max(given // 2, 1)
        mask[:k] = True
        mask[frames - k:] = True
    return mask


def _interpolation_gap(video: torch.Tensor, given: int) -> tuple[int, int, torch.Tensor]:
    """The last frame given before the gap, the first after it, and the gap frames' fractions of
    the way between them (0 < w < 1), shaped (1, 1, gap, 1, 1) to broadcast over the video."""
    given_frame_mask(video.shape[2], "interpolate", given)  # the same checks as the task's
    k = max(given // 2, 1)
    before, after = k - 1, video.shape[2] - k
    w = torch.arange(1, after - before, dtype=video.dtype, device=video.device) / (after - before)
    return before, after, w.reshape(1, 1, -1, 1, 1)


def nearest_given_frame(video: torch.Tensor, given: int) -> torch.Tensor:
    """The interpolation counterpart of repeat-last: each frame of the gap between the first and the
    last ``given // 2`` frames is a copy of the nearer given frame (ties to the earlier).
    video (batch, channels, frames, height, width)."""
    before, after, w = _interpolation_gap(video, given)
    out = video.clone()
    out[:, :, before + 1:after] = torch.where(w > 0.5, video[:, :, after:after + 1], video[:, :, before:before + 1])
    return out


def linear_blend_frames(video: torch.Tensor, given: int) -> torch.Tensor:
    """A cross-fade across the gap of an interpolation task: frame t of the gap is
    (1 - w) x_before + w x_after, w its fraction of the way. Exact for brightness that changes
    linearly in time; for moving content it shows both ends faintly (ghosting), which lowers MSE
    below copying either end when the motion is uncertain. video (batch, channels, frames, h, w)."""
    before, after, w = _interpolation_gap(video, given)
    out = video.clone()
    out[:, :, before + 1:after] = torch.lerp(video[:, :, before:before + 1], video[:, :, after:after + 1], w)
    return out


def repeat_last_frame(video: torch.Tensor, given: int) -> torch.Tensor:
    """The baseline prediction: frames [given, T) are copies of frame given - 1."""
    if not 0 < given <= video.shape[2]:
        raise ValueError(f"given must lie in [1, {video.shape[2]}], got {given}")
    out = video.clone()
    out[:, :, given:] = video[:, :, given - 1:given]
    return out


def shift_frames(frames: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Translate each clip's frames by whole pixels: frames (batch, channels, height, width), dy / dx
    (batch,) long (positive = down / right); pixels shifted in from outside are ``fill``."""
    b, _, h, w = frames.shape
    rows = torch.arange(h, device=frames.device)[None, :] - dy[:, None]  # source row of each target row
    cols = torch.arange(w, device=frames.device)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (b, h, w)
    idx = torch.arange(b, device=frames.device)[:, None, None]
    out = frames[idx, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (b, h, w, c)
    out = out.permute(0, 3, 1, 2)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def best_shifts(src: torch.Tensor, dst: torch.Tensor, max_shift: int = 4, fill: float = -1.0) -> torch.Tensor:
    """The whole-pixel translation (dy, dx), each in [-max_shift, max_shift], that moves src closest
    to dst in MSE, per frame pair: src / dst (batch, channels, height, width) -> (batch, 2) long.
    All (2 max_shift + 1)^2 shifts are scored in one pass (windows of the fill-padded source); ties
    go to the first in (dy, dx) row-major order."""
    if src.shape != dst.shape or src.dim() != 4:
        raise ValueError(f"best_shifts needs two (batch, channels, height, width) tensors of one shape, "
                         f"got {tuple(src.shape)} and {tuple(dst.shape)}")
    b, c, h, w = src.shape
    m, side = max_shift, 2 * max_shift + 1
    padded = F.pad(src, (m, m, m, m), value=fill)
    # window (i, j) of the padded source is the source moved by (dy, dx) = (m - i, m - j)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (b, c, side, side, h, w)
    errors = (windows - dst[:, :, None, None]).square().mean((1, 4, 5)).flip(1, 2).reshape(b, side * side)
    k = errors.argmin(1)
    return torch.stack([k // side - m, k % side - m], 1)


def constant_velocity_frames(video: torch.Tensor, given: int, max_shift: int = 4, fill: float = -1.0) -> torch.Tensor:
    """A hand-made predictor for translating content (Moving MNIST): frames [given, T) are the last
    given frame moved by round(k * v). Per axis, |v| is the largest whole-pixel shift
    (:func:`best_shifts`) between consecutive given frames and its sign that of the last shift (the
    opposite of the one before when the last is 0): a reflection at a wall shortens the shift across
    it and flips the later ones, so the mean of the shifts would be wrong after a bounce. No bounces
    after the given frames. video (batch, channels, frames, height, width); needs given >= 2.
    Returns the video with frames [given, T) replaced."""
    if not 2 <= given <= video.shape[2]:
        raise ValueError(f"constant-velocity prediction needs 2 <= given <= {video.shape[2]}, got {given}")
    b, c, _, h, w = video.shape
    pairs = given - 1
    src = video[:, :, :pairs].transpose(1, 2).reshape(b * pairs, c, h, w)
    dst = video[:, :, 1:given].transpose(1, 2).reshape(b * pairs, c, h, w)
    shifts = best_shifts(src, dst, max_shift, fill).reshape(b, pairs, 2).to(video.dtype)
    sign = torch.sign(shifts[:, -1])
    if pairs > 1:
        sign = torch.where(sign == 0, -torch.sign(shifts[:, -2]), sign)
    velocity = sign * shifts.abs().amax(1)  # (b, 2)
    out = video.clone()
    for k in range(1, video.shape[2] - given + 1):
        d = torch.round(velocity * k).long()
        out[:, :, given - 1 + k] = shift_frames(video[:, :, given - 1], d[:, 0], d[:, 1], fill)
    return out


def prediction_report(pred: torch.Tensor, truth: torch.Tensor, given: int, data_range: float = 2.0,
                      task: str = "predict") -> dict:
    """Scores of the frames a task does not give against the truth, beside the task's copy baseline:
    "predict" (frames [given, T)) against repeating the last given frame, "interpolate" (the gap
    between the first and last ``given // 2`` frames) against copying the nearer given frame
    (:func:`nearest_given_frame`).

    Returns floats: mse, psnr, ssim (model), baseline_mse, baseline_psnr, baseline_ssim,
    mse_improvement = 1 - mse / baseline_mse (0.3 = 30% lower MSE), and per-frame lists
    psnr_per_frame / baseline_psnr_per_frame / ssim_per_frame / baseline_ssim_per_frame
    (averaged over clips, for the scored frames in order), plus "baseline" (its name) and
    "scored_frames" (their indices). PSNR is of the mean MSE per frame index.
    """
    _check_pair(pred, truth)
    scored = (~given_frame_mask(truth.shape[2], task, given)).nonzero().squeeze(1).to(truth.device)
    if task == "predict":
        base, name = repeat_last_frame(truth, given), "repeat last given frame"
    else:
        base, name = nearest_given_frame(truth, given), "copy nearest given frame"
    out = {"baseline": name, "scored_frames": [int(k) for k in scored]}
    for prefix, video in (("", pred), ("baseline_", base)):
        p, t = video[:, :, scored], truth[:, :, scored]
        mse = mse_per_frame(p, t)
        out[f"{prefix}mse"] = float(mse.mean())
        out[f"{prefix}psnr"] = float(10 * math.log10(data_range ** 2 / max(float(mse.mean()), 1e-20)))
        out[f"{prefix}psnr_per_frame"] = [float(10 * math.log10(data_range ** 2 / max(float(m), 1e-20)))
                                          for m in mse.mean(0)]
        if min(p.shape[-2:]) >= 11:
            s = ssim(p, t, data_range)
            out[f"{prefix}ssim"] = float(s.mean())
            out[f"{prefix}ssim_per_frame"] = [float(v) for v in s.mean(0)]
    out["mse_improvement"] = 1 - out["mse"] / max(out["baseline_mse"], 1e-20)
    return out


# ------------------------------------------------------------------------------ classifier
class VideoClassifier(nn.Module):
    """A small 3D-conv classifier of clips (batch, channels, frames, height, width) for Frechet
    distances and label accuracy on one data set: 3 stages of Conv3d-GroupNorm-SiLU with spatial
    stride 2, global average pooling, a ``feature_dim`` embedding and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"VideoClassifier width must be a positive multiple of 8 (GroupNorm of 8 groups), got {width}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}
        layers, c = [], in_channels
        for k, out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv3d(c, out, 3, stride=(1, 2, 2) if k else (1, 1, 1), padding=1),
                       nn.GroupNorm(8, out), nn.SiLU()]
            c = out
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, feature_dim) penultimate features."""
        return F.silu(self.embed(self.body(x).mean(dim=(2, 3, 4))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(path), metadata={"config": json.dumps(self.config)})
        return path

    @classmethod
    def load(cls, path) -> VideoClassifier:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            config = json.loads(f.metadata()["config"])
        model = cls(**config)
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def train_classifier(videos: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 300,
                     batch_size: int = 32, lr: float = 2e-3, seed: int = 0, width: int = 16,
                     progress: bool = False) -> VideoClassifier:
    """Fit a VideoClassifier on (N, C, T, H, W) clips in [-1, 1] with integer labels (N,)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = VideoClassifier(videos.shape[1], num_classes, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        idx = torch.randint(0, len(videos), (batch_size,), generator=g)
        loss = F.cross_entropy(model(videos[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def classifier_features(model: VideoClassifier, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model.features(videos[i:i + batch_size].float()) for i in range(0, len(videos), batch_size)])


@torch.no_grad()
def classifier_frechet_distance(model: VideoClassifier, fake: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between the classifier features of two video sets (not I3D-FVD; see module doc)."""
    return frechet_distance(*feature_stats(classifier_features(model, fake)),
                            *feature_stats(classifier_features(model, real)))


@torch.no_grad()
def classifier_accuracy(model: VideoClassifier, videos: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.cat([model(videos[i:i + 64].float()).argmax(-1) for i in range(0, len(videos), 64)])
    return float((preds == labels.to(preds.device)).float().mean())


# ------------------------------------------------------------------------------- I3D FVD
FVD_PROTOCOL = {"frames": 16, "size": 224, "range": "[-1, 1]", "features": "I3D logits-layer (400-d)"}


@torch.no_grad()
def i3d_fvd(fake: torch.Tensor, real: torch.Tensor, torchscript_path, *, frames: int = 16, size: int = 224,
            batch_size: int = 8, device="cpu") -> dict:
    """FVD with an I3D TorchScript module loaded from a local path (never downloaded).

    Videos (N, C, T, H, W) in [-1, 1] are cut to the first ``frames`` frames, grey replicated to
    RGB, resized (bilinear) to size x size and passed as (N, 3, frames, size, size) in [-1, 1].
    The module is called as ``model(x, rescale=False, resize=False, return_features=True)`` (the
    StyleGAN-V i3d_torchscript.pt interface), falling back to ``model(x)``. Returns
    {"fvd", "num_fake", "num_real", "frames", "size"}; scores are comparable only under one protocol.
    """
    path = Path(torchscript_path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D TorchScript file {path} does not exist (FVD needs a local copy)")
    model = torch.jit.load(str(path), map_location=device).eval()

    def embed(videos):
        feats = []
        for i in range(0, len(videos), batch_size):
            v = videos[i:i + batch_size, :, :frames].float()
            if v.shape[2] < frames:
                raise ValueError(f"FVD protocol needs {frames} frames, got {v.shape[2]}")
            if v.shape[1] == 1:
                v = v.expand(-1, 3, -1, -1, -1)
            n, c, t, h, w = v.shape
            v = F.interpolate(v.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w), size=(size, size), mode="bilinear",
                              align_corners=False).reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4)
            v = v.to(device)
            try:
                f = model(v, rescale=False, resize=False, return_features=True)
            except (RuntimeError, TypeError):
                f = model(v)
            feats.append(f.reshape(len(v), -1).cpu())
        return torch.cat(feats)

    fvd = frechet_distance(*feature_stats(embed(fake)), *feature_stats(embed(real)))
    return {"fvd": fvd, "num_fake": len(fake), "num_real": len(real), "frames": frames, "size": size}
