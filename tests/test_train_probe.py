"""multidiff.train.probe: denoising error with the true, a shuffled and the null condition."""
import pytest
import torch

from multidiff.train.probe import conditioning_probe, markdown

TABLE = torch.tensor([[1.0, 1.0], [-1.0, 3.0], [0.0, 0.0]])  # class 0, class 1, the null class 2


def oracle(x, sigma, cond):
    """Ignores x: returns the class's constant (a perfect class-conditional denoiser for this data)."""
    return TABLE[cond["label"]]


def items_of(labels):
    return [{"x": TABLE[k].clone(), "label": k} for k in labels]


def test_closed_form_errors_for_an_oracle_denoiser():
    rows = conditioning_probe(oracle, items_of([0, 1, 1, 0]), null_label=2, uses_text=False, sigmas=(1.0, 5.0))
    # shuffled: items 0->1 (0 vs 1), 1->2 (same class), 2->3 (1 vs 0), 3->0 (same class)
    gap = (TABLE[0] - TABLE[1]).square().sum().item()  # 4 + 4 = 8 per mismatched item
    for r in rows:
        assert r["true"] == 0.0
        assert r["shuffled"] == pytest.approx(2 * gap / 8)  # 2 mismatched items of 4, 2 values each
        assert r["null"] == pytest.approx((2 * TABLE[0].square().sum() + 2 * TABLE[1].square().sum()).item() / 8)
    assert "| 1 | 0.0000 | 2.0000 | 3.0000 |" in markdown(rows)


def test_loss_mask_and_captions_and_batch_independence():
    seen = []

    def by_caption(x, sigma, cond):
        seen.extend(cond["text"])
        return torch.stack([TABLE[0] if c == "zero" else TABLE[1] if c == "one" else TABLE[2] for c in cond["text"]])

    items = [{"x": TABLE[k].clone(), "text": ["zero", "one"][k], "loss_mask": torch.tensor([1.0, 0.0])}
             for k in (0, 1, 0)]
    a = conditioning_probe(by_caption, items, null_label=None, uses_text=True, sigmas=(2.0,), batch_size=1)
    b = conditioning_probe(by_caption, items, null_label=None, uses_text=True, sigmas=(2.0,), batch_size=3)
    assert a == b
    assert "" in seen and set(seen) == {"", "zero", "one"}
    # only the first value counts: shuffled 0->1 (1 vs -1), 1->0 (-1 vs 1), 0->0: (4 + 4 + 0) / 3
    assert a[0]["true"] == 0.0 and a[0]["shuffled"] == pytest.approx(8 / 3)
    assert a[0]["null"] == pytest.approx(1.0)  # the null row's first value is 0: errors 1, 1, 1


def test_noise_is_used_and_seeded():
    def identity(x, sigma, cond):
        return x

    items = items_of([0, 1, 0])
    r1 = conditioning_probe(identity, items, null_label=2, uses_text=False, sigmas=(0.5,), seed=3)
    r2 = conditioning_probe(identity, items, null_label=2, uses_text=False, sigmas=(0.5,), seed=3)
    assert r1 == r2 and 0.05 < r1[0]["true"] < 1.0  # 0.25 * mean squared unit noise over 6 values


def test_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="neither class labels nor a text encoder"):
        conditioning_probe(oracle, [{"x": torch.zeros(2)}, {"x": torch.zeros(2)}], null_label=None, uses_text=False)
    with pytest.raises(KeyError, match="no 'text'"):
        conditioning_probe(oracle, items_of([0, 1]), null_label=None, uses_text=True)
    with pytest.raises(ValueError, match="at least 2 items"):
        conditioning_probe(oracle, items_of([0]), null_label=2, uses_text=False)
