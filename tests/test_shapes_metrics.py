"""3D metrics against brute-force and closed-form answers."""
import itertools
import math

import numpy as np
import pytest
import torch

from multidiff.shapes.io import sample_mesh
from multidiff.shapes.metrics import (
    BLOCKWISE_REL_ERROR,
    chamfer_distance,
    earth_movers_distance,
    emd_blockwise,
    emd_exact,
    generation_metrics,
    mmd_cov,
    one_nn_accuracy,
    pairwise_distances,
)


def brute_chamfer(a, b):
    a, b = a.double(), b.double()
    ab = sum(min(float((p - q).pow(2).sum()) for q in b) for p in a) / len(a)
    ba = sum(min(float((p - q).pow(2).sum()) for p in a) for q in b) / len(b)
    return ab + ba


def brute_emd(a, b):
    a, b = a.double(), b.double()
    d = torch.cdist(a, b)
    return min(float(d[range(len(a)), list(p)].mean()) for p in itertools.permutations(range(len(a))))


def test_chamfer_matches_brute_force_and_closed_forms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, 3, generator=g), torch.randn(3, 11, 3, generator=g)
    got = chamfer_distance(a, b)
    want = torch.tensor([brute_chamfer(a[k], b[k]) for k in range(3)], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # chunking (tiny memory budget) does not change the value
    torch.testing.assert_close(chamfer_distance(a, b, max_elements=5), got, rtol=1e-5, atol=1e-6)
    # two single points: CD = 2 |p - q|^2 ; a cloud against itself: 0
    p, q = torch.tensor([[[0.0, 0, 0]]]), torch.tensor([[[1.0, 2, 2]]])
    assert float(chamfer_distance(p, q)) == pytest.approx(18.0)
    assert float(chamfer_distance(a, a).abs().max()) < 1e-6
    # symmetric
    torch.testing.assert_close(chamfer_distance(b, a), got, rtol=1e-5, atol=1e-6)


def test_exact_emd_matches_permutations_and_translation():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    want = torch.tensor([brute_emd(a[k], b[k]) for k in range(4)], dtype=torch.float32)
    torch.testing.assert_close(emd_exact(a, b), want, rtol=1e-5, atol=1e-6)
    # a translated copy, shuffled: EMD = |v| (mean |a_i - b_pi(i)| >= |mean difference| = |v|)
    v = torch.tensor([0.3, -0.4, 1.2])
    shifted = (a[0] + v)[torch.randperm(6, generator=g)]
    assert float(emd_exact(a[:1], shifted[None])) == pytest.approx(float(v.norm()), rel=1e-5)
    with pytest.raises(ValueError, match="equal size"):
        emd_exact(a, b[:, :5])


def test_blockwise_emd_is_an_upper_bound_within_the_documented_error():
    import trimesh

    shapes = [trimesh.creation.box((1, 0.5, 0.3)), trimesh.creation.cone(0.5, 1.5), trimesh.creation.capsule(1, 0.4)]
    a = torch.stack([torch.from_numpy(sample_mesh(m, 1024, 1)) for m in shapes])
    b = torch.stack([torch.from_numpy(sample_mesh(m, 1024, 2)) for m in shapes])  # same shapes: the hard case
    exact, approx = emd_exact(a, b), emd_blockwise(a, b)
    assert (approx >= exact - 1e-6).all()
    assert float(((approx - exact) / exact).max()) < BLOCKWISE_REL_ERROR
    # one block holding every point is the exact solution
    torch.testing.assert_close(emd_blockwise(a[:1, :200], b[:1, :200], block=256), emd_exact(a[:1, :200], b[:1, :200]))
    torch.testing.assert_close(earth_movers_distance(a[:, :64], b[:, :64]), emd_exact(a[:, :64], b[:, :64]))


def brute_1nna(d_ss, d_sr, d_rr):
    """PointFlow's knn(k=1) written out with loops."""
    ns, nr = len(d_ss), len(d_rr)
    correct = 0
    for i in range(ns + nr):
        best, best_is_sample = math.inf, None
        for j in range(ns + nr):
            if i == j:
                continue
            if i < ns:
                d = d_ss[i, j] if j < ns else d_sr[i, j - ns]
            else:
                d = d_sr[j, i - ns] if j < ns else d_rr[i - ns, j - ns]
            if d < best:
                best, best_is_sample = float(d), j < ns
        correct += best_is_sample == (i < ns)
    return correct / (ns + nr)


def test_mmd_cov_and_1nna_match_brute_force():
    g = torch.Generator().manual_seed(2)
    for ns, nr in ((5, 7), (8, 8)):
        pts = torch.rand(ns + nr, 2, generator=g)
        d = torch.cdist(pts, pts)
        d_ss, d_sr, d_rr = d[:ns, :ns], d[:ns, ns:], d[ns:, ns:]
        assert one_nn_accuracy(d_ss, d_sr, d_rr) == pytest.approx(brute_1nna(d_ss, d_sr, d_rr))
        mc = mmd_cov(d_sr)
        assert mc["mmd"] == pytest.approx(float(np.mean([min(d_sr[:, r]) for r in range(nr)])))
        assert mc["cov"] == pytest.approx(len({int(torch.argmin(d_sr[s])) for s in range(ns)}) / nr)


def test_generation_metrics_extremes():
    g = torch.Generator().manual_seed(3)
    refs = torch.randn(6, 32, 3, generator=g)
    far = refs + 10.0  # every sample is far from every reference: 1-NNA = 1, COV minimal
    m = generation_metrics(far, refs, metrics=("cd", "emd"))
    assert m["1nna_cd"] == 1.0 and m["1nna_emd"] == 1.0
    # copies of the references: each cloud's nearest neighbour is its twin in the other set -> 1-NNA = 0
    m = generation_metrics(refs.clone(), refs, metrics=("cd",))
    assert m["1nna_cd"] == 0.0 and m["cov_cd"] == 1.0 and m["mmd_cd"] == pytest.approx(0.0, abs=1e-6)
    d = pairwise_distances(refs[:2], refs[:3], "cd", batch_size=2)
    assert d.shape == (2, 3) and float(d[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_symmetric_pairwise_chamfer_matches_the_full_matrix():
    g = torch.Generator().manual_seed(3)
    clouds = torch.randn(7, 40, 3, generator=g)
    half = pairwise_distances(clouds, clouds, "cd", batch_size=3)  # the same object: upper triangle mirrored
    full = pairwise_distances(clouds, clouds.clone(), "cd", batch_size=3)
    torch.testing.assert_close(half, full)
    assert torch.equal(half, half.T)


def test_cpu_pairwise_chamfer_kdtree_agrees_with_the_distance_matrix():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 300, 3, generator=g), torch.randn(4, 257, 3, generator=g) * 1.3 + 0.2
    want = torch.stack([chamfer_distance(x[i:i + 1].expand(len(y), -1, -1), y) for i in range(len(x))])
    got = pairwise_distances(x, y, "cd")  # CPU: one k-d tree per cloud
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    want_xx = torch.stack([chamfer_distance(x[i:i + 1].expand(len(x), -1, -1), x) for i in range(len(x))])
    got_xx = pairwise_distances(x, x, "cd")
    torch.testing.assert_close(got_xx, want_xx, rtol=1e-5, atol=1e-6)  # the matrix path rounds 0 to ~1e-7
    assert torch.equal(got_xx.diagonal(), torch.zeros(len(x))) and torch.equal(got_xx, got_xx.T)
    bad = x.clone()
    bad[1, 3, 0] = float("nan")  # a non-finite cloud takes the matrix path and gives NaN only where it enters
    d = pairwise_distances(bad, y, "cd")
    assert torch.isnan(d[1]).all() and torch.isfinite(d[[0, 2, 3, 4]]).all()
