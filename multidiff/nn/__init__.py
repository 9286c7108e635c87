"""Layers shared by every backbone: embeddings, modulation (FiLM / adaLN-Zero), attention dispatch."""
from .attention import BACKENDS, Attention, attention, xformers_available
from .embeddings import (
    FourierFeatures,
    LabelEmbedding,
    NoiseLevelEmbedding,
    PooledContextEmbedding,
    SinusoidalEmbedding,
)
from .modulation import AdaLNZero, FiLM, modulate

__all__ = ["BACKENDS", "Attention", "attention", "xformers_available", "FourierFeatures", "LabelEmbedding",
           "PooledContextEmbedding", "NoiseLevelEmbedding", "SinusoidalEmbedding", "FiLM", "AdaLNZero", "modulate"]
