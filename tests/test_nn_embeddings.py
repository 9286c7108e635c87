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


@torch.no_grad()
def test_pooled_context_is_the_masked_mean_and_starts_at_label_scale():
    """PooledContextEmbedding averages only the real tokens (padding changes nothing) and its output
    starts about as large as a label embedding's, so a caption is not drowned by the noise level."""
    from multidiff.nn.embeddings import PooledContextEmbedding

    torch.manual_seed(0)
    pool = PooledContextEmbedding(128, 256)
    context = torch.randn(3, 7, 128)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=torch.bool)
    out = pool(context, mask)
    assert out.shape == (3, 256)
    for i, n in enumerate((7, 4, 1)):  # closed form: the projection of the mean of the first n tokens
        want = pool.proj(pool.norm(context[i, :n].mean(0)))
        torch.testing.assert_close(out[i], want, rtol=1e-5, atol=1e-5)
    garbage = context.clone()
    garbage[~mask] = 1e3
    torch.testing.assert_close(pool(garbage, mask), out)
    torch.testing.assert_close(pool(context), pool(context, torch.ones(3, 7, dtype=torch.bool)))
    sizes = pool(torch.randn(64, 5, 128)).norm(dim=1)
    assert 8 < float(sizes.mean()) < 24  # unit variance per coordinate: about sqrt(256) = 16
    with pytest.raises(ValueError, match="context_mask"):
        pool(context, mask[:, :3])


@pytest.mark.parametrize("family", ["audio", "video", "shapes"])
@torch.no_grad()
def test_pooled_context_enters_every_backbones_noise_embedding(family):
    """With pooled_context all three backbones add the pooled caption to their noise-level
    embedding in forward, once per call with a context and not at all without one."""
    from multidiff.audio.unet1d import UNet1D
    from multidiff.shapes.transformer import PointCloudTransformer
    from multidiff.video.unet3d import UNet3D

    torch.manual_seed(0)
    kw = dict(cross_attention_dim=16, pooled_context=True)
    if family == "audio":
        model, x = UNet1D(channels=(8, 16), factors=(2,), blocks_per_level=1, attention_levels=(1,), emb_dim=32,
                          **kw), torch.randn(2, 1, 16)
    elif family == "video":
        model, x = UNet3D(channels=(8, 16), emb_dim=32, spatial_attention_levels=(1,), **kw), torch.randn(2, 1, 3, 8, 8)
    else:
        model, x = PointCloudTransformer(dim=32, depth=1, heads=2, fourier_features=8, **kw), torch.randn(2, 10, 3)
    seen = []
    model.context_embed.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    context, mask = torch.randn(2, 3, 16), torch.tensor([[True, True, False], [True, False, False]])
    assert model(x, torch.full((2,), 1.0), {"context": context, "context_mask": mask}).shape == x.shape
    assert seen == [torch.Size([2, 32])]
    model(x, torch.full((2,), 1.0), {})
    assert len(seen) == 1
    with pytest.raises(ValueError, match="cross_attention_dim"):
        type(model)(pooled_context=True)
