"""The curated public API: everything in __all__ imports, the heavy parts only on first use, and
parity.compare gives the verdict `parity check` gives on the same traces."""

import subprocess
import sys

import numpy as np
import pytest

import parity


def test_every_public_name_resolves():
    for name in parity.__all__:
        assert getattr(parity, name) is not None, name
    assert sorted(parity.__all__) == parity.__all__


def test_importing_parity_does_not_import_torch_or_transformers():
    code = "import sys, parity; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_unknown_attributes_raise():
    try:
        parity.not_a_thing
    except AttributeError as error:
        assert "not_a_thing" in str(error)
    else:
        raise AssertionError("parity.not_a_thing resolved")


RNG = np.random.default_rng(3)
HEAD_DIM, HEADS, TOKENS = 8, 2, 4
CONFIG = {"num_attention_heads": HEADS, "num_key_value_heads": HEADS, "hidden_size": HEADS * HEAD_DIM}


def in_pairs(array: np.ndarray) -> np.ndarray:
    """(T, H*hd) in the reference's halves order -> each head's dimensions in pairs (2i, 2i+1)."""
    return array.reshape(TOKENS, HEADS, 2, HEAD_DIM // 2).swapaxes(-1, -2).reshape(TOKENS, -1)


def test_compare_adapts_conventions_as_the_check_does_and_strict_holds_them():
    tensors = {f"layers.0.{kind}": RNG.standard_normal((TOKENS, HEADS * HEAD_DIM)).astype(np.float32)
               for kind in ("q", "k", "attn_ctx")}
    reference = parity.make_trace(tensors, {"config": CONFIG})
    candidate = parity.make_trace({name: in_pairs(tensor) if name.endswith((".q", ".k")) else tensor
                                   for name, tensor in tensors.items()})
    comparison = parity.compare(reference, candidate)
    assert comparison and any(note.startswith("adapted (rope_pairs)") for note in comparison.notes)
    held = parity.compare(reference, candidate, strict={"rope_pairs"})
    assert not held and held.first_divergence.checkpoint == "layers.0.q"


def test_a_comparison_of_nothing_is_an_error_not_a_pass():
    reference = parity.make_trace({"logits": np.ones((2, 3), np.float32)})
    candidate = parity.make_trace({"embed": np.ones((2, 3), np.float32)})
    with pytest.raises(parity.TraceError, match="no checkpoint could be compared"):
        parity.compare(reference, candidate)
