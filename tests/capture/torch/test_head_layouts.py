"""Per-head tensors recorded in whatever common layout a port keeps them, never stored mis-shaped."""

import pytest

torch = pytest.importorskip("torch")

from parity.capture.torch.layout import canonical_layout, config_heads  # noqa: E402
from parity.capture.torch.module import trace_module  # noqa: E402
from parity.capture.torch.probe import Probe  # noqa: E402
from parity.core.errors import CaptureError  # noqa: E402

T, H, HD = 5, 4, 3
TOKEN_MAJOR = torch.arange(T * H * HD, dtype=torch.float32).reshape(T, H, HD)   # (T, H, hd)
FLAT = TOKEN_MAJOR.reshape(T, H * HD)

LAYOUTS = {   # how ports keep a per-head value
    "BHTD": TOKEN_MAJOR.transpose(0, 1)[None],
    "BTHD": TOKEN_MAJOR[None],
    "HTD": TOKEN_MAJOR.transpose(0, 1),
    "THD": TOKEN_MAJOR,
    "TD": FLAT,
    "BTD": FLAT[None],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", ["layers.0.q", "layers.0.k_rope", "layers.0.attn_ctx"])
def test_each_common_layout_is_read_from_the_token_count_and_the_head_counts(layout, name):
    assert torch.equal(canonical_layout(name, LAYOUTS[layout], token_count=T, heads={H}), FLAT)
    assert torch.equal(canonical_layout(name, LAYOUTS[layout], token_count=T), FLAT)       # the tokens alone tell
    assert torch.equal(canonical_layout(name, LAYOUTS[layout], declared=layout), FLAT)     # or the declaration


def test_keys_read_from_a_cache_are_read_by_the_head_counts():
    keys = torch.zeros(1, 2, 7, HD)                        # (B, Hkv, S, hd): 7 cached positions, a 1-token step
    assert canonical_layout("layers.0.k_rope", keys, heads={4, 2}).shape == (7, 2 * HD)


def test_as_many_heads_as_tokens_is_refused_with_the_fix_unless_declared():
    square = torch.zeros(1, 4, 4, HD)
    with pytest.raises(CaptureError, match=r"reads as \[T, H, hd\] and as \[H, T, hd\] alike.*Probe\(layout='BHTD'\)"):
        canonical_layout("layers.0.q", square, token_count=4, heads={4})
    head_major = torch.arange(4 * 4 * HD, dtype=torch.float32).reshape(1, 4, 4, HD)   # (B, H, T, hd)
    stored = canonical_layout("layers.0.q", head_major, token_count=4, declared="BHTD")
    assert torch.equal(stored, head_major[0].transpose(0, 1).reshape(4, -1))


def test_a_declared_layout_that_does_not_fit_is_refused():
    with pytest.raises(CaptureError, match="declared layout BHTD but the tensor has shape"):
        canonical_layout("layers.0.q", FLAT, declared="BHTD")
    with pytest.raises(CaptureError, match="not one of"):
        canonical_layout("layers.0.q", FLAT, declared="XYZ")


def test_config_heads_reads_dicts_and_objects():
    assert config_heads({"num_attention_heads": 8, "num_key_value_heads": 2}) == {8, 2}
    assert config_heads(type("Config", (), {"n_head": 12})()) == {12}
    assert config_heads(None) == frozenset()


class HeadMajorPort(torch.nn.Module):
    """A port that keeps q as (B, H, T, hd), as most from-scratch ports do, and records it with a Probe."""

    def __init__(self, layout=None):
        super().__init__()
        self.rope_q = Probe(layout=layout)
        self.config = {"num_attention_heads": H}

    def forward(self, ids):
        tokens = ids.shape[-1]
        q = torch.arange(tokens * H * HD, dtype=torch.float32).reshape(1, tokens, H, HD).transpose(1, 2)
        self.rope_q(q)                                        # (B, H, T, hd)
        return torch.zeros(1, tokens, 10)


def test_a_probe_on_a_head_major_tensor_is_stored_token_major():
    trace = trace_module(HeadMajorPort(), list(range(T)), taps={"rope_q": "layers.0.q_rope"})
    assert trace["layers.0.q_rope"].shape == (T, H * HD)
    assert (trace["layers.0.q_rope"] == FLAT.numpy()).all()


def test_a_probe_with_as_many_heads_as_tokens_needs_its_layout():
    with pytest.raises(CaptureError, match="declare its layout"):
        trace_module(HeadMajorPort(), list(range(H)), taps={"rope_q": "layers.0.q_rope"})
    trace = trace_module(HeadMajorPort(layout="BHTD"), list(range(H)), taps={"rope_q": "layers.0.q_rope"})
    expected = torch.arange(H * H * HD, dtype=torch.float32).reshape(H, H * HD)
    assert (trace["layers.0.q_rope"] == expected.numpy()).all()
