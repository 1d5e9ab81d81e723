"""RoPE as parameters, fitted from q (or k) before and after the rotation, for every rope type.

The pairs of a head's dimensions, (i, i + r/2) or (2i, 2i+1), are complex numbers z
(before) and w (after). Summed over heads, c(t, i) = sum w conj(z): a rotation keeps
|c| at sum |z|^2 (times YaRN's or LongRoPE's attention factor) and turns it by the
angle at position t of frequency i. The fit names the parameters that make those angles,

    angle(t, i) = direction * (t + offset) * w_i + phase,   w from a RoPE type and its parameters,

by scoring the angle steps from t to t + 1 (which offset and phase leave out) against
each table of frequencies: the config's, the config's with another base (theta) or
scaling factor, and no scaling at all. The best table and direction get an offset
and a phase, and the whole rotation is held to the candidate's own tensor. The
reference's trace is fitted the same way; its rotation is what the candidate is
compared with, and when the config's table does not reproduce it (a RoPE type not
known here) the reference's own fitted frequencies stand in for the config's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from parity.core.metrics import rel_l2
from parity.diagnose.context import ModelConfig, layer_facts

LAYOUTS = {"half": "pairs (i, i + d/2)", "adjacent": "pairs (2i, 2i+1)"}
MAX_OFFSET = 8
THETA_GRID = np.exp(np.linspace(math.log(1e2), math.log(1e8), 121))
CONTEXT_GRID = tuple(2 ** power for power in range(8, 18))   # original contexts: 256 to 131,072 (and the model's)
FACTOR_GRID = (0.25, 0.5, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)
SHORTLIST = 4          # tables (with a direction) taken on to fit an offset and a phase
PHASE_SAME = 0.02      # radians: a constant phase this small is none
GAIN_SAME = 0.02       # a gain within 2% of the config's attention factor is that factor
PARSIMONY = 1.5        # a fit with fewer changes is kept unless another leaves 1.5x less error ...
NOISE_FLOOR = {"float64": 1e-9, "float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}  # ... or both are within this


# ----- the config's frequencies --------------------------------------------------------------------------

def rope_parameters(config: ModelConfig, layer: int | None) -> dict | None:
    """The RoPE parameters of one layer (Gemma 3 keeps one set per layer type); None without RoPE."""
    raw = config.raw
    if raw.get("model_type") == "gpt2" or not config.head_dim or not raw:
        return None
    rope = raw.get("rope_parameters") or {}
    types = raw.get("layer_types") or []
    if layer is not None and layer < len(types) and isinstance(rope.get(types[layer]), dict):
        rope = rope[types[layer]]
    elif rope and all(isinstance(value, dict) for value in rope.values()):
        rope = next(iter(rope.values()))
    merged = {"rope_theta": raw.get("rope_theta", 10000.0), **(raw.get("rope_scaling") or {}), **rope}
    merged["rope_type"] = merged.get("rope_type") or merged.get("type") or "default"
    return merged


def rotary_dim(config: ModelConfig, layer: int | None, parameters: dict) -> int:
    recorded = layer_facts(config, layer).get("rotary_dim")
    if isinstance(recorded, int) and 0 < recorded <= config.head_dim:
        return recorded
    return int(config.head_dim * parameters.get("partial_rotary_factor", 1.0)) // 2 * 2


def frequencies(parameters: dict, *, head_dim: int, dim: int, max_positions: int | None,
                tokens: int) -> tuple[np.ndarray, float] | None:
    """(inverse frequencies (dim/2,), attention factor) as transformers computes them; None for a type
    not known here. `tokens` is the sequence length (dynamic and LongRoPE depend on it)."""
    kind, theta = parameters["rope_type"], float(parameters["rope_theta"])
    exponent = np.arange(0, dim, 2, dtype=np.float64) / dim
    factor = parameters.get("factor")
    if kind == "default":
        return theta ** -exponent, 1.0
    if kind == "linear":
        return theta ** -exponent / factor, 1.0
    if kind == "dynamic":
        length = max(tokens, max_positions or tokens)
        if max_positions:
            theta = theta * ((factor * length / max_positions) - (factor - 1)) ** (dim / (dim - 2))
        return theta ** -exponent, 1.0
    if kind == "llama3":
        return _llama3(theta ** -exponent, parameters), 1.0
    if kind == "yarn":
        return _yarn(theta, dim, parameters, max_positions)
    if kind == "longrope":
        original = parameters["original_max_position_embeddings"]
        factor = factor or (max_positions / original if max_positions else 1.0)
        scales = np.asarray(parameters["long_factor" if tokens > original else "short_factor"], dtype=np.float64)
        attention = parameters.get("attention_factor") or (
            1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original)))
        return 1.0 / (scales * theta ** exponent), attention
    if kind == "proportional":
        angles = int(parameters.get("partial_rotary_factor", 1.0) * head_dim // 2)
        rotated = theta ** -(np.arange(0, 2 * angles, 2, dtype=np.float64) / head_dim)
        return np.concatenate([rotated, np.zeros(head_dim // 2 - angles)]) / (factor or 1.0), 1.0
    return None


def _llama3(inverse: np.ndarray, parameters: dict) -> np.ndarray:
    factor, low, high = parameters["factor"], parameters["low_freq_factor"], parameters["high_freq_factor"]
    context = parameters["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inverse
    scaled = np.where(wavelength > context / low, inverse / factor, inverse)
    smooth = (context / wavelength - low) / (high - low)
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _yarn(theta: float, dim: int, parameters: dict, max_positions: int | None) -> tuple[np.ndarray, float]:
    original = parameters["original_max_position_embeddings"]
    factor = parameters.get("factor") or (max_positions / original if max_positions else 1.0)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = parameters.get("attention_factor")
    if attention is None:
        m, m_all = parameters.get("mscale"), parameters.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    fast, slow = parameters.get("beta_fast") or 32, parameters.get("beta_slow") or 1

    def correction(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction(fast), correction(slow)
    if parameters.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    positional = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    extrapolation = 1 - ramp
    return (1 / (factor * positional)) * (1 - extrapolation) + (1 / positional) * extrapolation, float(attention)


@dataclass(frozen=True)
class Table:
    """A set of frequencies and what they came from."""

    frequencies: np.ndarray
    gain: float
    parameters: dict
    changes: frozenset = frozenset()   # which of the config's parameters were changed to make it

    def __repr__(self) -> str:
        return f"<Table {describe_parameters(self.parameters)}>"


RECIPROCAL = ("its inverse frequencies are theta^(2i/d), not theta^(-2i/d): the `1.0 /` of inv_freq = 1.0 / theta ** "
              "(arange(0, d, 2) / d) left out")


def reciprocal_table(table: Table) -> Table | None:
    """The table a port gets that leaves out inv_freq's `1.0 /`: each rate's reciprocal (None where a rate is 0)."""
    if np.any(table.frequencies == 0):
        return None
    return Table(1 / table.frequencies, table.gain, table.parameters, frozenset({"reciprocal"}))


def describe_parameters(parameters: dict, config: dict | None = None) -> str:
    """theta and scaling; given the config's parameters, also the others that differ from them."""
    if parameters.get("rope_type") == "fitted":
        return "the reference's own fitted frequencies"
    kind = parameters["rope_type"]
    unscaled = ", no scaling" if config is not None and config.get("rope_type", "default") != "default" else ""
    scaling = unscaled if kind == "default" else f", {kind} scaling" + (
        f" x{parameters['factor']:.4g}" if parameters.get("factor") else "")
    shown = {"rope_type", "rope_theta", "factor"}
    others = [f"{key} {value:.4g} for {config[key]:.4g}" for key, value in parameters.items()
              if config is not None and key not in shown and isinstance(value, (int, float))
              and isinstance(config.get(key), (int, float)) and value != config[key]]
    return f"theta {parameters['rope_theta']:.4g}{scaling}" + (f" ({', '.join(others)})" if others else "")


@dataclass(frozen=True)
class Tables:
    """The config's table first, then the ones a port gets instead: another theta, another factor,
    no scaling (or a linear one where there is none); `make` builds one for changed parameters."""

    parameters: dict
    head_dim: int
    dim: int
    max_positions: int | None
    tokens: int

    def make(self, changes: frozenset = frozenset(), **changed) -> Table | None:
        varied = {**self.parameters, **changed}
        try:
            found = frequencies(varied, head_dim=self.head_dim, dim=self.dim, max_positions=self.max_positions,
                                tokens=self.tokens)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if found is None or len(found[0]) != self.dim // 2 or not np.all(np.isfinite(found[0])):
            return None
        return Table(found[0], found[1], varied, changes)

    def all(self) -> list[Table]:
        parameters = self.parameters
        made = [self.make()]
        made += [self.make(frozenset({"theta"}), rope_theta=float(theta)) for theta in THETA_GRID]
        if parameters["rope_type"] != "default":
            made.append(self.make(frozenset({"scaling"}), rope_type="default"))
        if parameters.get("factor"):
            made += [self.make(frozenset({"scaling"}), factor=factor) for factor in FACTOR_GRID
                     if factor != parameters["factor"]]
        elif parameters["rope_type"] == "default":
            made += [self.make(frozenset({"scaling"}), rope_type="linear", factor=factor) for factor in FACTOR_GRID]
        if isinstance(parameters.get("original_max_position_embeddings"), int):   # another original context
            made += [self.make(frozenset({"scaling"}), original_max_position_embeddings=context)
                     for context in sorted({*CONTEXT_GRID, self.max_positions or 0} - {0})
                     if context != parameters["original_max_position_embeddings"]]
        if parameters["rope_type"] == "llama3":   # the low and high frequency factors read into each other's place
            made.append(self.make(frozenset({"scaling"}), low_freq_factor=parameters["high_freq_factor"],
                                  high_freq_factor=parameters["low_freq_factor"]))
        return [table for table in made if table is not None]


# ----- rotations ---------------------------------------------------------------------------------------

def pairs(x: np.ndarray, head_dim: int, dim: int, layout: str) -> np.ndarray:
    """(T, H*hd) -> complex (T, H, dim/2): the rotated pairs of each head."""
    heads = x.reshape(x.shape[0], -1, head_dim)[..., :dim]
    if layout == "half":
        return heads[..., : dim // 2] + 1j * heads[..., dim // 2:]
    return heads[..., 0::2] + 1j * heads[..., 1::2]


def unpairs(z: np.ndarray, like: np.ndarray, head_dim: int, dim: int, layout: str) -> np.ndarray:
    """The inverse of pairs(), the dimensions past `dim` taken from `like`."""
    out = like.reshape(like.shape[0], -1, head_dim).astype(np.float64, copy=True)
    if layout == "half":
        out[..., : dim // 2], out[..., dim // 2: dim] = z.real, z.imag
    else:
        out[..., 0:dim:2], out[..., 1:dim:2] = z.real, z.imag
    return out.reshape(like.shape)


@dataclass(frozen=True)
class Rotation:
    """A RoPE as fitted: a table of frequencies, turned this way, from this position, in this layout."""

    table: Table
    layout: str = "half"
    direction: int = 1
    offset: int = 0
    phase: float = 0.0
    gain: float = 1.0
    changes: frozenset = field(default=frozenset())

    def __repr__(self) -> str:
        return f"<Rotation {self.describe()}>"

    def angles(self, count: int) -> np.ndarray:
        positions = np.arange(count, dtype=np.float64) + self.offset
        return self.direction * positions[:, None] * self.table.frequencies[None, :] + self.phase   # (T, P)

    def apply(self, x: np.ndarray, head_dim: int, dim: int) -> np.ndarray:
        turn = self.gain * np.exp(1j * self.angles(x.shape[0]))[:, None, :]
        return unpairs(pairs(x, head_dim, dim, self.layout) * turn, x, head_dim, dim, self.layout)

    def undo(self, y: np.ndarray, head_dim: int, dim: int) -> np.ndarray:
        turn = self.gain * np.exp(1j * self.angles(y.shape[0]))[:, None, :]
        return unpairs(pairs(y, head_dim, dim, self.layout) / turn, y, head_dim, dim, self.layout)

    def describe(self) -> str:
        parts = [describe_parameters(self.table.parameters), LAYOUTS[self.layout],
                 "turning " + ("forward" if self.direction > 0 else "backward (angles negated)"),
                 f"positions from {self.offset}"]
        if self.phase:
            parts.append(f"a constant phase of {self.phase:+.3f} rad")
        if abs(self.gain - 1) > GAIN_SAME:
            parts.append(f"pairs scaled by {self.gain:.4g}")
        return ", ".join(parts)


def fit(x: np.ndarray, y: np.ndarray, head_dim: int, dim: int, candidates: list[Table],
        floor: float, source: Tables | None = None, start: int = 0) -> tuple[Rotation, float] | None:
    """The rotation of `candidates`' tables (any direction, offset, phase, gain, layout) that best turns x
    into y, and the rel_l2 it leaves; of near-equal fits, the one that changes fewest parameters. `start`:
    the absolute position of the first token (--start-position); an offset is fitted around it."""
    count = x.shape[0]
    if count < 2 or not candidates:
        return None
    fitted = []
    for layout in LAYOUTS:
        z, w = pairs(x, head_dim, dim, layout), pairs(y, head_dim, dim, layout)
        phasors = np.sum(w * np.conj(z), axis=1)                       # (T, P)
        energy = float(np.sum(np.abs(z) ** 2))
        steps = phasors[1:] * np.conj(phasors[:-1])                     # (T-1, P): one position's turn
        weight = np.abs(steps)
        unit = np.divide(steps, weight, out=np.zeros_like(steps), where=weight > 0)
        if energy == 0 or not np.any(weight):
            continue

        def step_error(frequencies: np.ndarray, direction: int) -> float:
            return float(np.sum(weight * np.abs(unit - np.exp(1j * direction * frequencies)[None, :]) ** 2))

        scored = sorted(((step_error(table.frequencies, direction), index, direction)
                         for index, table in enumerate(candidates) for direction in (1, -1)), key=lambda s: s[0])
        for _, index, direction in scored[:SHORTLIST]:
            table = _refined(candidates[index], candidates[0], source, step_error, direction)
            fitted.append(_placed(table, layout, direction, phasors, energy, x, y, head_dim, dim, start))
    if not fitted:
        return None
    best = min(left for _, left in fitted)
    near = [(rotation, left) for rotation, left in fitted if left <= max(PARSIMONY * best, floor)]
    return min(near, key=lambda pair: (len(pair[0].changes), pair[1]))


def _refined(table: Table, config: Table, source: Tables | None, step_error, direction: int) -> Table:
    """A theta or a factor taken from the grid, refined by golden-section search on the angle steps."""
    key = ("rope_theta" if table.changes == {"theta"} else
           "factor" if table.changes == {"scaling"} and table.parameters.get("factor") else None)
    if key is None or source is None:
        return table

    def error(log_value: float) -> float:
        made = source.make(table.changes, **{**table.parameters, key: math.exp(log_value)})
        return math.inf if made is None else step_error(made.frequencies, direction)

    low, high = math.log(table.parameters[key]) - 0.15, math.log(table.parameters[key]) + 0.15
    for _ in range(40):
        a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
        low, high = (low, b) if error(a) < error(b) else (a, high)
    value = math.exp((low + high) / 2)
    if config.parameters.get(key) and abs(value / config.parameters[key] - 1) < 0.01:
        return config   # the config's own value, found again
    refined = source.make(table.changes, **{**table.parameters, key: value})
    if refined is None or step_error(refined.frequencies, direction) > step_error(table.frequencies, direction):
        return table    # a table not smooth in the value (YaRN's rounded boundaries): the grid's is nearer
    return refined


def _placed(table: Table, layout: str, direction: int, phasors: np.ndarray, energy: float, x: np.ndarray,
            y: np.ndarray, head_dim: int, dim: int, start: int = 0) -> tuple[Rotation, float]:
    """The table placed: the offset and phase that best line up its angles with the phasors, the gain,
    and the rel_l2 the rotation leaves against y."""
    count = phasors.shape[0]
    positions = np.arange(count, dtype=np.float64) + start
    rest = phasors * np.exp(-1j * direction * positions[:, None] * table.frequencies[None, :])   # (T, P)
    per_frequency = rest.sum(axis=0)                                                              # (P,)
    offsets = sorted(range(-MAX_OFFSET, MAX_OFFSET + 1), key=abs)
    sums = [np.sum(per_frequency * np.exp(-1j * direction * offset * table.frequencies)) for offset in offsets]
    offset = offsets[int(np.argmax([abs(s) for s in sums]))]
    total = sums[offsets.index(offset)]
    phase = float(np.angle(total))
    phase = 0.0 if abs(phase) < PHASE_SAME else phase
    rotation = Rotation(table, layout, direction, start + offset, phase, 1.0)
    turned = np.sum(phasors * np.exp(-1j * rotation.angles(count)))
    gain = float(turned.real) / energy
    gain = table.gain if abs(gain / table.gain - 1) <= GAIN_SAME else gain
    changes = set(table.changes)
    changes |= {"direction"} if direction < 0 else set()
    changes |= {"offset"} if offset else set()
    changes |= {"phase"} if phase else set()
    changes |= {"gain"} if gain != table.gain else set()
    rotation = replace(rotation, gain=gain, changes=frozenset(changes))
    return rotation, rel_l2(y, rotation.apply(x, head_dim, dim))


def fitted_table(x: np.ndarray, y: np.ndarray, head_dim: int, dim: int, layout: str) -> Table:
    """Frequencies read straight off the angle steps (for a RoPE type not known here)."""
    z, w = pairs(x, head_dim, dim, layout), pairs(y, head_dim, dim, layout)
    phasors = np.sum(w * np.conj(z), axis=1)
    steps = np.sum(phasors[1:] * np.conj(phasors[:-1]), axis=0)
    gain = float(np.sum(np.abs(phasors)) / max(np.sum(np.abs(z) ** 2), 1e-300))
    return Table(np.angle(steps), gain, {"rope_type": "fitted", "rope_theta": float("nan")})


def noise_floor(dtype: str | None) -> float:
    return NOISE_FLOOR.get(dtype or "float32", NOISE_FLOOR["float32"])
