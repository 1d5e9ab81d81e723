"""wiring: an op reads the wrong tensor, found by putting other tensors in its place.

Three searches, each among the tensors both traces record (the candidate's own
first), in the same layer, its neighbours and the global checkpoints:
  - an identity the candidate breaks (identities.py) that holds, to its precision,
    with one input replaced by another tensor, two inputs exchanged, or one left out:
    the MLP's operands swapped, the residual added to the normed input, the MLP
    added to the block's input, the head applied to a layer's norm (a linear op's,
    where its weight is recorded: screened on random projections of its output);
  - a norm whose output is the reference's norm (its weights fitted from the
    reference) of another tensor than its recorded input: blocks run out of order,
    a layer skipped; or of no recorded tensor at all, while its rows are still a
    norm's (unit RMS over its weight): a block run twice, an op inserted before it;
  - the candidate's tensor is, to its precision, another checkpoint: the
    reference's in another layer, or one of the candidate's own earlier ones.
A wrong wire has no inverse to apply, so these carry no confidence.
"""

from __future__ import annotations

import math
import re

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.names import in_flow_order, inputs_of, parse
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, machine_epsilon, rounding, same_tensor, widened
from parity.diagnose.identities import MARGIN, Check, checks, residual, slot_tensor
from parity.diagnose.norms import NORM_KINDS, fit_norm, reference_norm

NEIGHBOURS = 1        # layers either side searched for a tensor read in the wrong place
EPSILON_SHRINK = 0.05  # a norm's epsilon shrinks a row's RMS below 1 by at most this (the inputs of small models)
SKETCH = 16           # random directions a linear op's output is projected on, to screen its candidate inputs
SKETCH_MARGIN = 10    # a projection's residual within this many times the bound goes on to the whole product
UNIT_RMS = 10         # rows of a norm's output over its weight within this many roundings of unit RMS, and
                      # rows further than this many roundings from the recorded input's direction, make a
                      # norm of an unrecorded tensor


def nearby(context: Context, name: str, shape: tuple, *, every_layer: bool = False) -> list[str]:
    """Checkpoints of `shape` that either trace records, near `name`: its layer first, then the
    neighbours and the global ones (every layer's when asked), in flow order."""
    checkpoint = parse(name)
    layer = checkpoint.layer if checkpoint is not None else None
    names = set(context.candidate.names) | set(context.reference.names)
    found = []
    for other in in_flow_order(names):
        parsed = parse(other)
        if parsed is None or other == name:
            continue
        near = (every_layer or parsed.layer is None or layer is None
                or abs(parsed.layer - layer) <= NEIGHBOURS)
        trace = context.candidate if other in context.candidate else context.reference
        if near and trace.shape_of(other) == shape:
            found.append(other)
    same = [other for other in found if layer is not None and parse(other).layer == layer]
    return same + [other for other in found if other not in same]


def _tensor(context: Context, name: str) -> np.ndarray:
    return widened((context.candidate if name in context.candidate else context.reference)[name])


def _whose(context: Context, name: str) -> str:
    return f"its own {name}" if name in context.candidate else f"the reference's {name} (the candidate records none)"


@register("wiring")
def wiring(context: Context):
    for name, checkpoint, reference, candidate in context.focused():
        found = (_rewired_identity(context, name, candidate)
                 or (_norm_input(context, name, checkpoint, candidate) if checkpoint.kind in NORM_KINDS else None)
                 or _equal_to_another(context, name, reference, candidate))
        if found:
            yield Diagnosis("wiring", name, found)
            return


# ----- identities that hold with other inputs -----------------------------------------------------------

def read_otherwise(context: Context, name: str) -> str | None:
    """What `name`'s op reads in place of its input, where one of its identities then holds; None otherwise."""
    if name not in context.candidate:
        return None
    return _rewired_identity(context, name, widened(context.candidate[name]))


def _rewired_identity(context: Context, name: str, candidate: np.ndarray) -> str | None:
    for check in checks(context, name):
        if not check.failed:
            continue
        found = _rewire(context, name, check, candidate)
        if found:
            return found
    return None


def _rewire(context: Context, name: str, check: Check, output: np.ndarray) -> str | None:
    identity = check.identity
    slots = [slot_tensor(context, slot, slot) for slot in identity.slots]
    exact = max(MARGIN * check.reference, check.floor)

    sketched = _sketch(output) if identity.kind == "linear" else None

    def holds(tensors) -> float | None:
        if sketched is not None and sketched(tensors) > SKETCH_MARGIN * exact:
            return None
        left = residual(identity, output, tensors)
        return left if left <= exact else None

    if len(slots) == 2 and slots[0].shape == slots[1].shape:   # two inputs exchanged
        left = holds([slots[1], slots[0]])
        if left is not None:
            return (f"{check.describe()}; with {identity.slots[0]} and {identity.slots[1]} exchanged it holds "
                    f"(rel_l2 {left:.2g}): {_swap_meaning(identity.slots)}")
    for index, slot in enumerate(slots):                        # an input read in another layout
        for permutation in _same_shape_permutations(slot.shape):
            tensors = list(slots)
            tensors[index] = slot.transpose(permutation)
            left = holds(tensors)
            if left is not None:
                return (f"{check.describe()}; with {identity.slots[index]}'s axes permuted {permutation} it holds "
                        f"(rel_l2 {left:.2g}): the op reads {identity.slots[index]} in another layout"
                        f"{' (queries and keys exchanged)' if slot.ndim == 3 and permutation == (0, 2, 1) else ''}")
    if identity.kind == "product" and len(slots) == 2:         # the linear factor left out
        left = holds([slots[0], np.ones_like(slots[1])])
        if left is not None:
            return (f"{check.describe()}; without {identity.slots[1]} it holds (rel_l2 {left:.2g}): the product "
                    f"with {identity.slots[1]} is left out")
    for index, slot in enumerate(identity.slots):
        for other in nearby(context, slot, slots[index].shape):
            if other in identity.slots or other == name:
                continue
            tensors = list(slots)
            tensors[index] = _tensor(context, other)
            left = holds(tensors)
            if left is not None:
                return (f"{check.describe()}; with {_whose(context, other)} in place of {identity.slots[index]} it "
                        f"holds (rel_l2 {left:.2g}): the op reads {other} where the model reads "
                        f"{identity.slots[index]}")
    return None


def _sketch(output: np.ndarray):
    """A cheap estimate of a linear identity's residual with given tensors: both sides projected on SKETCH
    random directions of the output (the head's 49,152 columns read as 16), the weight's projection kept while
    the same weight is tried with other inputs; a wrong input leaves a residual of order 1 there too."""
    directions = np.random.default_rng(0).standard_normal((output.shape[-1], SKETCH))   # (out, k)
    target = output @ directions                                                       # (T, k)
    kept: list = [None, None]                                                          # the weight, its projection

    def estimate(tensors) -> float:
        inputs, weight = tensors[0], tensors[1]
        if weight.ndim != 2 or weight.shape[0] != output.shape[-1] or inputs.shape[-1] != weight.shape[1]:
            return math.inf
        if kept[0] is not weight:
            kept[:] = [weight, weight.T @ directions]                                  # (in, k)
        projected = inputs @ kept[1] + (tensors[2] @ directions if len(tensors) > 2 else 0.0)
        return rel_l2(target, projected)

    return estimate


def _same_shape_permutations(shape: tuple) -> list[tuple]:
    import itertools

    identity = tuple(range(len(shape)))
    return [p for p in itertools.permutations(identity)
            if p != identity and tuple(shape[i] for i in p) == tuple(shape)] if len(shape) <= 4 else []


def _swap_meaning(slots: tuple[str, ...]) -> str:
    kinds = [slot.rsplit(".", 1)[-1] for slot in slots]
    if set(kinds) == {"mlp_gate", "mlp_up"}:
        return "the MLP's gate and up operands are exchanged (the activation applied to up_proj's output)"
    return f"the op takes {kinds[1]} for {kinds[0]} and {kinds[0]} for {kinds[1]}"


# ----- a norm of another tensor ---------------------------------------------------------------------------

def _norm_input(context: Context, name: str, checkpoint, candidate: np.ndarray) -> str | None:
    norm = reference_norm(context, name, checkpoint.kind)
    recorded = inputs_of(name, context.reference.tensors)
    if norm is None or not recorded:
        return None
    floor = rounding(context.candidate.dtypes.get(name))
    fitted = max(rel_l2(widened(context.reference[name]), norm(widened(context.reference[recorded[0]]))), 1e-12)
    exact = max(MARGIN * fitted, floor)
    x = slot_tensor(context, recorded[0], recorded[0])
    if x is not None and rel_l2(candidate, norm(x)) <= exact:
        return None   # it is the norm of its own input
    for other in nearby(context, recorded[0], candidate.shape, every_layer=True):
        if other in (name, recorded[0]) or parse(other).kind in NORM_KINDS:
            continue
        left = rel_l2(candidate, norm(_tensor(context, other)))
        if left <= exact:
            return (f"the candidate's {name} is the reference's norm (its weights fitted from the reference) of "
                    f"{_whose(context, other)} (rel_l2 {left:.2g}), not of its input {recorded[0]}: "
                    f"{_reading(name, recorded[0], other)}")
    if x is None:
        return None
    own = fit_norm(x, candidate, centred=norm.centred, group=norm.group, eps=norm.eps, with_bias=norm.centred)
    if own is not None and rel_l2(candidate, own(x)) <= exact:
        return _other_weight(context, name, norm, own, exact)   # its own input, normed with other weights
    spread = _unit_rows(norm, candidate)
    cosines = _row_cosines(norm.normalize(x), (candidate - norm.bias) / np.where(norm.gain == 0, 1, norm.gain))
    rounding_of_one = max(machine_epsilon(context.candidate.dtypes.get(name)), 1e-6)
    own_input = recorded[0] in context.candidate      # else the reference's stands in: the candidate's may differ
    if own_input and spread is not None and spread <= UNIT_RMS * rounding_of_one \
            and cosines.min() < 1 - UNIT_RMS * rounding_of_one:
        return (f"the candidate's {name} is a norm's output (over the reference's weights each row's RMS is within "
                f"{EPSILON_SHRINK:.0%} below 1, as an epsilon leaves it) but not of its input {recorded[0]} (their rows' "
                f"directions agree to a cosine of {float(cosines.mean()):.3f}), nor of any tensor either trace "
                f"records: it normalizes a tensor made between {recorded[0]} and {name} that the model does not "
                f"make (a block run twice, an op inserted)")
    return None


def _unit_rows(norm, candidate: np.ndarray) -> float | None:
    """How far the rows of (candidate - bias) / gain are from a norm's: an RMS of 1, or up to EPSILON_SHRINK
    below it (epsilon shrinks the rows of a small input), and a mean of 0 for LayerNorm. None when the rows
    are not a norm's at all."""
    if np.any(np.abs(norm.gain) < 1e-6):
        return None
    rows = ((candidate - norm.bias) / norm.gain).reshape(-1, norm.group)
    rms = np.sqrt(np.mean(rows * rows, axis=-1))
    if rms.min() < 1 - EPSILON_SHRINK:
        return None
    spread = max(float(rms.max()) - 1, 0.0)
    if norm.centred:
        spread = max(spread, float(np.abs(rows.mean(-1)).max()))
    return spread


def _row_cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of each pair of rows (a row the input rows' direction would keep, whatever its scale)."""
    left, right = left.reshape(left.shape[0], -1), right.reshape(right.shape[0], -1)
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    return np.sum(left * right, axis=1) / np.where(norms > 0, norms, 1)


def _folded(values: np.ndarray, group: int) -> np.ndarray:
    """A per-channel fit over heads that share one weight (q_norm, k_norm), as that one weight."""
    return values.reshape(-1, group).mean(0) if values.size % group == 0 else values


def _other_weight(context: Context, name: str, norm, own, exact: float) -> str | None:
    """The candidate normalizes its own input right but scales by another norm's weight (another layer's, k_norm's
    for q_norm): its per-channel scale fitted from its own tensors (`own`) equals that norm's, fitted from the
    reference."""
    for other in in_flow_order(context.reference.names):
        checkpoint = parse(other)
        if other == name or checkpoint is None or checkpoint.kind not in NORM_KINDS:
            continue
        theirs = reference_norm(context, other, checkpoint.kind)
        if theirs is None or theirs.group != norm.group:
            continue
        mine, their_gain = _folded(own.gain, norm.group), _folded(theirs.gain, norm.group)
        if rel_l2(their_gain, mine) <= exact and rel_l2(_folded(theirs.bias, norm.group), _folded(own.bias, norm.group)) <= exact:
            return (f"the candidate's {name} normalizes its input but scales by the weight of {other} (its per-channel "
                    f"scale, fitted from its own tensors, is that norm's to rel_l2 {rel_l2(their_gain, mine):.2g}): "
                    f"the weight is loaded from the wrong module")
    return None


def _reading(name: str, expected: str, read: str) -> str:
    """What reading `read` where the model reads `expected` means for the order of the blocks."""
    layer_of = lambda text: int(match.group(1)) if (match := re.match(r"layers\.(\d+)\.out$", text)) else None  # noqa: E731
    at, meant, got = parse(name).layer, layer_of(expected), layer_of(read)
    if got is None or (meant is None and expected != "embed"):
        return f"it reads {read} where the model reads {expected}"
    meant = -1 if expected == "embed" else meant
    where = "the final norm" if at is None else f"layer {at}"
    if got > meant:
        return f"{where} reads the output of layer {got}, a later layer: the blocks run out of order"
    skipped = list(range(got + 1, meant + 1))
    return (f"{where} reads the output of layer {got}: layer(s) {', '.join(map(str, skipped))} did not run "
            "before it (skipped, or the loop ends early)")


# ----- the same tensor as another checkpoint ---------------------------------------------------------------

def _equal_to_another(context: Context, name: str, reference: np.ndarray, candidate: np.ndarray) -> str | None:
    error = rel_l2(reference, candidate)
    for other in nearby(context, name, candidate.shape, every_layer=True):
        if other == name:
            continue
        left = same_tensor(context, candidate, other)
        if left is not None and left < 0.2 * error and not math.isclose(left, error):
            return (f"the candidate's {name} is {_whose(context, other)} (rel_l2 {left:.2g}): the value computed for "
                    f"{other} reaches {name}, read in the wrong place")
    return None
