"""multidiff.video: spatio-temporal U-Net (unet3d), PyAV video I/O (io), data adapters (data),
metrics (metrics), frame prediction (predict) and the trainer plug-in (registry).

``read_video`` and the writers are importable from here; the backbone loads lazily (diffusers).
"""
from .io import VideoDecodeError, frame_grid, probe_video, read_video, write_gif, write_mp4

__all__ = ["VideoDecodeError", "frame_grid", "probe_video", "read_video", "write_gif", "write_mp4", "UNet3D",
           "UNET3D_PRESETS"]


def __getattr__(name):
    if name in ("UNet3D", "UNET3D_PRESETS"):
        from . import unet3d

        return getattr(unet3d, name)
    raise AttributeError(f"module 'multidiff.video' has no attribute {name!r}")
