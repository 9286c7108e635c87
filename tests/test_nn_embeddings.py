"""Scales of the conditioning embeddings (multidiff.nn.embeddings)."""
import pytest
import torch

from multidiff.nn.embeddings import LabelEmbedding, NoiseLevelEmbedding


@pytest.mark.parametrize("factors", [None, (4, 3)])
@torch.no_grad()
def test_label_embeddings_start_at_the_noise_embeddings_scale(factors):
    """Class labels and the noise level are summed into one embedding: a label table started far
    smaller than the noise embedding (DiT's std 0.02 is 6x smaller at init and was 20x smaller after
    training a mel model, whose labels then moved its outputs by 2% of the noise draw's effect) is
    learned around. The labels now start at least as large (unit variance per coordinate)."""
    torch.manual_seed(0)
    dim = 256
    noise = NoiseLevelEmbedding(dim)(torch.tensor([0.002, 0.1, 1.0, 80.0])).norm(dim=1)
    labels = LabelEmbedding(12, dim, factors)(torch.arange(12)).norm(dim=1)
    ratio = labels.mean() / noise.mean()
    assert 1.0 < float(ratio) < 16  # std 1: norm sqrt(256) = 16 against about 2 (old init: 0.32)
    assert float(labels.min()) > 0.5 * float(labels.mean())  # every class, not only a few
    # distinct classes are far apart relative to their size (no collapse onto one direction)
    table = LabelEmbedding(12, dim, factors)(torch.arange(12))
    cos = torch.nn.functional.cosine_similarity(table[:, None], table[None], dim=-1)
    off_diagonal = cos[~torch.eye(12, dtype=torch.bool)]
    assert float(off_diagonal.abs().max()) < (0.75 if factors else 0.3)
