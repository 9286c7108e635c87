"""PointCloudDiffusionPipeline: 3D point clouds with a multidiff.shapes.transformer.PointCloudTransformer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..shapes.io import save_ply
from ..shapes.transformer import PointCloudTransformer
from .base import MultidiffPipeline, MultidiffSchedulerConfig, output_paths


@dataclass
class PointCloudDiffusionOutput(BaseOutput):
    """point_clouds: (batch, points, 3 + features) float32, xyz first, in the training data's
    normalised coordinates (torch, or numpy with output_type="np"); class_labels: per sample."""

    point_clouds: torch.Tensor | np.ndarray
    class_labels: list[int] | None = None

    def save(self, folder, prefix: str = "sample") -> list[Path]:
        """One binary PLY (xyz vertices) per sample, <folder>/<prefix>-000.ply ...; returns the paths."""
        paths = output_paths(folder, prefix, len(self.point_clouds), "ply")
        return [save_ply(p, torch.as_tensor(c)[:, :3]) for p, c in zip(paths, self.point_clouds)]

    def save_meshes(self, folder, prefix: str = "sample", file_format: str = "obj",
                    method: str = "tangent_planes") -> list[Path]:
        """One surface mesh per sample (multidiff.shapes.mesh.reconstruct), <folder>/<prefix>-000.obj ...
        (obj, glb, ply or stl through trimesh); returns the paths."""
        from ..shapes.mesh import reconstruct

        paths = output_paths(folder, prefix, len(self.point_clouds), file_format)
        for p, c in zip(paths, self.point_clouds):
            reconstruct(torch.as_tensor(c)[:, :3], method).export(str(p))
        return paths


class PointCloudDiffusionPipeline(MultidiffPipeline):
    """Point clouds from a PointCloudTransformer: samples of shape (batch, points, 3 + features).

    ``num_points`` (call keyword) overrides the stored point count (any count works: the
    transformer has no positional order).
    """

    modality = "shapes"
    backbone_name = "transformer"
    backbone_class = PointCloudTransformer
    shape_arguments = ("num_points",)

    def __init__(self, transformer: PointCloudTransformer, scheduler: MultidiffSchedulerConfig, text_encoder=None, vae=None):
        super().__init__()
        self._register(transformer, scheduler, text_encoder, vae)

    def sample_shape(self, num_points: int | None = None) -> tuple[int, int]:
        stored, channels = self._stored_shape(2, -1)
        points = stored if num_points is None else int(num_points)
        if points < 1:
            raise ValueError(f"num_points must be >= 1, got {points}")
        return points, channels

    def _output(self, samples, class_labels) -> PointCloudDiffusionOutput:
        return PointCloudDiffusionOutput(samples, class_labels)
