"""Missing and extra structure as evidence (structure.py), and the fused-kernel note only where a fused kernel
explains what is missing."""

import numpy as np

from detector_cases import CONFIG, rng

R = rng(47)
T, WIDTH = 6, 32
KINDS = ("attn_norm", "attn_out", "resid_mid", "out")


def model(layers=3, skip=(), lacking=()):
    tensors = {"embed": R.standard_normal((T, WIDTH))}
    for layer in range(layers):
        if layer in skip:
            continue
        for kind in KINDS:
            if (layer, kind) not in lacking:
                tensors[f"layers.{layer}.{kind}"] = R.standard_normal((T, WIDTH))
    tensors["final_norm"], tensors["logits"] = R.standard_normal((T, WIDTH)), R.standard_normal((T, 40))
    return tensors


def diagnosed(reference, candidate, config=CONFIG, producer=None):
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference_trace = make_trace(reference, {"dtype": "float32", "config": config})
    candidate_trace = make_trace(candidate, {"dtype": "float32", **({"producer": producer} if producer else {})})
    return diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace)


def structure(reference, candidate, config=CONFIG) -> str:
    return " ".join(d.message for d in diagnosed(reference, candidate, config).diagnoses if d.cause == "structure")


def failing(tensors):
    return {**tensors, "logits": tensors["logits"] + 1.0}


def test_a_layer_that_never_ran():
    reference = model()
    candidate = failing({name: tensor for name, tensor in reference.items() if not name.startswith("layers.1.")})
    assert "nothing of layer(s) 1" in structure(reference, candidate)


def test_a_layer_too_many():
    reference = model(layers=2)
    candidate = failing({**reference, **{f"layers.2.{kind}": R.standard_normal((T, WIDTH)) for kind in KINDS}})
    assert "runs 3 layers where the model has 2" in structure(reference, candidate)


def test_an_op_skipped_in_one_layer():
    reference = model()
    candidate = failing({name: tensor for name, tensor in reference.items() if name != "layers.1.attn_out"})
    assert "layer(s) 1 record no attn_out, which layer(s) 0, 2 record" in structure(reference, candidate)


def test_what_the_candidate_declares_not_comparable_is_not_an_op_skipped():
    """A fused graph computes the last layer's output inside its final norm and hands it on to nothing: it says so
    (`not_comparable`), and that is not an op skipped in one layer, nor a global op left out."""
    from parity.core.compare import compare
    from parity.core.trace import make_trace
    from parity.diagnose import diagnose

    reference = model()
    candidate = failing({name: tensor for name, tensor in reference.items()
                         if name not in ("layers.2.out", "final_norm")})
    reference_trace = make_trace(reference, {"dtype": "float32", "config": CONFIG})
    declared = {"layers.2.out": "fused into the final norm", "final_norm": "fused"}
    candidate_trace = make_trace(candidate, {"dtype": "float32", "not_comparable": declared})
    found = diagnose(compare(reference_trace, candidate_trace), reference_trace, candidate_trace).diagnoses
    assert not [d for d in found if d.cause == "structure"]
    undeclared = failing({name: tensor for name, tensor in reference.items() if name != "layers.2.out"})
    assert "layer(s) 2 record no out" in structure(reference, undeclared)


def test_a_global_op_left_out():
    reference = model()
    candidate = failing({name: tensor for name, tensor in reference.items() if name != "final_norm"})
    assert "records no final_norm between the blocks and logits" in structure(reference, candidate)


def test_shapes_that_fit_another_config():
    reference = {"embed": R.standard_normal((T, WIDTH)), "layers.0.q": R.standard_normal((T, 32)),
                 "layers.0.attn_probs": np.ones((4, T, T)) / T}
    candidate = {**reference, "layers.0.q": R.standard_normal((T, 16)), "layers.0.attn_probs": np.ones((2, T, T)) / T,
                 "embed": reference["embed"] + 1}
    text = structure(reference, candidate)
    assert "width 16 is 2 KV heads x 8" in text and "keys not expanded to the 4 query heads" in text


def test_a_passing_candidate_that_records_less_is_no_bug():
    reference = model()
    candidate = {name: tensor for name, tensor in reference.items() if not name.startswith("layers.1.")}
    comparison = diagnosed(reference, candidate)
    assert comparison and not [d for d in comparison.diagnoses if d.cause == "structure"]


def test_the_fused_kernel_note_only_for_the_probabilities():
    reference = {**model(), **{f"layers.{i}.attn_probs": np.ones((4, T, T)) / T for i in range(3)}}
    fused = failing({name: tensor for name, tensor in reference.items() if not name.endswith("attn_probs")})
    note = next(note for note in diagnosed(reference, fused).notes if "never materializes" in note)
    assert "fused kernel" in note and "write it as layers.{i}.attn_probs" in note     # a trace another program wrote
    note = next(note for note in diagnosed(reference, fused, producer="torch:port.Model").notes
                if "never materializes" in note)
    assert "wrap the softmax's output in a Probe" in note                              # a PyTorch module
    sparse = failing({name: tensor for name, tensor in reference.items()
                      if not name.endswith(("attn_probs", "attn_out", "resid_mid"))})
    notes = diagnosed(reference, sparse).notes
    assert not any("never materializes" in note for note in notes)
    assert any("more than a fused kernel hides" in note for note in notes)
