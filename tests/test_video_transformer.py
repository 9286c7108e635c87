"""The Latte-style video transformer: shapes, factorised attention, conditioning, gradient flow."""
import pytest
import torch

from multidiff.train.testing import perturbed
from multidiff.video.transformer import VideoTransformer, transformer_tiny


def test_fresh_model_is_the_zero_map_and_shapes_follow_the_input():
    model = transformer_tiny(in_channels=3, num_classes=4)
    x = torch.randn(2, 3, 5, 16, 24)
    assert torch.equal(model(x, torch.rand(2)), torch.zeros_like(x))  # adaLN-Zero + zero final layer
    model = perturbed(model)
    for frames, h, w in [(5, 16, 24), (1, 8, 8), (9, 32, 16)]:  # any frame count, any multiple of the patch
        y = model(torch.randn(2, 3, frames, h, w), torch.rand(2), {"label": torch.tensor([0, 3])})
        assert y.shape == (2, 3, frames, h, w) and torch.isfinite(y).all()


def test_spatial_blocks_mix_within_a_frame_and_temporal_blocks_across_frames():
    """Perturb one patch of frame 0: with only a spatial block the other frames do not move; with a
    temporal block after it the same patch position moves in every frame."""
    torch.manual_seed(0)
    model = perturbed(VideoTransformer(in_channels=1, patch_size=4, hidden_dim=32, depth=2, heads=2, emb_dim=32))
    x = torch.randn(1, 1, 4, 16, 16)
    x2 = x.clone()
    x2[0, 0, 0, :4, :4] += 1.0   # patch (0, 0) of frame 0
    spatial_only = torch.nn.ModuleList([model.blocks[0]])
    full, model.blocks = model.blocks, spatial_only
    d = (model(x2, torch.ones(1)) - model(x, torch.ones(1))).abs()
    assert d[:, :, 0].amax() > 1e-4 and d[:, :, 1:].amax() == 0      # frame 0 only
    model.blocks = full
    d = (model(x2, torch.ones(1)) - model(x, torch.ones(1))).abs()
    assert (d[0, 0, 1:, :4, :4].flatten(1).amax(1) > 1e-5).all()     # the same position in every frame


def test_labels_concat_and_context_change_the_output():
    model = perturbed(transformer_tiny(in_channels=1, num_classes=3, extra_in_channels=2, cross_attention_dim=8))
    x, s = torch.randn(2, 1, 3, 8, 8), torch.full((2,), 0.5)
    base = model(x, s)
    assert not torch.allclose(model(x, s, {"label": torch.tensor([0, 1])}), base)
    assert not torch.allclose(model(x, s, {"concat": torch.randn(2, 2, 3, 8, 8)}), base)
    assert not torch.allclose(model(x, s, {"context": torch.randn(2, 5, 8)}), base)
    with pytest.raises(ValueError, match="concat"):
        model(x, s, {"concat": torch.randn(2, 1, 3, 8, 8)})
    with pytest.raises(ValueError, match="multiples of patch_size 4"):
        model(torch.randn(1, 1, 3, 6, 8), torch.ones(1))


def test_every_parameter_gets_a_gradient_and_checkpointing_changes_nothing():
    model = perturbed(transformer_tiny(in_channels=1, num_classes=2)).train()
    x, s, cond = torch.randn(2, 1, 3, 8, 8), torch.rand(2), {"label": torch.tensor([0, 1])}
    model(x, s, cond).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items()), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, s, cond).square().mean().backward()
    assert all(torch.allclose(p.grad, grads[n], atol=1e-6) for n, p in model.named_parameters())


def test_positions_are_distinct_and_bad_settings_are_refused():
    pos = transformer_tiny(hidden_dim=16).positions(frames=5, rows=3, cols=4).reshape(60, 16)  # every token
    assert torch.cdist(pos, pos).add(torch.eye(60)).min() > 0.1
    with pytest.raises(ValueError, match="depth must be an even"):
        VideoTransformer(depth=3)
    with pytest.raises(ValueError, match="patch_size"):
        VideoTransformer(patch_size=0)
