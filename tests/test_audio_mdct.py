import math

import numpy as np
import pytest
import torch

from multidiff.audio.mdct import imdct, mdct, mdct_basis
from multidiff.audio.unet1d import UNet1D, unet1d_tiny
from multidiff.nn import LabelEmbedding


def reference_mdct(x: np.ndarray, hop: int) -> np.ndarray:
    """Textbook MDCT of each periodic frame x[k hop : k hop + 2 hop], sine window, sqrt(2/hop) scaling."""
    n = np.arange(2 * hop)
    window = np.sin(np.pi * (n + 0.5) / (2 * hop))
    frames = len(x) // hop
    out = np.zeros((hop, frames))
    for t in range(frames):
        seg = x[(t * hop + n) % len(x)]
        for k in range(hop):
            out[k, t] = math.sqrt(2 / hop) * np.sum(window * seg * np.cos(np.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5)))
    return out


def test_mdct_matches_textbook_formula():
    x = np.random.default_rng(0).standard_normal(96)
    ours = mdct(torch.from_numpy(x), 8).numpy()
    np.testing.assert_allclose(ours, reference_mdct(x, 8), atol=1e-12)


@pytest.mark.parametrize("hop", [1, 4, 32])
def test_mdct_is_orthogonal_and_imdct_inverts(hop):
    length = hop * 8
    matrix = torch.stack([mdct(e, hop).reshape(-1) for e in torch.eye(length, dtype=torch.float64)])
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(length, dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.randn(2, 3, length, dtype=torch.float64)
    coeffs = mdct(x, hop)
    assert coeffs.shape == (2, 3, hop, 8)
    torch.testing.assert_close(imdct(coeffs), x, atol=1e-12, rtol=0)
    # isotropic noise stays isotropic: Parseval
    torch.testing.assert_close(coeffs.square().sum(), x.square().sum())


def test_mdct_bands_localise_a_tone():
    sr, hop = 16000, 32
    t = torch.arange(4096) / sr
    coeffs = mdct(torch.sin(2 * math.pi * 1000.0 * t), hop)  # bands are sr / (2 hop) = 250 Hz wide
    energy = coeffs.square().sum(-1)
    assert int(energy.argmax()) in (3, 4)  # 1000 Hz sits on the edge of band 3 [750, 1000) and band 4
    assert energy[2:6].sum() / energy.sum() > 0.95


def test_mdct_errors():
    with pytest.raises(ValueError, match="multiple of the hop 16"):
        mdct(torch.randn(100), 16)
    with pytest.raises(ValueError, match="hop must be >= 1"):
        mdct_basis(0)


def test_mdct_unet_shapes_gradient_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = unet1d_tiny(in_channels=2, patch_size=16, patch_transform="mdct", factors=(2, 2, 2),
                        extra_in_channels=1, num_classes=3)
    assert model.total_factor == 128
    x = torch.randn(2, 2, 512)
    out = model(x, torch.tensor([0.3, 2.0]), {"concat": torch.randn(2, 1, 512), "label": torch.tensor([0, 2])})
    assert out.shape == (2, 2, 512) and torch.count_nonzero(out) == 0  # zero-initialised output conv
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    model(x, torch.tensor([0.3, 2.0])).square().mean().backward()
    assert model.in_conv.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = UNet1D.from_pretrained(tmp_path)
    assert loaded.config.patch_transform == "mdct"
    torch.testing.assert_close(loaded(x, torch.tensor([0.3, 2.0])), model(x, torch.tensor([0.3, 2.0])))
    with pytest.raises(ValueError, match="patch_transform"):
        unet1d_tiny(patch_size=16, patch_transform="wavelet")


def test_factored_label_embedding_sums_one_table_per_factor():
    emb = LabelEmbedding(12, 8, factors=(4, 3))  # label = a * 3 + b
    labels = torch.tensor([0, 5, 11, -1, 12])
    out = emb(labels)
    expect = torch.stack([emb.tables[0].weight[a] + emb.tables[1].weight[b] for a, b in [(0, 0), (1, 2), (3, 2)]])
    torch.testing.assert_close(out[:3], expect)
    torch.testing.assert_close(out[3], emb.null)
    torch.testing.assert_close(out[4], emb.null)
    # two labels that share a factor share that factor's vector exactly
    diff = emb(torch.tensor([1])) - emb(torch.tensor([4]))  # (0, 1) vs (1, 1)
    torch.testing.assert_close(diff[0], emb.tables[0].weight[0] - emb.tables[0].weight[1])
    with pytest.raises(ValueError, match="multiply to 10"):
        LabelEmbedding(12, 8, factors=(5, 2))


def test_input_gate_multiplies_the_input_coefficients():
    torch.manual_seed(0)
    model = unet1d_tiny(patch_size=8, patch_transform="mdct", factors=(2, 2, 2), input_gate=True)
    x = torch.randn(2, 1, 256)
    assert torch.count_nonzero(model(x, torch.tensor([0.5, 1.0]))) == 0  # zero init: A = G = 0
    # gain channels with a constant bias g and no weights: the model returns g * x exactly (MDCT is orthogonal)
    with torch.no_grad():
        model.out_conv.bias[8:] = 0.7
    torch.testing.assert_close(model(x, torch.tensor([0.5, 1.0])), 0.7 * x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="input_gate"):
        unet1d_tiny(input_gate=True)
