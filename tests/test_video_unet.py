"""UNet3D: shapes, identity initialisation of the temporal layers, frame-count generalisation,
image mode, conditioning paths, save / load."""
import pytest
import torch

from multidiff.video.unet3d import UNET3D_PRESETS, TemporalAttention, TemporalConv, UNet3D, unet3d_tiny


@pytest.fixture(autouse=True)
def _threads(single_thread):
    yield


def _randomise_all_but_temporal(model: UNet3D, seed: int = 0) -> UNet3D:
    """Give every zero-initialised non-temporal weight random values (so the output is not zero),
    leaving the temporal layers at their initialisation."""
    g = torch.Generator().manual_seed(seed)
    temporal = set()
    for m in model.modules():
        if isinstance(m, (TemporalConv, TemporalAttention)):
            temporal |= {id(p) for p in m.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in temporal:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_shapes_of_every_preset_small_input():
    x = torch.randn(1, 3, 2, 16, 16)
    for name in ("tiny", "small"):
        model = UNET3D_PRESETS[name](in_channels=3)
        assert model(x, torch.ones(1)).shape == x.shape


def test_output_starts_at_zero_and_gradients_reach_every_parameter():
    model = unet3d_tiny(num_classes=3, extra_in_channels=2, cross_attention_dim=8)
    x = torch.randn(2, 1, 4, 8, 8)
    cond = {"label": torch.tensor([0, 2]), "concat": torch.randn(2, 2, 4, 8, 8), "context": torch.randn(2, 5, 8)}
    out = model(x, torch.tensor([0.5, 2.0]), cond)
    assert out.shape == x.shape and float(out.detach().abs().max()) == 0.0  # zero-initialised output conv
    _randomise_all_but_temporal(model)
    for m in model.modules():  # and the temporal layers too, so that every path carries gradient
        if isinstance(m, TemporalConv):
            torch.nn.init.normal_(m.proj.weight, std=0.1)
        if isinstance(m, TemporalAttention):
            torch.nn.init.normal_(m.attn.out.weight, std=0.1)
    model(x, torch.tensor([0.5, 2.0]), cond).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert missing == []


def test_temporal_layers_are_the_identity_at_init():
    """At initialisation a video's output equals the per-frame image model's output."""
    model = _randomise_all_but_temporal(unet3d_tiny(in_channels=2)).eval()
    x = torch.randn(2, 2, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 3.0])
    with torch.no_grad():
        video = model(x, sigma)
        image = model(x, sigma, image_mode=True)
        per_frame = torch.stack([model(x[:, :, t:t + 1], sigma)[:, :, 0] for t in range(5)], dim=2)
    assert float(video.abs().mean()) > 1e-3
    torch.testing.assert_close(video, image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(video, per_frame, rtol=1e-5, atol=1e-5)


def test_trained_temporal_layers_mix_frames_and_image_mode_switches_them_off():
    model = _randomise_all_but_temporal(unet3d_tiny()).eval()
    for m in model.modules():
        if isinstance(m, TemporalConv):
            torch.nn.init.normal_(m.proj.weight, std=0.2)
    x = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.ones(2)
    with torch.no_grad():
        video, image = model(x, sigma), model(x, sigma, image_mode=True)
        x2 = x.clone()
        x2[:, :, 3] += 1.0  # changing the last frame changes earlier frames' outputs (temporal mixing)
        video2 = model(x2, sigma)
        # per-sample image mode: sample 1 is a batch of independent images
        mixed = model(x, sigma, {"image_mode": torch.tensor([False, True])})
    assert float((video - image).abs().max()) > 1e-3
    assert float((video2[:, :, 0] - video[:, :, 0]).abs().max()) > 1e-4
    torch.testing.assert_close(mixed[0], video[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], image[1], rtol=1e-5, atol=1e-5)


def test_frame_count_generalises_with_relative_positions():
    """Rotary positions make temporal-attention scores depend on frame differences only, so a
    model runs on any frame count; the scores are unchanged by a global shift of the positions."""
    from multidiff.video.unet3d import _rotary

    model = _randomise_all_but_temporal(unet3d_tiny()).eval()
    for m in model.modules():
        if isinstance(m, TemporalAttention):
            torch.nn.init.normal_(m.attn.out.weight, std=0.3)
    with torch.no_grad():
        for frames in (1, 3, 8, 17):
            x = torch.randn(1, 1, frames, 8, 8)
            out = model(x, torch.ones(1))
            assert out.shape == x.shape and torch.isfinite(out).all()
    q, k = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    pos = torch.arange(6)
    s0 = _rotary(q, pos) @ _rotary(k, pos).transpose(-1, -2)
    s7 = _rotary(q, pos + 7) @ _rotary(k, pos + 7).transpose(-1, -2)
    torch.testing.assert_close(s0, s7, rtol=1e-4, atol=1e-4)
    assert float((s0 - q @ k.transpose(-1, -2)).abs().max()) > 1e-3  # positions do enter the scores


def test_conditioning_changes_the_output_and_bad_shapes_are_named():
    model = _randomise_all_but_temporal(unet3d_tiny(num_classes=4, extra_in_channels=2, cross_attention_dim=6)).eval()
    x = torch.randn(1, 1, 3, 8, 8)
    s = torch.ones(1)
    with torch.no_grad():
        base = model(x, s)
        assert float((model(x, s, {"label": torch.tensor([1])}) - base).abs().max()) > 1e-4
        assert float((model(x, s, {"concat": torch.ones(1, 2, 3, 8, 8)}) - base).abs().max()) > 1e-4
        assert float((model(x, s, {"context": torch.randn(1, 2, 6)}) - base).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="concat"):
        model(x, s, {"concat": torch.ones(1, 1, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"\(batch, 1, frames, height, width\)"):
        model(torch.randn(1, 1, 8, 8), s)
    with pytest.raises(ValueError, match="divide"):
        model(torch.randn(1, 1, 2, 7, 8), s)


def test_deterministic_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    a = _randomise_all_but_temporal(unet3d_tiny(num_classes=2)).eval()
    a.save_pretrained(tmp_path / "m")
    b = UNet3D.from_pretrained(tmp_path / "m").eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # bit-exact weights
    x = torch.randn(1, 1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(a(x, torch.ones(1)), a(x, torch.ones(1)), rtol=0, atol=0)  # deterministic
        # same weights, other memory (safetensors' mapping): BLAS may round differently, by an ulp or so
        torch.testing.assert_close(a(x, torch.ones(1)), b(x, torch.ones(1)), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_matches():
    model = _randomise_all_but_temporal(unet3d_tiny())
    x = torch.randn(1, 1, 3, 8, 8)
    model(x, torch.ones(1)).sum().backward()
    g0 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, torch.ones(1)).sum().backward()
    g1 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for u, v in zip(g0, g1):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


def test_patching_and_coarse_only_temporal_attention():
    model = _randomise_all_but_temporal(unet3d_tiny(patch_size=2, temporal_attention_levels=(1,))).eval()
    assert sum(isinstance(m, TemporalAttention) for m in model.modules()) == 1  # only the mid block (level 1)
    x = torch.randn(1, 1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.ones(1)), model(x, torch.ones(1), image_mode=True))
    with pytest.raises(ValueError, match="patch_size"):
        model(torch.randn(1, 1, 3, 6, 6), torch.ones(1))


def test_stacked_layout_mixes_every_frame_in_one_2d_unet():
    """stacked_frames: the clip's frames on the channel axis of a 2D U-Net; no temporal layers are
    built, each output frame depends on every input frame, and another clip length is refused."""
    model = _randomise_all_but_temporal(unet3d_tiny(stacked_frames=4, extra_in_channels=2, num_classes=3)).eval()
    assert not any(isinstance(m, (TemporalConv, TemporalAttention)) for m in model.modules())
    assert model.in_conv.in_channels == (1 + 2) * 4 and model.out_conv.out_channels == 4
    x = torch.randn(2, 1, 4, 8, 8, requires_grad=True)
    cond = {"label": torch.tensor([0, 1]), "concat": torch.randn(2, 2, 4, 8, 8)}
    out = model(x, torch.tensor([0.5, 2.0]), cond)
    assert out.shape == x.shape
    out[:, :, 3].sum().backward()  # the last frame's output reaches back to the first frame's input
    assert float(x.grad[:, :, 0].abs().sum()) > 0
    x2 = x.detach().clone()
    x2[1] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(x2, torch.tensor([0.5, 2.0]), cond)[0], out[0].detach())
    with pytest.raises(ValueError, match="stacks exactly 4 frames"):
        model(torch.randn(1, 1, 5, 8, 8), torch.ones(1))


def test_stacked_layout_from_the_registry_takes_the_data_clip_length():
    from multidiff.train.registry import DataSpec
    from multidiff.video.registry import UNet3DParams, build_unet3d

    spec = DataSpec((1, 6, 8, 8), 0, "video", {"concat_channels": 2})
    model = build_unet3d(UNet3DParams(preset="tiny", stacked_frames=6), spec)
    assert model.in_conv.in_channels == 3 * 6 and model(torch.randn(1, 1, 6, 8, 8), torch.ones(1)).shape == (1, 1, 6, 8, 8)
    with pytest.raises(ValueError, match="stacked_frames=4 must equal the data's clip length 6"):
        build_unet3d(UNet3DParams(preset="tiny", stacked_frames=4), spec)


def test_concatenated_skips_shapes_gradients_and_temporal_identity():
    """skips="concat" (the image UNet2D's topology): blocks at every level, [path, skip] into each up
    level; the output starts at zero, every parameter gets gradient, and with the temporal layers at
    their initialisation a clip is its frames denoised one by one."""
    model = unet3d_tiny(num_classes=3, extra_in_channels=2, cross_attention_dim=8, skips="concat", blocks_per_level=2)
    x = torch.randn(2, 1, 4, 8, 8)
    cond = {"label": torch.tensor([0, 2]), "concat": torch.randn(2, 2, 4, 8, 8), "context": torch.randn(2, 5, 8)}
    out = model(x, torch.tensor([0.5, 2.0]), cond)
    assert out.shape == x.shape and float(out.detach().abs().max()) == 0.0
    assert len(model.down_blocks) == len(model.up_blocks) == 2  # a skip from the coarsest level too
    assert model.up_blocks[0][0].conv1.in_channels == 2 * 32  # the coarsest up level reads [path, skip]
    plain = _randomise_all_but_temporal(unet3d_tiny(in_channels=2, skips="concat")).eval()
    clip = torch.randn(2, 2, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 3.0])
    with torch.no_grad():
        video = plain(clip, sigma)
        per_frame = torch.stack([plain(clip[:, :, t:t + 1], sigma)[:, :, 0] for t in range(5)], dim=2)
    assert float(video.abs().mean()) > 1e-3
    torch.testing.assert_close(video, per_frame, rtol=1e-5, atol=1e-5)
    _randomise_all_but_temporal(model)
    for m in model.modules():
        if isinstance(m, TemporalConv):
            torch.nn.init.normal_(m.proj.weight, std=0.1)
        if isinstance(m, TemporalAttention):
            torch.nn.init.normal_(m.attn.out.weight, std=0.1)
    model(x, torch.tensor([0.5, 2.0]), cond).square().sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0] == []
    with pytest.raises(ValueError, match="skips must be 'add' or 'concat'"):
        unet3d_tiny(skips="sum")


def test_added_skips_keep_the_parameter_names_of_earlier_checkpoints():
    names = [n for n, _ in unet3d_tiny().named_parameters()]
    assert "down_blocks.0.0.conv1.weight" in names
    assert not any(n.startswith("down_blocks.1.") for n in names)  # no blocks at the coarsest level: as before
    assert any(n.startswith("upsamplers.0.") for n in names) and not any(n.startswith("up_blocks.1.") for n in names)
