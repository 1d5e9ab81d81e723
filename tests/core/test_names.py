from parity.core.names import FAMILY_TAPS, LAYER_KINDS, in_flow_order, is_canonical, order_key, parse, select


def test_parse_reads_layer_and_kind():
    checkpoint = parse("layers.12.mlp_act")
    assert (checkpoint.layer, checkpoint.kind) == (12, "mlp_act")
    assert parse("logits").layer is None and parse("logits").kind == "logits"


def test_parse_rejects_names_that_are_not_canonical():
    for name in ["layers.x.q", "layers.0.qq", "layer.0.q", "embedding", "layers.0", ""]:
        assert parse(name) is None, name
        assert not is_canonical(name)


def test_attention_probabilities_index_tokens_on_their_second_axis():
    assert parse("layers.0.attn_probs").token_axis == 1
    assert parse("layers.0.q").token_axis == 0


def test_flow_order_is_embed_layers_in_block_order_then_head_not_alphabetical():
    shuffled = ["logits", "layers.10.q", "layers.2.out", "layers.2.q", "final_norm", "embed", "zz_custom", "layers.2.attn_norm"]
    assert in_flow_order(shuffled) == [
        "embed", "layers.2.attn_norm", "layers.2.q", "layers.2.out", "layers.10.q", "final_norm", "logits", "zz_custom",
    ]


def test_every_layer_kind_sorts_in_table_order():
    names = [f"layers.0.{kind}" for kind in reversed(LAYER_KINDS)]
    assert [parse(n).kind for n in sorted(names, key=order_key)] == list(LAYER_KINDS)


def test_select_takes_comma_separated_globs():
    names = ["embed", "layers.0.q", "layers.1.q", "layers.1.k", "logits"]
    assert select(names, "layers.*.q,logits") == ["layers.0.q", "layers.1.q", "logits"]
    assert select(names, None) == names


def test_every_builtin_tap_names_canonical_checkpoints():
    for family, taps in FAMILY_TAPS.items():
        for tap in taps:
            for name in tap.names:
                if name:
                    assert is_canonical(name.replace("{i}", "0")), (family, tap)


def test_a_leading_bang_leaves_checkpoints_out():
    from parity.core.names import select

    names = ["embed", "layers.0.q", "layers.0.attn_probs", "layers.1.attn_probs", "logits"]
    assert select(names, "*,!*.attn_probs") == ["embed", "layers.0.q", "logits"]
    assert select(names, "!*.attn_probs") == ["embed", "layers.0.q", "logits"]      # exclusions alone: from all
    assert select(names, "layers.*,!layers.1.*") == ["layers.0.q", "layers.0.attn_probs"]
