"""Point-cloud transformer: shapes, permutation equivariance, conditioning, presets, save/load."""
import functools

import pytest
import torch

from multidiff.core import EDM, Denoiser, sample, sigma_grid
from multidiff.shapes.transformer import (
    POINT_PRESETS,
    LocalEdgeBlock,
    PointCloudTransformer,
    knn_indices,
    latent_tiny,
    point_tiny,
    upsampler_small,
)
from multidiff.train.testing import perturbed


def test_fresh_model_outputs_zero_and_keeps_shape():
    for make in (point_tiny, latent_tiny):
        m = make(in_channels=6)
        x = torch.randn(2, 50, 6)
        with torch.no_grad():
            out = m(x, torch.rand(2))
        assert out.shape == (2, 50, 6)
        assert float(out.abs().max()) == 0.0  # adaLN-Zero + zero final layer (DiT)


@pytest.mark.parametrize("make", [point_tiny, latent_tiny, functools.partial(latent_tiny, coarse_channels=3),
                                  functools.partial(latent_tiny, local_neighbors=4, rounds=2),
                                  functools.partial(point_tiny, local_neighbors=4)])
def test_every_parameter_learns_from_a_fresh_start(make):
    """adaLN-Zero zeroes each residual branch through its gate only: a few optimizer steps from a
    fresh model (one per gated layer between a parameter and the output) give every parameter a
    gradient. A zero output layer behind a zero gate would leave both at exactly zero forever and
    the whole latent path dead (it did: the point path alone learned thick blobs)."""
    torch.manual_seed(0)
    m = make(num_classes=3, cross_attention_dim=8)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, t, target = torch.randn(4, 32, 3), torch.randn(4), torch.randn(4, 32, 3)
    cond = {"label": torch.tensor([0, 1, 2, -1]), "context": torch.randn(4, 5, 8), "coarse": torch.randn(4, 6, 3)}
    for _ in range(5):
        opt.zero_grad()
        (m(x, t, cond) - target).square().mean().backward()
        opt.step()
    dead = [n for n, p in m.named_parameters() if p.grad is None or float(p.grad.abs().max()) == 0.0]
    assert dead == []


@pytest.mark.parametrize("make", [point_tiny, latent_tiny, functools.partial(latent_tiny, local_neighbors=5)])
def test_permutation_equivariance(make):
    torch.manual_seed(0)
    m = perturbed(make(in_channels=4, num_classes=3, cross_attention_dim=8), 0.1)
    x, t = torch.randn(2, 96, 4), torch.randn(2)
    cond = {"label": torch.tensor([0, 2]), "context": torch.randn(2, 5, 8)}
    perm = torch.randperm(96)
    with torch.no_grad():
        out, out_perm = m(x, t, cond), m(x[:, perm], t, cond)
    assert float(out.abs().mean()) > 1e-2  # a non-trivial map
    torch.testing.assert_close(out[:, perm], out_perm, atol=1e-5, rtol=0)


def test_upsampler_is_equivariant_in_fine_and_invariant_in_coarse_points():
    torch.manual_seed(0)
    m = perturbed(upsampler_small(dim=32, heads=2, num_latents=16, fourier_features=8, depth=1, rounds=1), 0.1)
    x, coarse, t = torch.randn(2, 64, 3), torch.randn(2, 16, 3), torch.randn(2)
    pf, pc = torch.randperm(64), torch.randperm(16)
    with torch.no_grad():
        out = m(x, t, {"coarse": coarse})
        out2 = m(x[:, pf], t, {"coarse": coarse[:, pc]})
        out_other = m(x, t, {"coarse": coarse + 1.0})
    assert out.shape == (2, 64, 3)
    torch.testing.assert_close(out[:, pf], out2, atol=1e-5, rtol=0)
    assert float((out - out_other).abs().max()) > 1e-3  # the coarse cloud conditions the output
    # the fine points read the coarse tokens directly in each write, not only through the latents
    write = m.writes[0]
    seen = {}
    hook = write.register_forward_hook(lambda mod, args, out: seen.__setitem__("memory", args[2].shape))
    with torch.no_grad():
        m(x, t, {"coarse": coarse})
    hook.remove()
    assert seen["memory"] == (2, m.config.num_latents + 16, m.config.dim)
    full = perturbed(point_tiny(coarse_channels=3), 0.1)
    with torch.no_grad():
        assert full(x, t, {"coarse": coarse}).shape == (2, 64, 3)


def test_labels_context_and_context_mask():
    torch.manual_seed(0)
    m = perturbed(latent_tiny(num_classes=4, cross_attention_dim=8), 0.1)
    x, t = torch.randn(2, 32, 3), torch.randn(2)
    ctx = torch.randn(2, 6, 8)
    with torch.no_grad():
        a = m(x, t, {"label": torch.tensor([0, 1]), "context": ctx})
        b = m(x, t, {"label": torch.tensor([2, 3]), "context": ctx})
        assert float((a - b).abs().max()) > 1e-3
        # null label: -1, num_classes and a missing label are the same
        n1 = m(x, t, {"label": torch.tensor([-1, -1])})
        n2 = m(x, t, {"label": torch.tensor([4, 4])})
        n3 = m(x, t, {})
        torch.testing.assert_close(n1, n2)
        torch.testing.assert_close(n1, n3)
        # masked-out context tokens do not matter
        mask = torch.tensor([[True] * 3 + [False] * 3] * 2)
        ctx2 = ctx.clone()
        ctx2[:, 3:] = 100.0
        torch.testing.assert_close(m(x, t, {"context": ctx, "context_mask": mask}),
                                   m(x, t, {"context": ctx2, "context_mask": mask}), atol=1e-5, rtol=0)


def test_clear_errors():
    m = latent_tiny()
    with pytest.raises(ValueError, match=r"\(batch, points, 3\)"):
        m(torch.randn(2, 3, 10), torch.rand(2))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        m(torch.randn(2, 10, 3), torch.rand(2), {"context": torch.randn(2, 4, 8)})
    with pytest.raises(ValueError, match="coarse"):
        upsampler_small(dim=32, heads=2)(torch.randn(2, 10, 3), torch.rand(2), {"coarse": torch.randn(2, 5, 4)})
    with pytest.raises(ValueError, match="in_channels"):
        PointCloudTransformer(in_channels=2)


def test_presets_save_and_load(tmp_path):
    for name, make in POINT_PRESETS.items():
        if name.endswith("base"):
            continue  # large: construction only checked for the small ones here
        assert isinstance(make(), PointCloudTransformer)
    m = perturbed(latent_tiny(num_classes=2), 0.1)
    m.save_pretrained(tmp_path / "m")
    m2 = PointCloudTransformer.from_pretrained(tmp_path / "m").eval()
    x, t = torch.randn(1, 20, 3), torch.rand(1)
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, {"label": torch.tensor([1])}), m2(x, t, {"label": torch.tensor([1])}))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = perturbed(latent_tiny(), 0.1).train()
    x, t = torch.randn(2, 16, 3), torch.rand(2)
    m(x, t).pow(2).sum().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing = True
    m(x, t).pow(2).sum().backward()
    for a, b in zip(g1, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_shape_completion_with_masked_sampling_keeps_the_known_points():
    """Completion: the known half of the points is imposed, the rest generated (core masked sampling)."""
    torch.manual_seed(0)
    m = perturbed(latent_tiny(), 0.1)
    den = Denoiser(m, EDM(sigma_data=1.0), "edm", sigma_data=1.0)
    known = torch.randn(2, 40, 3)
    mask = torch.zeros(2, 40, 1)
    mask[:, :20] = 1
    sigmas = sigma_grid(4, 0.002, 80.0, "karras")
    x = torch.randn(2, 40, 3) * sigmas[0]
    with torch.no_grad():
        out = sample(den, x, sigmas, "euler", cond={"known": known, "mask": mask})
    torch.testing.assert_close(out[:, :20], known[:, :20])
    assert torch.isfinite(out).all() and float((out[:, 20:] - known[:, 20:]).abs().mean()) > 1e-2


def test_knn_indices_match_a_full_sort_in_blocks():
    x = torch.randn(3, 57, 3, generator=torch.Generator().manual_seed(0))
    got = knn_indices(x, 6, max_elements=3 * 57 * 5)  # 5 query points per block
    want = torch.cdist(x, x).argsort(dim=-1)[..., :6]
    assert got.shape == (3, 57, 6)
    torch.testing.assert_close(torch.cdist(x, x).gather(2, got).sort(-1).values,
                               torch.cdist(x, x).gather(2, want).sort(-1).values)
    assert bool((got[..., 0] == torch.arange(57)).all())  # every point is its own nearest neighbour
    assert knn_indices(x[:, :4], 6).shape == (3, 4, 4)  # k capped at the point count


def test_local_edge_block_is_the_max_over_neighbours_of_its_formula():
    """h + gate * out(GELU(max_j [A h_j + P s (x_j - x_i)])) against a per-point loop."""
    g = torch.Generator().manual_seed(1)
    blk = LocalEdgeBlock(8, 6, offset_scale=7.0)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    h, x, emb = torch.randn(2, 20, 8, generator=g), torch.randn(2, 20, 3, generator=g), torch.randn(2, 6, generator=g)
    nb = knn_indices(x, 5)
    shift, scale, gate = blk.ada(emb)
    a = blk.feature(torch.nn.functional.layer_norm(h, (8,), eps=1e-6) * (1 + scale) + shift)
    want = torch.empty_like(h)
    for b in range(2):
        for i in range(20):
            edge = a[b, nb[b, i]] + blk.offset(7.0 * (x[b, nb[b, i]] - x[b, i]))  # (k, dim)
            want[b, i] = blk.out(torch.nn.functional.gelu(edge.max(dim=0).values, approximate="tanh"))
    want = h + gate * want
    torch.testing.assert_close(blk(h, x, emb, nb), want, atol=1e-5, rtol=1e-5)
    blk(h, x, emb, nb).square().sum().backward()  # the per-channel winners carry the gradient to A and P
    assert float(blk.feature.weight.grad.abs().sum()) > 0 and float(blk.offset.weight.grad.abs().sum()) > 0


def test_local_neighbourhood_grows_with_the_point_count_when_asked(monkeypatch):
    import multidiff.shapes.transformer as mod

    seen = []
    real = mod.knn_indices
    monkeypatch.setattr(mod, "knn_indices", lambda x, k, **kw: seen.append((x.shape[1], k)) or real(x, k, **kw))
    fixed, scaled = latent_tiny(local_neighbors=4), latent_tiny(local_neighbors=4, local_reference_points=16)
    with torch.no_grad():
        for m in (fixed, scaled):
            for n in (16, 48):
                m(torch.randn(1, n, 3), torch.ones(1))
    assert seen == [(16, 4), (48, 4), (16, 4), (48, 12)]
    with pytest.raises(ValueError, match="local_reference_points must be >= 0"):
        latent_tiny(local_neighbors=4, local_reference_points=-1)
