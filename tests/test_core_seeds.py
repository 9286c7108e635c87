"""Seeds: per-sample and per-item generators share no stream across nearby seeds, epochs or indices."""
import torch

from multidiff.core import item_generator, make_generators, mix_seed


def _draw(g, n=8):
    return torch.randn(n, generator=g)


def test_sample_generators_do_not_depend_on_chunking_and_seeds_share_no_sample():
    whole = [_draw(g) for g in make_generators(7, 6)]
    chunks = [_draw(g) for g in make_generators(7, 3)] + [_draw(g) for g in make_generators(7, 3, start=3)]
    assert all(torch.equal(a, b) for a, b in zip(whole, chunks))
    other = [_draw(g) for g in make_generators(8, 6)]
    assert not any(torch.equal(a, b) for a in whole for b in other)  # seed 8 is not seed 7 shifted


def test_item_generators_differ_across_seed_epoch_index_and_stream():
    keys = [(s, e, i, st) for s in (0, 1) for e in (0, 1) for i in (0, 1, 2) for st in (0, 1)]
    draws = {k: _draw(item_generator(*k)) for k in keys}
    assert len({tuple(v.tolist()) for v in draws.values()}) == len(keys)
    assert torch.equal(_draw(item_generator(1, 1, 2, 1)), draws[(1, 1, 2, 1)])  # reproducible
    # the old linear formula made (seed, epoch + 1, index) meet (seed, epoch, index + 10_000_019); no longer
    assert not torch.equal(_draw(item_generator(0, 1, 0)), _draw(item_generator(0, 0, 10_000_019)))
    assert mix_seed(0, 1) != mix_seed(1, 0)
