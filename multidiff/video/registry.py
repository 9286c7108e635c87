"""Video's entries in the training registries: the ``video_unet3d`` and ``video_transformer`` backbones, the ``video_clips``
(.npz clip arrays such as Moving MNIST) and ``video_folder`` (folder / manifest of video files)
data sets with optional frame tasks (prediction, interpolation), GIF + PNG-grid previews and
sample statistics / classifier scores. Imported by ``multidiff.train.registry.load_plugins``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.utils import item_generator
from ..nn.presets import build_preset, preset_params
from ..shards import packed_from
from ..train.modality import Modality, register_modality
from ..train.registry import DataSpec, register_dataset, register_model
from .autoencoder import FrameVAEParams, build_frame_vae_entry
from .data import EXTRAPOLATIONS, TASKS, ClipArrayDataset, VideoDataset, task_conditioning
from .io import VIDEO_EXTENSIONS, frame_grid, probe_clip_length, write_gif
from .transformer import TRANSFORMER_PRESETS, VideoTransformer
from .unet3d import UNET3D_PRESETS, UNet3D

MODALITY = "video"


UNet3DParams = preset_params("UNet3DParams", UNet3D, UNET3D_PRESETS, default="small", doc=(
    "A preset of multidiff.video.unet3d (tiny / small / base / large) and overrides of its arguments. "
    "extra_in_channels: None takes the data set's conditioning channels (spec.meta['concat_channels']). "
    "stacked_frames: the clip length for the stacked (frames-as-channels) layout; it must equal the data's."))


def build_video_backbone(name: str, params, spec: DataSpec, gradient_checkpointing: bool):
    """The preset of ``params`` for (channels, frames, height, width) clips: input channels and classes
    from the data, extra_in_channels from its conditioning channels unless set."""
    if len(spec.sample_shape) != 4:
        raise ValueError(f"{name} needs samples of shape (channels, frames, height, width), "
                         f"the data set gives {tuple(spec.sample_shape)}")
    return build_preset(params, gradient_checkpointing=gradient_checkpointing, in_channels=spec.sample_shape[0],
                        num_classes=spec.num_classes,
                        defaults={"extra_in_channels": int(spec.meta.get("concat_channels", 0))})


def build_unet3d(params, spec: DataSpec, *, gradient_checkpointing: bool = False):
    """A UNet3D for (channels, frames, height, width) clips."""
    if params.stacked_frames and len(spec.sample_shape) == 4 and params.stacked_frames != spec.sample_shape[1]:
        raise ValueError(f"model.params.stacked_frames={params.stacked_frames} must equal the data's clip length "
                         f"{spec.sample_shape[1]} (samples {tuple(spec.sample_shape)})")
    return build_video_backbone("video_unet3d", params, spec, gradient_checkpointing)


register_model("video_unet3d", build_unet3d, params=UNet3DParams, modality=MODALITY, example_shape=(1, 16, 32, 32),
               example_batch=8, description="spatio-temporal video U-Net (multidiff.video.unet3d)")


VideoTransformerParams = preset_params("VideoTransformerParams", VideoTransformer, TRANSFORMER_PRESETS,
                                       default="small", doc=(
    "A preset of multidiff.video.transformer (tiny / small / base) and overrides of its arguments. "
    "extra_in_channels: None takes the data set's conditioning channels (spec.meta['concat_channels'])."))


def build_video_transformer(params, spec: DataSpec, *, gradient_checkpointing: bool = False):
    """A Latte-style VideoTransformer for (channels, frames, height, width) clips."""
    return build_video_backbone("video_transformer", params, spec, gradient_checkpointing)


register_model("video_transformer", build_video_transformer, params=VideoTransformerParams, modality=MODALITY,
               example_shape=(1, 12, 32, 32), example_batch=8,
               description="space-time transformer on patches, Latte-style (multidiff.video.transformer)")


# ------------------------------------------------------------------------------ data sets
@dataclass
class TaskParams:
    """The frame task of a video data set (see multidiff.video.data.task_conditioning).

    task: generate | predict | interpolate | mixed; given_frames: frames given for predict
    (the first ones) or interpolate (half at each end); p_unconditional: probability that a
    clip is given no frames (so the model also generates from scratch, and previews, which
    sample without given frames, show something meaningful); conditional: use class labels (None:
    when the data has them, e.g. class sub-folders);
    extrapolate: none | constant_velocity, a first guess at the frames to predict in the
    conditioning channels (predict task only; see task_conditioning); residual: diffuse
    x - guess instead of x (needs extrapolate), so the untrained model (zero output layer)
    already predicts the guess and training learns its corrections, as residual video diffusion
    (Yang, Srivastava & Mandt 2022) corrects a deterministic next-frame predictor.
    """

    task: str = "generate"
    given_frames: int = 0
    p_unconditional: float = 0.0
    conditional: bool | None = False
    extrapolate: str = "none"
    residual: bool = False


@dataclass
class ClipArrayParams(TaskParams):
    """An .npz of uint8 clips (datasets/moving_mnist.py, datasets/bouncing_shapes.py); see
    multidiff.video.data.ClipArrayDataset. num_frames: None = the clips' length. eval_split: the
    held-out clips ``multidiff eval`` compares with (val for choices, test for the final number)."""

    num_frames: int | None = None
    split: str | None = "train"
    eval_split: str = "test"
    random_crop: bool = True
    fps: float = 8.0
    num_classes: int | None = None


@dataclass
class VideoFolderParams(TaskParams):
    """A folder or manifest of video files; see multidiff.video.data.VideoDataset."""

    num_frames: int = 16
    size: int = 64
    fps: float | None = None
    channels: int = 3
    split: str | None = "train"
    random_crop: bool = True
    label_column: str = "label"
    num_classes: int | None = None


class VideoTrainData(torch.utils.data.Dataset):
    """Items as the trainer wants them: x, label (conditional only) and, for a frame task,
    concat + loss_mask (the trainer passes concat to the model in cond, loss_mask to the loss)."""

    def __init__(self, clips, params: TaskParams, shape: tuple, fps: float | None, seed: int):
        if params.task not in TASKS:
            raise ValueError(f"data.params.task: unknown video task {params.task!r}; known: {TASKS}")
        frames = shape[1]
        if params.task != "generate" and not 0 < params.given_frames < frames:
            raise ValueError(f"data.params.given_frames: task {params.task!r} needs 0 < given_frames < {frames}, "
                             f"got {params.given_frames}")
        if params.extrapolate not in EXTRAPOLATIONS:
            raise ValueError(f"data.params.extrapolate: unknown extrapolation {params.extrapolate!r}; "
                             f"known: {EXTRAPOLATIONS}")
        if params.extrapolate != "none" and (params.task != "predict" or params.given_frames < 2):
            raise ValueError(f"data.params.extrapolate {params.extrapolate!r} needs task 'predict' with "
                             f"given_frames >= 2, got task {params.task!r} with {params.given_frames}")
        if params.residual and params.extrapolate == "none":
            raise ValueError("data.params.residual needs data.params.extrapolate (the guess the residual is taken from)")
        if not 0.0 <= params.p_unconditional <= 1.0:
            raise ValueError(f"data.params.p_unconditional must lie in [0, 1], got {params.p_unconditional}")
        self.clips, self.params, self.seed = clips, params, seed
        classes = 0
        if params.conditional or params.conditional is None:
            classes = max(0, getattr(params, "num_classes", None) or clips.num_classes)
            if classes == 0 and params.conditional:
                raise ValueError("data.params.conditional: the data set has no labels")
        concat = shape[0] + 1 if params.task != "generate" else 0
        meta = {"fps": float(fps or 8.0), "task": params.task, "given_frames": params.given_frames,
                "concat_channels": concat, "extrapolate": params.extrapolate,
                "residual": bool(params.residual), "p_unconditional": float(params.p_unconditional)}
        if params.extrapolate != "none":  # the given frames reach the model through a guess built from them
            meta["refuse_masked_sampling"] = (
                f"this model was trained with extrapolated given frames (data.params.extrapolate "
                f"{params.extrapolate!r}); predict with python -m multidiff.video.predict, which builds them, "
                f"or pass concat directly")
        self.spec = DataSpec(tuple(int(s) for s in shape), int(classes), MODALITY, meta)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def rows(self) -> list[dict] | None:
        """Each clip's split and caption (the modality contract's ``rows``)."""
        return getattr(self.clips, "rows", None)

    @property
    def split_record(self) -> dict | None:
        """How a split-less folder was split (multidiff.manifest.select_split); None when the data named it."""
        return getattr(self.clips, "split_record", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.clips.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        out = {"x": item["x"]}
        if self.spec.num_classes > 0:
            out["label"] = item["label"] if item["label"] >= 0 else self.spec.num_classes
        if "text" in item:
            out["text"] = item["text"]
        if self.params.task != "generate":
            # a new draw each epoch, reproducible from (seed, epoch, index) whatever the batch or worker
            g = item_generator(self.seed, self.epoch, index, stream=1)
            out.update(task_conditioning(item["x"], self.params.task, self.params.given_frames, g,
                                         self.params.p_unconditional, self.params.extrapolate))
            guess = out.pop("guess", None)
            if self.params.residual:
                out["x"] = item["x"] - guess
        return out


def build_clip_array(params: ClipArrayParams, path: str | None, seed: int) -> VideoTrainData:
    if path is None:
        raise ValueError("data.path: video_clips needs an .npz (e.g. from datasets/moving_mnist.py)")
    clips = ClipArrayDataset(path, params.num_frames, split=params.split, random_crop=params.random_crop, seed=seed)
    return VideoTrainData(clips, params, clips.shape, params.fps, seed)


def build_video_folder(params: VideoFolderParams, path: str | None, seed: int) -> VideoTrainData:
    if path is None:
        raise ValueError("data.path: video_folder needs a folder or a manifest (.csv / .jsonl) of video files")
    clips = VideoDataset(path, params.num_frames, params.size, params.fps, params.channels, split=params.split,
                         random_crop=params.random_crop, seed=seed, label_column=params.label_column)
    return VideoTrainData(clips, params, (params.channels, params.num_frames, params.size, params.size),
                          params.fps, seed)


register_dataset("video_clips", build_clip_array, params=ClipArrayParams, modality=MODALITY, needs_path=True,
                 description="uint8 clip arrays in an .npz (Moving MNIST, bouncing shapes)")
register_dataset("video_folder", build_video_folder, params=VideoFolderParams, modality=MODALITY, needs_path=True,
                 description="folder or manifest of video files decoded with PyAV (multidiff.video.data.VideoDataset)")


# ------------------------------------------------------------------------- previews / eval
def video_preview(samples: torch.Tensor, out_dir: Path, name: str, *, labels=None, spec=None,
                  max_files: int = 8) -> list[Path]:
    """One GIF per sample (the first ``max_files``) and one PNG grid (a row per sample, up to 16)."""
    fps = float((spec.meta if spec is not None else {}).get("fps", 8.0))
    out_dir = Path(out_dir) / name
    videos = samples.float().clamp(-1, 1)
    scale = max(1, 64 // max(int(videos.shape[-1]), 1))
    paths = [write_gif(out_dir / f"{k:03d}.gif", videos[k], fps, scale=scale) for k in range(min(len(videos), max_files))]
    rows = min(len(videos), 16)
    titles = [str(int(labels[k])) for k in range(rows)] if labels is not None else None
    paths.append(frame_grid(videos[:rows], out_dir / "frames.png", scale=scale, titles=titles))
    return paths


def video_evaluate(samples: torch.Tensor, config, *, labels=None, spec=None) -> dict:
    """Statistics of generated clips, plus classifier scores when the data set has a trained
    classifier (``video_classifier.safetensors`` beside the .npz, from datasets/train_video_classifier.py):
    accuracy against the requested labels and the classifier Frechet distance to the test split
    (not I3D-FVD), beside the judge's own accuracy on the real test clips (clean, and with Gaussian
    noise of std 0.1) and the Frechet distance of real training clips to the same test clips (the floor)."""
    x = samples.float()
    diffs = (x[:, :, 1:] - x[:, :, :-1]).abs().mean() if x.shape[2] > 1 else torch.tensor(0.0)
    out = {"mean": float(x.mean()), "std": float(x.std()), "clipped_fraction": float((x.abs() >= 0.999).float().mean()),
           "frame_difference": float(diffs), "n": int(len(x))}
    path = packed_from(getattr(getattr(config, "data", None), "path", None))  # shards: the manifest they came from
    classifier = Path(path).parent / "video_classifier.safetensors" if path and Path(path).is_file() else None
    if classifier is not None and classifier.is_file() and str(path).endswith(".npz"):
        from .metrics import VideoClassifier, classifier_accuracy, classifier_frechet_distance

        model = VideoClassifier.load(classifier)
        held_out = (getattr(config.data, "params", None) or {}).get("eval_split", "test")
        real = ClipArrayDataset(path, x.shape[2], split=held_out, random_crop=False)
        n = min(len(real), 1000)
        real_x = torch.stack([real.clip(k) for k in range(n)])
        out["classifier_frechet"] = classifier_frechet_distance(model, x, real_x)
        train = ClipArrayDataset(path, x.shape[2], split="train", random_crop=False)
        train_x = torch.stack([train.clip(k) for k in range(min(len(train), n))])
        out["classifier_frechet_real_floor"] = classifier_frechet_distance(model, train_x, real_x)  # train vs test
        if real.num_classes > 0:  # the judge's own accuracy on real test clips, clean and with noise
            real_labels = real.labels_t[:n]
            noise = 0.1 * torch.randn(real_x.shape, generator=torch.Generator().manual_seed(0))
            out["classifier_real_accuracy"] = classifier_accuracy(model, real_x, real_labels)
            out["classifier_real_accuracy_noise0.1"] = classifier_accuracy(model, (real_x + noise).clamp(-1, 1),
                                                                            real_labels)
        if labels is not None and spec is not None and 0 < spec.num_classes <= model.config["num_classes"]:
            requested = torch.as_tensor(labels)
            keep = requested < spec.num_classes
            if keep.any():
                out["classifier_accuracy"] = classifier_accuracy(model, x[keep], requested[keep])
    return out


def video_reconstruction_metrics(recon: torch.Tensor, x: torch.Tensor) -> dict:
    """A video autoencoder's held-out score beside MSE / PSNR: SSIM (Wang et al. 2004), for frames of at
    least 11x11 pixels."""
    from .metrics import ssim

    return {"ssim": float(ssim(recon.clamp(-1, 1), x).mean())} if min(x.shape[-2:]) >= 11 else {}


register_modality(Modality(MODALITY, preview=video_preview, evaluate=video_evaluate,
                           reconstruction_metrics=video_reconstruction_metrics,
                           deterministic_data={"split": None, "random_crop": False},
                           file_extensions=VIDEO_EXTENSIONS, probe=probe_clip_length,
                           description="clips (channels, frames, height, width): MP4 / GIF previews, classifier metrics"))


register_model("video_vae", build_frame_vae_entry, params=FrameVAEParams, modality=MODALITY, kind="autoencoder",
               example_shape=(1, 8, 32, 32), example_batch=8,
               description="per-frame AutoencoderKL for latent video diffusion (multidiff.video.autoencoder)")
