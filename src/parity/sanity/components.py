"""Tests 1-6: the structure, then each component alone on the same random inputs as the reference's."""

from __future__ import annotations

import copy
import inspect

import torch

from parity.sanity.pair import Pair
from parity.core.results.sanity import FAILED, PASSED, SKIPPED, TestResult


def test_structure(pair: Pair) -> TestResult:
    """Layers, heads, KV heads and sizes against the config; every module and parameter present, same shapes."""
    config, problems, checks = pair.config, [], 0
    if pair.names:   # a port with its own names: its layers are the modules that make each layer's output
        layers = {name.split(".")[2] for name in pair.names
                  if name.startswith("model.layers.") and name.count(".") == 2}
    else:
        layers = {name.split(".")[2] for name, _ in pair.candidate.named_modules() if name.startswith("model.layers.")}
    checks += 1
    if len(layers) != config.num_hidden_layers:
        problems.append(f"{len(layers)} decoder layers, the config says {config.num_hidden_layers}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    widths = {"self_attn.q_proj": config.num_attention_heads * head_dim,
              "self_attn.k_proj": config.num_key_value_heads * head_dim,
              "self_attn.v_proj": config.num_key_value_heads * head_dim,
              "mlp.gate_proj": config.intermediate_size, "mlp.up_proj": config.intermediate_size}
    for layer in sorted(layers, key=int):
        for suffix, width in widths.items():
            module = pair.module("candidate", f"model.layers.{layer}.{suffix}")
            if module is not None and hasattr(module, "out_features"):
                checks += 1
                if module.out_features != width:
                    problems.append(f"model.layers.{layer}.{suffix} gives {module.out_features} features, "
                                    f"the config's heads and sizes give {width}")
    reference_modules = [name for name, module in pair.reference.named_modules()   # a port's own modules may
                         if name and (list(module.parameters(recurse=False))      # compute its RoPE inline
                                      or (name.endswith("rotary_emb") and not pair.names))]
    absent = [name for name in reference_modules if pair.module("candidate", name) is None]
    checks += len(reference_modules) + len(dict(pair.reference.named_parameters()))
    problems += [f"module {name} is missing" for name in absent]
    problems += [f"parameter {name} is missing" for name in pair.missing if not any(name.startswith(m + ".") for m in absent)]
    problems += [f"unexpected parameter {name}" for name in pair.unexpected]
    problems += [f"shape mismatch {text}" for text in pair.mismatched]
    metrics = {"checks": checks, "layers": len(layers), "heads": config.num_attention_heads,
               "kv_heads": config.num_key_value_heads, "hidden_size": config.hidden_size,
               "missing": pair.missing, "unexpected": pair.unexpected, "mismatched": pair.mismatched}
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return TestResult("structure", FAILED, "; ".join(problems[:3]) + more, metrics)
    return TestResult("structure", PASSED, f"all {checks} structure checks passed", metrics)


def test_norm(pair: Pair) -> TestResult:
    """Every norm module, the candidate's against the reference's, on random inputs of two magnitudes."""
    names = [name for name, module in pair.reference.named_modules() if type(module).__name__.endswith("Norm")]
    results = {}
    for name in names:
        candidate = pair.module("candidate", name)
        if candidate is None:
            continue
        reference = pair.module("reference", name)
        for scale in (1.0, 10.0):
            x = pair.hidden(salt=1, scale=scale)
            with torch.no_grad():
                results[f"{name} (x{scale:g})"] = pair.compare(reference(x), candidate(x))
    modules = len({key.rsplit(" ", 1)[0] for key in results})
    return _verdict("norm", results, f"comparisons ({modules} norm modules x 2 input scales)",
                    missing_reason="the candidate has none of the reference's norms")


def test_rope(pair: Pair) -> TestResult:
    """The cos/sin tables (shapes, range, finiteness, values), and the rotation where the candidate exposes it."""
    name = next((n for n, _ in pair.reference.named_modules() if n.endswith("rotary_emb")), None)
    if name is None or pair.module("candidate", name) is None:
        return TestResult("rope", SKIPPED, f"not checked: the candidate has no {name or 'rotary_emb'} module "
                          "returning (cos, sin); the attention test still covers the rotation")
    tables = {}
    for side in ("reference", "candidate"):
        output = pair.recorded_output(side, name)
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            return TestResult("rope", FAILED, f"the {side}'s {name} returned {type(output).__name__}, not (cos, sin)")
        tables[side] = output
    results, problems = {}, []
    for label, reference, candidate in zip(("cos", "sin"), tables["reference"], tables["candidate"]):
        if reference.shape != candidate.shape and reference.shape[0] == 1 and reference.shape[1:] == candidate.shape[1:]:
            reference = reference.expand_as(candidate)               # (1, T, hd) for every sequence of the batch
        if not torch.isfinite(candidate).all():
            problems.append(f"{label} has NaN or Inf")
        elif candidate.abs().max() > 1.0 + 1e-3:
            problems.append(f"{label} leaves [-1, 1] (max |{label}| {candidate.abs().max().item():.3g})")
        results[label] = pair.compare(reference, candidate)
    rotation = _rotation(pair, tables["reference"])
    if rotation is not None:
        results["rotation"] = rotation
    result = _verdict("rope", results, "tables")
    if problems:
        return TestResult("rope", FAILED, "; ".join(problems), result.metrics)
    if result:
        largest = max(value["rel_l2"] for value in results.values())
        checked = "cos, sin and apply_rotary_pos_emb match" if rotation is not None else \
            "cos and sin match (the rotation is checked within attention: the candidate's module has no apply_rotary_pos_emb)"
        return TestResult("rope", PASSED, f"{checked}; largest rel_l2 {largest:.2g}", result.metrics)
    return result


def _rotation(pair: Pair, tables) -> dict | None:
    """The candidate's apply_rotary_pos_emb (if its module defines one) against transformers', on random q, k."""
    attention = pair.module("candidate", "model.layers.0.self_attn")
    module = inspect.getmodule(type(attention)) if attention is not None else None
    candidate = getattr(module, "apply_rotary_pos_emb", None)
    reference = getattr(inspect.getmodule(type(pair.module("reference", "model.layers.0.self_attn"))),
                        "apply_rotary_pos_emb", None)
    if candidate is None or reference is None:
        return None
    cos, sin = tables
    B, T, hd = cos.shape
    generator = pair.generator(2)
    q = torch.randn(B, pair.config.num_attention_heads, T, hd, generator=generator).to(cos)
    k = torch.randn(B, pair.config.num_key_value_heads, T, hd, generator=generator).to(cos)
    with torch.no_grad():
        expected, got = reference(q, k, cos, sin), candidate(q, k, cos, sin)
    return pair.compare(torch.cat([t.flatten() for t in expected]), torch.cat([t.flatten() for t in got]))


def test_attention(pair: Pair) -> TestResult:
    """Each layer's projections and output on random hidden states; the causal mask; the GQA head mapping."""
    results = {}
    for layer in range(pair.config.num_hidden_layers):
        name = f"model.layers.{layer}.self_attn"
        if pair.module("candidate", name) is None:
            continue
        x = pair.hidden(salt=10 + layer)
        for projection in ("q_proj", "k_proj", "v_proj"):
            candidate, reference = pair.module("candidate", f"{name}.{projection}"), pair.module("reference", f"{name}.{projection}")
            if candidate is not None:
                with torch.no_grad():
                    results[f"{name}.{projection}"] = pair.compare(reference(x), candidate(x))
        with torch.no_grad():
            reference, candidate = pair.call("reference", name, x), pair.call("candidate", name, x)
            results[name] = pair.compare(reference, candidate)
            again = pair.call("candidate", name, x)                  # the same input once more
            changed = x.clone()
            changed[:, -1] += 1.0                                    # only the last position changes
            later = pair.call("candidate", name, changed)
        runs = pair.compare(candidate, again)
        if not runs["passed"]:
            return TestResult("attention", FAILED, f"{name}: {random_runs(runs)}", {"compared": results, "worst": name})
        earlier = pair.compare(candidate[:, :-1], later[:, :-1])
        results[f"{name} causal"] = earlier
        if not results[name]["passed"] and _tiled_matches(pair, name, x, candidate):
            results[name]["gqa"] = "tiled"
    result = _verdict("attention", results, "checks (projections, outputs, causality)", missing_reason="the candidate has no model.layers.N.self_attn")
    causal = [key for key, value in results.items() if key.endswith("causal") and not value["passed"]]
    tiled = [key for key, value in results.items() if value.get("gqa") == "tiled"]
    if causal:
        return TestResult("attention", FAILED, f"{causal[0].removesuffix(' causal')}: changing the last position "
                          "changes the outputs before it; the causal mask is missing or wrong", result.metrics)
    if tiled:
        return TestResult("attention", FAILED, f"{tiled[0]}: GQA head mapping: query head h reads KV head h % "
                          f"num_key_value_heads, where transformers reads h // {pair.config.num_attention_heads // pair.config.num_key_value_heads} "
                          "(repeat instead of repeat_interleave); the output matches the reference with that mapping",
                          result.metrics)
    return result


def _tiled_matches(pair: Pair, name: str, x: torch.Tensor, candidate: torch.Tensor) -> bool:
    """Whether the reference attention, with query heads reordered, reproduces the candidate: the tiled mapping.

    Tiled: query head h reads KV head h % Hkv. Reordering the reference's query heads
    (q_proj rows, o_proj columns) so that its head j is the candidate's head
    perm[j], with perm[j] % Hkv == j // group, makes transformers compute exactly that.
    """
    heads, kv_heads = pair.config.num_attention_heads, pair.config.num_key_value_heads
    if heads == kv_heads:
        return False
    group, head_dim = heads // kv_heads, pair.module("reference", f"{name}.q_proj").out_features // heads
    perm = [kv + kv_heads * g for kv in range(kv_heads) for g in range(group)]  # perm[j] % Hkv == j // group
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in perm])
    original = pair.module("reference", name)
    reordered = copy.deepcopy(original)
    with torch.no_grad():
        reordered.q_proj.weight.copy_(original.q_proj.weight[rows])
        if reordered.q_proj.bias is not None:
            reordered.q_proj.bias.copy_(original.q_proj.bias[rows])
        reordered.o_proj.weight.copy_(original.o_proj.weight[:, rows])
        output = pair.call("reference", name, x, module=reordered)
    return bool(pair.compare(output, candidate)["passed"])


def test_mlp(pair: Pair) -> TestResult:
    """Each layer's MLP on random hidden states."""
    results = {}
    for layer in range(pair.config.num_hidden_layers):
        name = f"model.layers.{layer}.mlp"
        candidate = pair.module("candidate", name)
        if candidate is not None:
            x = pair.hidden(salt=20 + layer)
            with torch.no_grad():
                results[name] = pair.compare(pair.module("reference", name)(x), candidate(x))
    return _verdict("mlp", results, "MLPs", missing_reason="the candidate has no model.layers.N.mlp")


def test_decoder_layer(pair: Pair) -> TestResult:
    """Each decoder layer (norms, attention, MLP, residuals) on random hidden states."""
    results = {}
    for layer in range(pair.config.num_hidden_layers):
        name = f"model.layers.{layer}"
        if pair.module("candidate", name) is not None:
            x = pair.hidden(salt=30 + layer)
            with torch.no_grad():
                results[name] = pair.compare(pair.call("reference", name, x), pair.call("candidate", name, x))
    return _verdict("decoder_layer", results, "decoder layers", missing_reason="the candidate has no model.layers.N")


def _verdict(test: str, results: dict[str, dict], what: str, missing_reason: str = "") -> TestResult:
    """One result from several comparisons: the first failure, else the closest call."""
    if not results:
        return TestResult(test, SKIPPED, f"not checked: {missing_reason}")
    failed = [name for name, result in results.items() if not result["passed"]]
    worst = max(results, key=lambda name: results[name].get("rel_l2", float("inf")))
    metrics = {"compared": results, "worst": worst}
    if failed:
        return TestResult(test, FAILED, f"{len(failed)}/{len(results)} {what} differ; first {failed[0]}: "
                          f"{describe(results[failed[0]])}", metrics)
    return TestResult(test, PASSED, f"{len(results)} {what} match; largest rel_l2 "
                      f"{results[worst]['rel_l2']:.2g} at {worst}", metrics)


def random_runs(runs: dict) -> str:
    """Two runs of the candidate on the same input that differ, in words (diagnose/nondeterminism.py's advice)."""
    from parity.diagnose.nondeterminism import ADVICE

    return f"two runs of the candidate on the same input differ (rel_l2 {runs['rel_l2']:.2g} between them): {ADVICE}"


def describe(result: dict) -> str:
    """A comparison in words: the tolerance's explanation (core/results/tolerance.py), and the rel_l2."""
    if "shape_candidate" in result:
        return f"shape {tuple(result['shape_candidate'])}, the reference's is {tuple(result['shape_reference'])}"
    text = f"{result['explanation']}; rel_l2 {result['rel_l2']:.3g}"
    if result["nonfinite_candidate"] > result["nonfinite_reference"]:
        text += f", {result['nonfinite_candidate']} NaN/Inf (the reference has {result['nonfinite_reference']})"
    return text
