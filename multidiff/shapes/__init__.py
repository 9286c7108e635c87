"""multidiff.shapes: 3D shape generation on point clouds (batch, points, 3 + features).

* transformer: PointCloudTransformer (full attention or latent tokens, upsampler) and presets
* io: sample_points / load_mesh (trimesh), normalisation, augmentation, PLY / PNG / mesh writers
* data: ShapeDataset over a folder or manifest of meshes (cached surface samples)
* metrics: Chamfer, EMD (exact / blockwise), MMD / COV / 1-NNA (PointFlow)
* tasks: completion from a partial cloud, upsampling
* builders: procedural, sweethome3d-furniture and pybullet_data sets
* registry: the trainer's ``shapes_transformer`` model, ``shapes`` data set, previews, evaluator
"""
from .io import (
    MESH_EXTENSIONS,
    NORMALIZATIONS,
    MeshLoadError,
    Normalization,
    augment,
    fit_normalization,
    global_statistics,
    load_mesh,
    mesh_from_points,
    render_sheet,
    sample_points,
    save_ply,
)
from .transformer import POINT_PRESETS, PointCloudTransformer

__all__ = ["MESH_EXTENSIONS", "NORMALIZATIONS", "MeshLoadError", "Normalization", "augment", "fit_normalization",
           "global_statistics", "load_mesh", "mesh_from_points", "render_sheet", "sample_points", "save_ply",
           "POINT_PRESETS", "PointCloudTransformer"]
