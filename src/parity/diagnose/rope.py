"""RoPE causes, from the rotation fitted on each side (rope_fit.py): rope_layout, rope_direction,
rope_position_offset, rope_theta, rope_scaling and rope_angles.

Both sides are fitted from their own q (or k) and q_rope: the reference's rotation
is checked against the config (with any rope_scaling type); the candidate's is
fitted over the config's table and its variants. Each parameter that differs names
its cause, with the fitted value beside the config's. The repair turns the
candidate's q_rope back by its fitted angles and on by the reference's; it is
`confirmed` when that restores the reference within the checkpoint's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core.metrics import rel_l2
from parity.core.results import Diagnosis
from parity.diagnose import register
from parity.diagnose.context import Context, matches, widened
from parity.diagnose.repair import confirm
from parity.diagnose.rope_fit import (LAYOUTS, RECIPROCAL, Rotation, Tables, describe_parameters, fit, fitted_table,
                                      noise_floor, pairs, rope_parameters, rotary_dim, unpairs)

IDENTITY_SHARE = 0.2   # a fitted rotation must leave at most this share of what no rotation at all leaves
ANGLES_LEFT = 1e-3     # rates fitted per frequency explain a rotation when they leave at most this share of its error

CAUSES = {  # a fitted parameter that differs -> the cause it names (in this order when several differ)
    "layout": "rope_layout", "direction": "rope_direction", "offset": "rope_position_offset",
    "theta": "rope_theta", "scaling": "rope_scaling", "gain": "rope_scaling", "phase": "rope_angles",
}


@dataclass(frozen=True)
class RopeFinding:
    """One focus q_rope/k_rope: both sides' fitted rotations."""

    name: str
    source: str                    # the checkpoint rotated (q_norm or q)
    reference: Rotation            # the reference's, as the config (or its own angles) explains it
    candidate: Rotation | None     # the candidate's best fit; None when no rotation fits
    explained: float | None        # rel_l2 of the candidate's fit against its tensor, when it explains it
    config_known: bool             # the config's table reproduces the reference
    head_dim: int
    dim: int
    repaired: np.ndarray | None    # the candidate's tensor turned back and redone with the reference's angles

    @property
    def changes(self) -> list[str]:
        if self.candidate is None or self.explained is None:
            return []
        found = set(self.candidate.changes) - set(self.reference.changes)
        if self.candidate.layout != self.reference.layout:
            found.add("layout")
        if self.candidate.direction != self.reference.direction:
            found.add("direction")
        if self.candidate.offset != self.reference.offset:
            found.add("offset")
        return [change for change in CAUSES if change in found]


def rotated_source(trace, name: str) -> str | None:
    layer, kind = name.rsplit(".", 1)
    for source in (f"{layer}.{kind[0]}_norm", f"{layer}.{kind[0]}"):
        if source in trace:
            return source
    return None


def findings(context: Context) -> list[RopeFinding]:
    return context.remember("rope", lambda: list(_findings(context)))


def start_position(context: Context) -> int:
    """The absolute position of the trace's first token (--start-position; 0 for a trace from the start)."""
    start = context.reference.metadata.get("start_position", 0)
    return start if type(start) is int else 0


def _findings(context: Context):
    config = context.config
    for name, checkpoint, y_reference, y_candidate in context.focused("q_rope", "k_rope"):
        parameters = rope_parameters(config, checkpoint.layer)
        source = rotated_source(context.reference, name)
        if parameters is None or source is None or y_reference.shape[0] < 3:
            continue
        x_reference = widened(context.reference[source])
        own = rotated_source(context.candidate, name)
        x_candidate = (widened(context.candidate[own]) if own is not None
                       and context.candidate.shape_of(own) == x_reference.shape else x_reference)
        if x_reference.shape != y_reference.shape or y_reference.shape[-1] % config.head_dim:
            continue
        dim = rotary_dim(config, checkpoint.layer, parameters)
        start = start_position(context)
        source_tables = Tables(parameters, config.head_dim, dim, config.raw.get("max_position_embeddings"),
                               start + y_reference.shape[0])
        every = source_tables.all()
        reference_floor = noise_floor(context.reference.dtypes.get(name))
        found = fit(x_reference, y_reference, config.head_dim, dim, every[:1], reference_floor, start=start)
        config_known = found is not None and found[1] <= max(10 * reference_floor, 1e-3) and not found[0].changes
        if not config_known:   # the reference's own angles stand in for the config's
            own_table = fitted_table(x_reference, y_reference, config.head_dim, dim, "half")
            found = fit(x_reference, y_reference, config.head_dim, dim, [own_table], reference_floor, start=start)
            every = [own_table]
            if found is None or found[1] > max(10 * reference_floor, 1e-3):
                continue   # the reference is no rotation of its input we can read
        reference_rotation = found[0]
        floor = max(noise_floor(context.candidate.dtypes.get(name)), reference_floor)
        candidate_fit = fit(x_candidate, y_candidate, config.head_dim, dim, every, floor,
                            source_tables if config_known else None, start=start)
        rotation, explained, repaired = None, None, None
        if candidate_fit is not None:
            rotation = candidate_fit[0]
            # a rotation is computed from the candidate's own input: it must reproduce the candidate to its
            # rounding (as the config's reproduces the reference), not merely come close; and explain its error
            unrotated = _rel(y_candidate, x_candidate)     # what leaving the input as it is would leave
            reproduced = candidate_fit[1] <= max(10 * found[1], floor) and candidate_fit[1] <= IDENTITY_SHARE * unrotated
            explained = matches(y_candidate, rotation.apply(x_candidate, config.head_dim, dim), y_reference)
            explained = explained if reproduced else None
            if reproduced and explained is None:
                continue   # the candidate rotates as fitted, and that is not where its error comes from
            context.tried.append((name, f"a RoPE fitted as {rotation.describe()}", candidate_fit[1],
                                  _rel(y_reference, y_candidate)))
            repaired = reference_rotation.apply(rotation.undo(y_candidate, config.head_dim, dim), config.head_dim, dim)
        yield RopeFinding(name, source, reference_rotation, rotation, explained, config_known, config.head_dim, dim,
                          repaired)


def _rel(reference: np.ndarray, candidate: np.ndarray) -> float:
    from parity.core.metrics import rel_l2

    return rel_l2(reference, candidate)


def _diagnosis(context: Context, finding: RopeFinding, cause: str, what: str) -> Diagnosis:
    fitted = (f"the candidate's RoPE fitted from its own {finding.source} and {finding.name}: "
              f"{finding.candidate.describe()}; the reference's: {finding.reference.describe()}"
              + ("" if finding.config_known else " (a RoPE type not modelled here: its own fitted angles)"))
    diagnosis = Diagnosis(cause, finding.name, f"{what} ({fitted}; the fit leaves rel_l2 {finding.explained:.2g})")
    return confirm(context, diagnosis, finding.repaired,
                   "turning the candidate's tensor back by its fitted angles and on by the reference's")


def _explain(finding: RopeFinding, change: str) -> str:
    candidate, reference = finding.candidate, finding.reference
    if change == "layout":
        return (f"the candidate rotates {LAYOUTS[candidate.layout]} where the reference rotates "
                f"{LAYOUTS[reference.layout]}: a GGUF or checkpoint conversion permutes q/k rows for exactly this reason")
    if change == "direction":
        return ("the candidate's rotation turns the other way (its angles are the reference's negated): "
                "rotate_half returning cat(x2, -x1) instead of cat(-x2, x1), or sin with the wrong sign")
    if change == "offset":
        return (f"the candidate rotates position t as t{candidate.offset - reference.offset:+d}: positions start at the "
                "wrong index (a cache offset, or an extra token counted)")
    if change == "theta":
        return (f"the candidate's RoPE base is {candidate.table.parameters['rope_theta']:.4g} where the config's is "
                f"{reference.table.parameters['rope_theta']:.4g}: rope_theta read from the wrong place, a default kept, "
                "or the exponent's step (arange(0, d, 2) / d) changed")
    if change in ("scaling", "gain"):
        if change == "gain" or candidate.table.parameters == reference.table.parameters:
            return (f"the candidate scales the rotated pairs by {candidate.gain:.4g} where the config's RoPE scales them "
                    f"by {reference.gain:.4g} (the attention factor of YaRN or LongRoPE)")
        return (f"the candidate's frequencies are those of "
                f"{describe_parameters(candidate.table.parameters, reference.table.parameters)}, the config's "
                f"of {describe_parameters(reference.table.parameters)}: the rope_scaling is not applied as configured")
    if abs(abs(candidate.phase) - np.pi / 2) < 0.05 and candidate.direction != reference.direction:
        return "the candidate's angles are pi/2 minus the reference's: cos and sin are exchanged"
    return f"the candidate's angles are offset by a constant {candidate.phase:+.3f} rad"


def _rope_cause(cause: str):
    def detector(context: Context):
        for finding in findings(context):
            changes = finding.changes
            if "phase" in changes:   # a constant phase: the other differences are part of it (cos and sin exchanged)
                if cause == "rope_angles":
                    yield _diagnosis(context, finding, cause, _explain(finding, "phase"))
                continue
            named = [change for change in changes if CAUSES[change] == cause]
            if named:
                yield _diagnosis(context, finding, cause, "; ".join(_explain(finding, change) for change in named))
    detector.__name__ = cause
    detector.__doc__ = f"{cause}: a parameter of the candidate's fitted RoPE differs from the reference's."
    return detector


for _cause in dict.fromkeys(CAUSES.values()):
    register(_cause)(_rope_cause(_cause))


@register("rope_unexplained_rotation")
def rope_unexplained_rotation(context: Context):
    """The candidate's q_rope is a rotation of its input that no set of parameters explains: the positions
    each token is rotated at, fitted one by one (rope_position_offset: positions reset, repeated, scaled), or
    else the angles read off per frequency (rope_angles)."""
    for finding in findings(context):
        if finding.explained is not None:
            continue
        pair = context.pair(finding.name)
        x = context.candidate[finding.source] if finding.source in context.candidate else context.reference[finding.source]
        x = widened(x)
        if pair is None or x.shape != pair[1].shape:
            continue
        floor = noise_floor(context.candidate.dtypes.get(finding.name))
        found = _per_position(context, finding, x, pair, floor) or _per_frequency(finding, x, pair, floor)
        if found is not None:
            yield found


def _per_position(context: Context, finding: RopeFinding, x: np.ndarray, pair, floor: float) -> Diagnosis | None:
    """Each token's position, fitted with the reference's frequencies, direction and layout."""
    reference = finding.reference
    z, w = (pairs(t, finding.head_dim, finding.dim, reference.layout) for t in (x, pair[1]))
    phasors = np.sum(w * np.conj(z), axis=1)                                         # (T, P)
    weight = np.abs(phasors)
    unit = np.divide(phasors, weight, out=np.zeros_like(phasors), where=weight > 0)
    count = x.shape[0]
    start = max(reference.offset, 0) if reference.offset > 4 * count + 64 else 0       # --start-position
    grid = start + np.arange(-4 * count - 64, 4 * count + 65)                          # positions tried
    frequencies = reference.direction * reference.table.frequencies
    turns = np.exp(1j * (grid[:, None] * frequencies[None, :] + reference.phase))      # (G, P)
    positions = [int(grid[np.argmin(np.sum(weight[t] * np.abs(unit[t][None, :] - turns) ** 2, axis=1))])
                 for t in range(count)]
    own = np.arange(count) + reference.offset
    if positions == own.tolist() or not any(positions):
        return None   # the model's positions; or every one at 0, no rotation at all (op_skipped's)
    hypothesis = _rotated_at(x, reference, positions, finding)
    residual = matches(pair[1], hypothesis, pair[0])
    if residual is None or residual > floor:
        return None
    diagnosis = Diagnosis("rope_position_offset", finding.name,
                          f"the candidate rotates its tokens at positions {_listed(positions)} where the model's are "
                          f"{_listed(own.tolist())} (each position fitted with the reference's frequencies; rel error "
                          f"{residual:.2g}): position ids built another way (reset, repeated, scaled or from a cache)")
    undone = _rotated_at(pair[1], reference, positions, finding, back=True)
    return confirm(context, diagnosis, _rotated_at(undone, reference, own.tolist(), finding),
                   "turning each token back from its fitted position and on to the model's")


def _rotated_at(x: np.ndarray, rotation: Rotation, positions, finding: RopeFinding, back: bool = False) -> np.ndarray:
    angles = rotation.direction * np.asarray(positions, dtype=np.float64)[:, None] * rotation.table.frequencies[None, :] \
        + rotation.phase
    turn = (rotation.gain * np.exp(1j * angles))[:, None, :]
    z = pairs(x, finding.head_dim, finding.dim, rotation.layout)
    return unpairs(z / turn if back else z * turn, x, finding.head_dim, finding.dim, rotation.layout)


def _listed(values: list[int]) -> str:
    return "[" + ", ".join(map(str, values[:10])) + (", ...]" if len(values) > 10 else "]")


def _per_frequency(finding: RopeFinding, x: np.ndarray, pair, floor: float) -> Diagnosis | None:
    own = fitted_table(x, pair[1], finding.head_dim, finding.dim, finding.reference.layout)
    if np.allclose(own.frequencies, 0, atol=1e-6):
        return None   # no rotation at all: its input unchanged (op_skipped)
    rotation = Rotation(own, finding.reference.layout, 1, finding.reference.offset, 0.0, own.gain)
    residual = matches(pair[1], rotation.apply(x, finding.head_dim, finding.dim), pair[0])
    # large angles rounded in the candidate's precision leave more than its floor: a fit that leaves a thousandth
    # of the error is still these rates
    if residual is None or residual > max(floor, ANGLES_LEFT * rel_l2(pair[0], pair[1])):
        return None
    reference_rates = finding.reference.direction * finding.reference.table.frequencies
    ratios = own.frequencies / np.where(reference_rates == 0, np.nan, reference_rates)
    if np.allclose(ratios[np.isfinite(ratios)], 1, atol=1e-3):
        return None   # the reference's own rates
    if _reciprocal(own.frequencies, reference_rates):
        return Diagnosis("rope_angles", finding.name,
                         f"the candidate's {finding.name} turns its pairs at the reciprocals of the reference's rates "
                         f"(seen modulo a full turn per position; rel error of that fit {residual:.2g}): {RECIPROCAL}")
    shown = ", ".join(f"{r:.3g}" for r in ratios[:8]) + (" ..." if len(ratios) > 8 else "")
    return Diagnosis("rope_angles", finding.name,
                     f"the candidate's {finding.name} keeps each pair's norm but turns its pairs at other rates than the "
                     f"reference's: frequency by frequency, the candidate's angle per position over the reference's is "
                     f"[{shown}] (rel error of that fit {residual:.2g}): the inverse frequencies are computed another "
                     f"way (ratios at a scaling factor, or 1, point at a rope_scaling with other boundaries or context "
                     f"length)")


def _reciprocal(rates: np.ndarray, reference_rates: np.ndarray) -> bool:
    """Whether `rates` are 1 / reference_rates, each seen modulo a full turn (a rate past pi per position aliases)."""
    if np.any(reference_rates == 0):
        return False
    aliased = np.angle(np.exp(1j / reference_rates))
    return bool(np.allclose(np.angle(np.exp(1j * (rates - aliased))), 0, atol=1e-3))
