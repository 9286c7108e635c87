"""diffusers-compatible pipelines: ``AudioDiffusionPipeline``, ``VideoDiffusionPipeline``,
``PointCloudDiffusionPipeline`` and ``ImageDiffusionPipeline`` (``DiffusionPipeline`` subclasses over our
backbones, saved to and loaded from local folders), their outputs that write WAV / MP4 / GIF / PLY / PNG, and
``export_pipeline`` (``multidiff export``) from a trained checkpoint. See base.py for the folder layout.
"""
from .audio import AudioDiffusionOutput, AudioDiffusionPipeline
from .base import MODALITIES, PIPELINES, MultidiffPipeline, MultidiffSchedulerConfig, pipeline_folder
from .export import export_pipeline
from .images import ImageDiffusionOutput, ImageDiffusionPipeline
from .shapes import PointCloudDiffusionOutput, PointCloudDiffusionPipeline
from .video import VideoDiffusionOutput, VideoDiffusionPipeline

__all__ = ["AudioDiffusionOutput", "AudioDiffusionPipeline", "MODALITIES", "PIPELINES", "MultidiffPipeline",
           "MultidiffSchedulerConfig", "pipeline_folder", "export_pipeline", "PointCloudDiffusionOutput",
           "PointCloudDiffusionPipeline", "VideoDiffusionOutput", "VideoDiffusionPipeline", "ImageDiffusionOutput",
           "ImageDiffusionPipeline"]
