"""What every backbone does with its conditioning, written once (DiT's ``t_embedder + y_embedder``).

:class:`ConditionedBackbone` is a mixin for backbone modules. ``init_conditioning`` builds the three
embeddings (as attributes ``noise_embed``, ``label_embed``, ``context_embed``, the names their
weights carry in checkpoints); ``embed_conditions`` sums them into the one vector (batch, emb_dim)
the blocks are modulated by; ``concat_channels`` appends ``cond["concat"]`` to the input (zeros when
absent) after checking its shape; ``run`` calls a block with gradient checkpointing when it is on.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, PooledContextEmbedding


class ConditionedBackbone:
    """Mixin for ``nn.Module`` backbones: noise level + class label + pooled caption, concat channels,
    gradient checkpointing."""

    gradient_checkpointing: bool = False

    def init_conditioning(self, emb_dim: int, num_classes: int = 0, label_factors=None,
                          cross_attention_dim: int | None = None, pooled_context: bool = False) -> None:
        """The noise-level embedding, the class embedding (num_classes > 0; the label num_classes, or a
        missing label, is the learned null class) and, with ``pooled_context``, the mean caption token
        projected to ``emb_dim``."""
        self.noise_embed = NoiseLevelEmbedding(emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim, label_factors) if num_classes > 0 else None
        self.context_embed = PooledContextEmbedding.if_enabled(pooled_context, cross_attention_dim, emb_dim)

    def embed_conditions(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """(batch, emb_dim) in x's dtype: noise-level embedding + class embedding (null without a label) +
        pooled caption (with ``pooled_context`` and ``cond["context"]``)."""
        batch = x.shape[0]
        emb = self.noise_embed(noise_level.reshape(-1).expand(batch).to(x.device))
        if self.label_embed is not None:
            labels = cond.get("label")
            if labels is None:
                labels = torch.full((batch,), -1, device=x.device, dtype=torch.long)
            emb = emb + self.label_embed(labels.reshape(-1).to(x.device))
        context = cond.get("context")
        if self.context_embed is not None and context is not None:
            emb = emb + self.context_embed(context.to(emb.dtype), cond.get("context_mask"))
        return emb.to(x.dtype)

    @staticmethod
    def concat_channels(x: torch.Tensor, cond: Mapping[str, Any], channels: int) -> torch.Tensor:
        """x with ``cond["concat"]`` (batch, channels, *x's other sizes) appended on dimension 1; zeros
        when absent (nothing given); x itself when ``channels`` is 0."""
        if not channels:
            return x
        want = (x.shape[0], channels, *x.shape[2:])
        extra = cond.get("concat")
        if extra is None:
            extra = x.new_zeros(want)
        elif tuple(extra.shape) != want:
            raise ValueError(f"cond['concat'] must have shape {want}, got {tuple(extra.shape)}")
        return torch.cat([x, extra.to(x.dtype)], dim=1)

    def run(self, block: nn.Module, *args):
        """block(*args), recomputed in backward instead of stored when gradient checkpointing is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
