"""Tests 7-11: the whole model: forward, loss, KV cache, gradients, numerical stability."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from parity.capture.torch.incremental import call_with_cache
from parity.core.results import Tolerance
from parity.sanity.components import _verdict, random_runs
from parity.sanity.pair import Pair, UnusableOutput, logits_of, scaled_parameter, to_numpy
from parity.core.results.sanity import FAILED, PASSED, SKIPPED, TestResult

IGNORE_INDEX = -100
SHARPEN = 20.0  # lm_head's weights times this, for peaked logits in the loss test


def test_forward(pair: Pair) -> TestResult:
    """The logits on random token ids: shape (B, T, V), finite, and the reference's."""
    ids = pair.token_ids(salt=40)
    with torch.no_grad():
        reference = logits_of(pair.forward("reference", ids))
        candidate = logits_of(pair.forward("candidate", ids))
    result = _verdict("forward", {"logits": pair.compare(reference, candidate)}, "logits")
    if result:
        return TestResult("forward", PASSED, f"logits {tuple(candidate.shape)} match the reference's, rel_l2 "
                          f"{result.metrics['compared']['logits']['rel_l2']:.2g}", result.metrics)
    with torch.no_grad():
        again = logits_of(pair.forward("candidate", ids))
    runs = pair.compare(candidate, again) if again.shape == candidate.shape else {"passed": True}
    if not runs["passed"]:
        return TestResult("forward", FAILED, f"logits: {random_runs(runs)}", result.metrics)
    return result


def labels_for(ids: torch.Tensor) -> torch.Tensor:
    """Labels as a trainer makes them: the ids themselves (the model shifts), a few ignored."""
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX
    return labels


def test_loss(pair: Pair) -> TestResult:
    """Cross-entropy with shifted labels and ignore_index -100: the reference's value, within a plausible range.

    Also with lm_head's weights sharpened (x SHARPEN): near-uniform logits (random weights)
    give about ln V for any labelling, shifted or not, so only peaked ones tell.
    """
    if not pair.takes("candidate", "labels"):
        return TestResult("loss", SKIPPED, "not checked: the candidate's forward takes no labels, so it computes "
                          "no loss of its own (the gradients test uses the cross-entropy of its logits)")
    ids = pair.token_ids(salt=50)
    labels = labels_for(ids)
    losses, uniform = {}, math.log(pair.config.vocab_size)
    for label, factor in (("as given", 1.0), (f"lm_head x{SHARPEN:g}", SHARPEN)):
        if factor != 1.0 and pair.parameter("candidate", "lm_head.weight") is None:
            continue
        scaling = _scaled(pair, "reference", factor)
        candidate_scaling = _scaled(pair, "candidate", factor)
        with scaling, candidate_scaling, torch.no_grad():
            reference = pair.loss("reference", ids, labels)
            try:
                candidate = pair.loss("candidate", ids, labels)
            except UnusableOutput as error:
                return TestResult("loss", FAILED, str(error))
            unshifted = _unshifted_loss(pair, ids, labels)
        losses[label] = {"reference": reference.item(), "candidate": candidate.item(), "unshifted": unshifted,
                         **pair.compare(reference.float().reshape(1), candidate.float().reshape(1))}
    metrics = {"losses": losses, "uniform_loss": uniform, "plausible_range": [0.0, 3 * uniform]}
    value, expected = losses["as given"]["candidate"], losses["as given"]["reference"]
    if not math.isfinite(value) or not 0.0 < value <= 3 * uniform:
        return TestResult("loss", FAILED, f"loss {value:.4g} is outside the plausible range (0, {3 * uniform:.3g}] "
                          f"(ln V = {uniform:.3g})", metrics)
    for label, loss in losses.items():
        if not loss["passed"]:
            hint = ": the reference's loss without the label shift, so labels are not shifted" \
                if abs(loss["unshifted"] - loss["candidate"]) <= 1e-3 * abs(loss["unshifted"]) + 1e-4 else ""
            return TestResult("loss", FAILED, f"loss ({label}) {loss['candidate']:.6g}, the reference's "
                              f"{loss['reference']:.6g}{hint}", metrics)
    return TestResult("loss", PASSED, f"loss {value:.6g} equals the reference's {expected:.6g} (ln V = {uniform:.3g}), "
                      f"and with peaked logits too", metrics)


def _scaled(pair: Pair, side: str, factor: float):
    """The side's lm_head weight times `factor` inside the block (nothing when the factor is 1)."""
    if factor == 1.0:
        return contextlib.nullcontext()
    return scaled_parameter(pair.model(side), pair.name(side, "lm_head.weight"), factor)


def _unshifted_loss(pair: Pair, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """The reference's cross-entropy of the logits at t against the label at t: the unshifted mistake."""
    with torch.no_grad():
        logits = logits_of(pair.forward("reference", ids)).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX).item()


def test_kv_cache(pair: Pair) -> TestResult:
    """Prefill half the sequence with use_cache, decode the rest one token at a time: the full pass's logits."""
    ids = pair.token_ids(salt=60)
    T = ids.shape[1]
    prefill = T // 2
    results = {}
    with torch.no_grad():
        full = logits_of(pair.forward("candidate", ids))
        logits, cache = call_with_cache(pair.candidate, ids[:, :prefill], None)
        results[f"prefill 0..{prefill - 1}"] = pair.compare(full[:, :prefill], logits)
        for t in range(prefill, T):
            if cache is None:
                return TestResult("kv_cache", FAILED, f"with use_cache=True the candidate returned no cache "
                                  f"(after {t} tokens)")
            logits, cache = call_with_cache(pair.candidate, ids[:, t:t + 1], cache, start=t)
            results[f"step {t}"] = pair.compare(full[:, t:t + 1], logits)
    result = _verdict("kv_cache", results, "steps")
    if not result:
        return TestResult("kv_cache", FAILED, "decoding through the cache differs from the full pass: " +
                          result.message.split(" first ", 1)[-1], result.metrics)
    return result


def test_gradients(pair: Pair) -> TestResult:
    """Backward on the loss: every trainable parameter gets a finite gradient, the reference's within tolerance.

    Each parameter's gradient is held to rtol x |reference| + rtol x max|reference|: gradients
    differ in scale by orders of magnitude between parameters, so a fixed atol would not mean anything.
    """
    ids = pair.token_ids(salt=70)
    labels = labels_for(ids)
    gradients = {}
    for side, model in (("reference", pair.reference), ("candidate", pair.candidate)):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            pair.loss(side, ids, labels).backward()
        gradients[side] = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    # the candidate's gradients under the reference's names, where a port names its parameters otherwise
    gradients["reference"] = {pair.name("candidate", name): grad for name, grad in gradients["reference"].items()}
    rtol = pair.settings.tolerance.rtol
    none = [name for name, grad in gradients["candidate"].items() if grad is None]
    nonfinite = [name for name, grad in gradients["candidate"].items() if grad is not None and not torch.isfinite(grad).all()]
    results = {}
    for name, grad in gradients["candidate"].items():
        reference = gradients["reference"].get(name)
        if grad is None or reference is None or reference.shape != grad.shape:
            continue
        scale = float(reference.abs().max())
        results[name] = pair.compare(reference, grad, Tolerance(atol=rtol * scale, rtol=rtol, basis="gradient"))
    for model in (pair.reference, pair.candidate):
        model.zero_grad(set_to_none=True)
    metrics = {"parameters": len(gradients["candidate"]), "without_gradient": none, "nonfinite": nonfinite}
    if none:
        return TestResult("gradients", FAILED, f"{len(none)} parameter(s) got no gradient: {', '.join(none[:3])}: "
                          "broken autograd (used through .detach(), under no_grad, or outside PyTorch)", metrics)
    if nonfinite:
        return TestResult("gradients", FAILED, f"NaN/Inf gradient in {', '.join(nonfinite[:3])}", metrics)
    result = _verdict("gradients", results, "parameter gradients")
    return TestResult("gradients", result.status, result.message, {**metrics, **result.metrics})


def test_stability(pair: Pair) -> TestResult:
    """Repeated runs identical; each component on its own inputs at extreme scales, a long sequence and large
    logits give no NaN/Inf the reference lacks."""
    checks, problems = {}, []
    ids = pair.token_ids(salt=80)
    with torch.no_grad():
        first, second = logits_of(pair.forward("candidate", ids)), logits_of(pair.forward("candidate", ids))
    checks["repeatable"] = bool(torch.equal(first, second))
    if not checks["repeatable"]:
        problems.append(f"two runs on the same input differ (max_abs {(first - second).abs().max().item():.3g})")
    scale = pair.settings.large_scale
    checks["extreme_inputs"] = _extreme_inputs(pair, (scale, TINY_SCALE))
    if isinstance(checks["extreme_inputs"], list):
        problems += checks["extreme_inputs"]
        checks["extreme_inputs"] = len(checks["extreme_inputs"])
    length = min(pair.settings.long_length, getattr(pair.config, "max_position_embeddings", 512))
    long_ids = pair.token_ids(length=length, batch=1, salt=82)
    with torch.no_grad():
        outputs = [logits_of(pair.forward(side, long_ids)) for side in ("reference", "candidate")]
    checks[f"long_sequence_{length}"] = _new_nonfinite(*outputs)
    if checks[f"long_sequence_{length}"]:
        problems.append(f"a {length}-token sequence gives {checks[f'long_sequence_{length}']} NaN/Inf logits")
    checks["large_logits"] = _large_logits(pair, ids, scale)
    if isinstance(checks["large_logits"], str) and not checks["large_logits"].startswith("not checked"):
        problems.append(checks["large_logits"])
    if problems:
        return TestResult("stability", FAILED, "; ".join(problems), checks)
    unchecked = [name for name, value in checks.items() if isinstance(value, str)]
    note = f" ({', '.join(unchecked)} not checked)" if unchecked else ""
    return TestResult("stability", PASSED, f"repeatable; no NaN/Inf with each component's inputs at x{scale:g} and "
                      f"x{TINY_SCALE:g}, {length} tokens or "
                      f"large logits{note}", checks)


TINY_SCALE = 1e-30   # squares underflow to 0 in float32: a norm without its epsilon divides 0 by 0
# Each component fed its own inputs: large hidden states through the embedding never reach attention with
# large scores, because the norm in front rescales them.
EXTREME_COMPONENTS = ("model.layers.0.input_layernorm", "model.layers.0.self_attn", "model.layers.0.mlp",
                      "model.layers.0.post_attention_layernorm", "model.layers.0", "model.norm")


def _extreme_inputs(pair: Pair, scales: tuple[float, ...]):
    """Each component on its own inputs scaled to each of `scales`: the NaN/Inf it makes where the reference's
    component stays finite, as problems (a list); 'not checked' when the candidate has none of them."""
    present = [name for name in EXTREME_COMPONENTS if pair.module("candidate", name) is not None
               and pair.module("reference", name) is not None]
    if not present:
        return "not checked: the candidate has none of " + ", ".join(EXTREME_COMPONENTS)
    problems = []
    for name in present:
        for scale in scales:
            x = pair.hidden(salt=81, scale=scale)
            with torch.no_grad():
                outputs = [pair.call(side, name, x) for side in ("reference", "candidate")]
            new = _new_nonfinite(*outputs)
            if new:
                problems.append(f"hidden states of size {scale:g} into {name} give {new} NaN/Inf the reference's "
                                "does not")
    return problems


def _large_logits(pair: Pair, ids: torch.Tensor, scale: float):
    """lm_head's weights times `scale` on both sides: the loss must stay finite where the reference's does."""
    if pair.parameter("candidate", "lm_head.weight") is None or pair.parameter("reference", "lm_head.weight") is None:
        return "not checked: no lm_head.weight to scale"
    if not pair.takes("candidate", "labels"):
        return "not checked: the candidate computes no loss of its own (its forward takes no labels)"
    losses = {}
    labels = labels_for(ids)
    for side in ("reference", "candidate"):
        with _scaled(pair, side, scale), torch.no_grad():
            output = pair.forward(side, ids, labels=labels)
            losses[side] = (output.loss.item(), float(logits_of(output).abs().max()))
    if math.isfinite(losses["reference"][0]) and not math.isfinite(losses["candidate"][0]):
        return (f"with logits up to {losses['reference'][1]:.3g} the loss is {losses['candidate'][0]} "
                f"(the reference's {losses['reference'][0]:.4g}): a cross-entropy that overflows")
    return 0


def _new_nonfinite(reference: torch.Tensor, candidate: torch.Tensor) -> int:
    """NaN/Inf elements in `candidate` where `reference` is finite."""
    reference, candidate = to_numpy(reference), to_numpy(candidate)
    if reference.shape != candidate.shape:
        return int(np.count_nonzero(~np.isfinite(candidate)))
    return int(np.count_nonzero(np.isfinite(reference) & ~np.isfinite(candidate)))

