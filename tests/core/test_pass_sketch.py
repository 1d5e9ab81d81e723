"""Sketches of two passes over the same tokens locate the first checkpoint where they part, in constant memory."""

import numpy as np
import pytest

from parity.core.metrics import rel_l2
from parity.core.pass_sketch import PassSketch, first_apart

T, HEADS = 40, 3


def a_pass(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.standard_normal((T, 16)),
        "layers.0.q": rng.standard_normal((T, 24)),
        "layers.0.attn_probs": rng.random((HEADS, T, T)),
        "layers.0.attn_out": rng.standard_normal((T, 16)),
        "layers.1.mlp_out": rng.standard_normal((T, 16)),
        "final_norm": rng.standard_normal((T, 16)),
    }


def sketched(tensors: dict[str, np.ndarray], rows: int, batch: bool = False) -> PassSketch:
    """The pass put as a capture streams it: blocks of `rows` rows (attention probabilities with a batch axis)."""
    sketch = PassSketch(T)
    for name, tensor in tensors.items():
        if name == "logits":    # a prefill's logits: the last position's alone
            sketch.put(name, tensor)
            continue
        axis = 1 if name.endswith("attn_probs") else 0
        for start in range(0, T, rows):
            block = np.take(tensor, range(start, min(start + rows, T)), axis=axis)
            sketch.put(name, block[None] if batch and axis == 1 else block, start)
    return sketch


@pytest.mark.parametrize("rows", [1, 7, T])
def test_the_same_pass_in_any_blocks_does_not_part(rows):
    assert first_apart(sketched(a_pass(), T), sketched(a_pass(), rows, batch=True), 1e-6) is None


@pytest.mark.parametrize("name", ["layers.0.q", "layers.0.attn_probs", "final_norm"])
@pytest.mark.parametrize("spread", [False, True])
def test_the_first_checkpoint_a_change_reaches_is_where_they_part(name, spread):
    reference, candidate = a_pass(), a_pass()
    rng = np.random.default_rng(1)
    change = rng.standard_normal(candidate[name].shape) * 1e-2 * np.abs(candidate[name]).mean()
    if not spread:      # one position's row alone
        kept = np.zeros_like(change)
        index = (slice(None), 5) if name.endswith("attn_probs") else (5,)
        kept[index] = change[index] * 6
        change = kept
    candidate[name] = candidate[name] + change
    for later in [n for n in candidate if list(candidate).index(n) > list(candidate).index(name)]:
        candidate[later] = candidate[later] * (1 + 1e-2)          # what follows inherits a change
    bound = rel_l2(reference[name], candidate[name]) / 20         # the change is well over the bound
    assert first_apart(sketched(reference, 8), sketched(candidate, 3), bound) == name
    assert first_apart(sketched(reference, 8), sketched(candidate, 3), bound * 400) is None


def test_the_sketch_estimates_rel_l2():
    """Within a factor of two, over changes spread and held in one row, in each checkpoint's shape."""
    rng = np.random.default_rng(2)
    reference = a_pass()
    for trial in range(20):
        candidate = dict(reference)
        name = list(reference)[trial % len(reference)]
        change = rng.standard_normal(reference[name].shape)
        if trial % 2:      # one position's row stands out
            change[(slice(None), trial % T) if name.endswith("attn_probs") else trial % T] *= 30
        candidate[name] = reference[name] + 1e-3 * change
        exact = rel_l2(reference[name], candidate[name])
        left, right = sketched(reference, T), sketched(candidate, 9)
        estimate = rel_l2(left.sketches[name], right.sketches[name])
        assert exact / 2 < estimate < exact * 2, (name, trial)


def test_another_shape_or_rows_missing_parts_and_logits_are_not_judged():
    reference = a_pass()
    wider = dict(reference, **{"layers.0.q": np.zeros((T, 32))})
    assert first_apart(sketched(reference, T), sketched(wider, T), 1.0) == "layers.0.q"
    short = sketched(reference, T)
    partial = PassSketch(T)
    for name, tensor in reference.items():
        partial.put(name, tensor[:, : T - 1] if name.endswith("attn_probs") else tensor[: T - 1])
    assert first_apart(short, partial, 1.0) == "embed"
    with_logits = sketched(dict(reference, logits=np.ones((T, 8))), T)
    last_row_logits = sketched(dict(reference, logits=np.ones((1, 8))), T)
    assert "logits" not in with_logits.widths
    assert first_apart(with_logits, last_row_logits, 1e-9) is None


def test_a_non_finite_value_parts():
    reference, candidate = a_pass(), a_pass()
    candidate["layers.0.attn_out"] = candidate["layers.0.attn_out"].copy()
    candidate["layers.0.attn_out"][3, 2] = np.nan
    assert first_apart(sketched(reference, T), sketched(candidate, T), 1.0) == "layers.0.attn_out"
