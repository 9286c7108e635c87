import pytest
import torch

from multidiff.audio.unet1d import UNET1D_PRESETS, UNet1D, unet1d_tiny


def perturb_zero_inits(model, std=0.1):
    """Give the zero-initialised layers (output conv, residual convs, FiLM, attention out) random weights."""
    torch.nn.init.normal_(model.out_conv.weight, std=std)
    for m in model.modules():
        if hasattr(m, "out") and isinstance(m.out, torch.nn.Linear):
            torch.nn.init.normal_(m.out.weight, std=std)
        if m.__class__.__name__ == "ResBlock1d":
            torch.nn.init.normal_(m.conv2.weight, std=std)
        if m.__class__.__name__ == "FiLM":
            torch.nn.init.normal_(m.proj[1].weight, std=std)


def test_shapes_any_divisible_length_and_stereo():
    model = unet1d_tiny(in_channels=2)
    for length in (64, 1024, 64 * 37):
        x = torch.randn(2, 2, length)
        assert model(x, torch.tensor([0.1, 2.0])).shape == (2, 2, length)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 2, 100), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"\(batch, 2, length\)"):
        model(torch.randn(1, 1, 128), torch.tensor([0.0]))


def test_zero_init_output_and_gradient_flow_to_all_parameters():
    torch.manual_seed(0)
    model = unet1d_tiny(num_classes=4, extra_in_channels=2, cross_attention_dim=8)
    x = torch.randn(3, 1, 256)
    cond = {"label": torch.tensor([0, 1, 4]), "concat": torch.randn(3, 2, 256), "context": torch.randn(3, 5, 8)}
    out = model(x, torch.tensor([0.5, 1.0, 2.0]), cond)
    assert torch.count_nonzero(out) == 0  # zero-initialised last conv: a new model predicts 0
    # once the zero-initialised layers move, every parameter receives gradient
    perturb_zero_inits(model)
    model(x, torch.tensor([0.5, 1.0, 2.0]), cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_conditioning_changes_output_and_null_label():
    torch.manual_seed(0)
    model = unet1d_tiny(num_classes=3)
    perturb_zero_inits(model)
    x = torch.randn(1, 1, 256)
    a = model(x, torch.tensor([1.0]), {"label": torch.tensor([0])})
    b = model(x, torch.tensor([1.0]), {"label": torch.tensor([1])})
    null_a = model(x, torch.tensor([1.0]), {"label": torch.tensor([-1])})
    null_b = model(x, torch.tensor([1.0]), {"label": torch.tensor([3])})
    uncond = model(x, torch.tensor([1.0]))
    assert not torch.allclose(a, b)
    assert torch.equal(null_a, null_b) and torch.equal(null_a, uncond)
    with pytest.raises(ValueError, match="class labels"):
        model(x, torch.tensor([1.0]), {"label": torch.tensor([7])})


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    model = unet1d_tiny()
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    x = torch.randn(2, 1, 256)
    t = torch.tensor([0.3, 1.0])
    model(x, t).sum().backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    model(x, t).sum().backward()
    for a, p in zip(g1, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_save_pretrained_round_trip(tmp_path):
    model = unet1d_tiny(num_classes=2)
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet1D.from_pretrained(tmp_path)
    x = torch.randn(1, 1, 128)
    torch.testing.assert_close(model(x, torch.tensor([1.0])), loaded(x, torch.tensor([1.0])))


def test_presets_grow():
    sizes = [sum(p.numel() for p in f().parameters()) for f in UNET1D_PRESETS.values()]
    assert sizes == sorted(sizes) and sizes[0] > 1e5


def test_bad_factor_config():
    with pytest.raises(ValueError, match="factors"):
        UNet1D(channels=(8, 16), factors=(2, 2))


def test_patched_unet_shapes_and_length_rule():
    model = UNet1D(channels=(16, 32), factors=(2,), blocks_per_level=1, attention_levels=(1,), emb_dim=32,
                   patch_size=16, num_classes=3)
    assert model.total_factor == 32
    x = torch.randn(2, 1, 32 * 7)
    assert model(x, torch.tensor([0.1, 1.0]), {"label": torch.tensor([0, 2])}).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 48), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="patch_size"):
        UNet1D(channels=(8, 16), factors=(2,), patch_size=0)


def test_conditioning_token_lets_attention_see_the_label():
    torch.manual_seed(0)
    model = unet1d_tiny(num_classes=3, conditioning_token=True)
    # only the attention path may carry the label: zero FiLM so res blocks ignore the embedding
    perturb_zero_inits(model)
    for m in model.modules():
        if m.__class__.__name__ == "FiLM":
            torch.nn.init.zeros_(m.proj[1].weight)
            torch.nn.init.zeros_(m.proj[1].bias)
    x = torch.randn(1, 1, 256)
    a = model(x, torch.tensor([1.0]), {"label": torch.tensor([0])})
    b = model(x, torch.tensor([1.0]), {"label": torch.tensor([1])})
    assert (a - b).abs().max() > 1e-4
    plain = unet1d_tiny(num_classes=3)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())
