"""Preview files as tracker media: pictures, sounds, animations and 3D files, told apart by their
extension, logged to whichever of accelerate's trackers take them (the trainer calls ``log_media``
after each preview, so any modality whose previews are such files gets them logged)."""
from __future__ import annotations

from pathlib import Path

PICTURES = (".png", ".jpg", ".jpeg")
SOUNDS = (".wav", ".flac", ".ogg")
ANIMATIONS = (".gif", ".mp4")
MODELS_3D = (".obj", ".glb", ".gltf", ".stl")  # what wandb.Object3D reads


def log_media(accelerator, paths, step: int) -> int:
    """Log preview files to the trackers of ``accelerator`` that take media; returns how many items
    were logged. TensorBoard: pictures and sounds. wandb: pictures, sounds, animations and 3D files.
    Other trackers get the scalars only (their media calls differ; the files stay in the run folder)."""
    paths = [Path(p) for p in paths]
    logged = 0
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            logged += _tensorboard(tracker.writer, paths, step)
        elif tracker.name == "wandb":
            logged += _wandb(tracker.run, paths, step)
    return logged


def _picture_array(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tensorboard(writer, paths, step: int) -> int:
    import soundfile as sf
    import torch

    n = 0
    for p in paths:
        suffix = p.suffix.lower()
        if suffix in PICTURES:
            writer.add_image(f"preview/{p.stem}", _picture_array(p), step, dataformats="HWC")
        elif suffix in SOUNDS:
            wave, rate = sf.read(str(p), dtype="float32", always_2d=True)
            writer.add_audio(f"preview/{p.stem}", torch.from_numpy(wave.mean(1))[None], step, sample_rate=rate)
        else:
            continue
        n += 1
    writer.flush()
    return n


def _wandb(run, paths, step: int) -> int:
    import wandb

    items = {}
    for p in paths:
        suffix = p.suffix.lower()
        if suffix in PICTURES:
            items[f"preview/{p.stem}"] = wandb.Image(str(p))
        elif suffix in SOUNDS:
            items[f"preview/{p.stem}"] = wandb.Audio(str(p))
        elif suffix in ANIMATIONS:
            items[f"preview/{p.stem}"] = wandb.Video(str(p), format=suffix[1:])
        elif suffix in MODELS_3D:
            items[f"preview/{p.stem}"] = wandb.Object3D(str(p))
    if items:
        run.log(items, step=step)
    return len(items)
