"""How a checkpoint lies across the ranks of a tensor-parallel run: its shard layout.

    layout = ShardLayout.parse({"layers.{i}.q": "split:heads", "local.layers.{i}.attn_out": "partial",
                                "local.logits": "split:vocab", "*": "replicated"})
    layout.of("layers.3.q")            # <Shard split:heads>
    layout.of("layers.3.q.weight")     # <Shard split:0>: a column-parallel weight, its rows split as its output

Each rank's tensor of a checkpoint is one of:

    replicated      the whole tensor, the same on every rank
    split:DIM       a slice along DIM, in rank order: heads, channels, vocab, tokens, or an axis number
    partial         a term of a sum over the ranks (a row-parallel output before its all-reduce)
    partial:vocab   a term of a sum over the ranks in which each rank gives the rows of the tokens of its
                    vocabulary range and zeros elsewhere (a vocab-parallel embedding before its all-reduce)

`local.<checkpoint>` names a checkpoint's value before the collective that makes it (`local.logits`, each
rank's vocabulary slice before the all-gather); the checkpoint's own name holds the value after it.

Keys are checkpoint names or patterns, `{i}` standing for a layer index and `*` for anything; an exact
name wins, then the patterns in the order written. A parameter (`layers.0.q.weight`) with no entry of its
own lies as its module's output does (PARAMETER_SHARDS); a wildcard never decides a parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from parity.core.errors import OptionError
from parity.core.names import HEAD_KINDS, WEIGHT_SUFFIXES, parse

LOCAL_PREFIX = "local."
KINDS = ("replicated", "split", "partial")
# The named dims a split runs along, and the axis each is of a canonical [T, ...] tensor ("last": the last
# axis; attention probabilities [H, T, S] hold their heads first and tokens second).
DIMS = ("heads", "channels", "vocab", "tokens")
COLLECTIVES = {"split": "all-gather", "partial": "all-reduce"}
WRITTEN = "replicated, split:heads, split:channels, split:vocab, split:tokens, split:AXIS, partial or partial:vocab"


@dataclass(frozen=True)
class Shard:
    """One checkpoint's layout across the ranks."""

    kind: str                 # replicated, split or partial
    dim: str | None = None    # split: heads, channels, vocab, tokens or an axis number; partial: None or vocab

    def __repr__(self) -> str:
        return f"<Shard {self}>"

    def __str__(self) -> str:
        return f"{self.kind}:{self.dim}" if self.dim is not None else self.kind

    @property
    def collective(self) -> str | None:
        """The collective that makes the whole tensor of such shards: all-gather, all-reduce, or None."""
        return COLLECTIVES.get(self.kind)

    def axis(self, name: str, ndim: int) -> int:
        """The axis (0 .. ndim-1) a split of `name`'s tensor of `ndim` axes runs along."""
        if self.kind != "split":
            raise ValueError(f"a {self.kind} shard has no split axis")
        checkpoint = parse(name.removeprefix(LOCAL_PREFIX))
        kind = checkpoint.kind if checkpoint is not None else None
        if self.dim == "tokens":
            axis = checkpoint.token_axis if checkpoint is not None else 0
        elif self.dim == "heads" and kind == "attn_probs":
            axis = 0
        elif self.dim in DIMS:
            axis = ndim - 1
        else:
            axis = int(self.dim)
            axis = axis + ndim if axis < 0 else axis
        if not 0 <= axis < ndim:
            raise OptionError(f"{name}: split:{self.dim} names axis {axis} of a tensor of {ndim} axes; "
                              "name an axis it has, or a dim: heads, channels, vocab, tokens")
        return axis


REPLICATED = Shard("replicated")


def parse_shard(value, where: str) -> Shard:
    """'split:heads' -> Shard('split', 'heads'); OptionError saying what is written where it is not."""
    if not isinstance(value, str):
        raise OptionError(f"{where}: the layout is {type(value).__name__} {value!r}; write one of {WRITTEN}")
    kind, _, dim = value.strip().partition(":")
    dim = dim or None
    if kind == "replicated" and dim is None:
        return REPLICATED
    if kind == "partial" and dim in (None, "vocab"):
        return Shard("partial", dim)
    if kind == "split" and dim is not None and (dim in DIMS or re.fullmatch(r"-?\d", dim)):
        return Shard("split", dim)
    raise OptionError(f"{where}: layout {value!r} is not one of {WRITTEN}")


# A parameter with no entry of its own lies as its module's output does: a column-parallel projection
# (output split along its last axis) holds rows of its weight and of its bias; a row-parallel one (partial
# output) holds columns of its weight and the whole bias; a vocab-parallel embedding, rows of its table.
PARAMETER_SHARDS: dict[tuple[str, str], tuple[Shard, Shard]] = {
    # (output kind, output dim) -> (weight, bias)
    ("split", "last"): (Shard("split", "0"), Shard("split", "0")),
    ("partial", None): (Shard("split", "1"), REPLICATED),
    ("partial", "vocab"): (Shard("split", "0"), REPLICATED),
    ("replicated", None): (REPLICATED, REPLICATED),
}


class ShardLayout:
    """The declared layout of every checkpoint: exact names, then patterns in the order written."""

    def __init__(self, entries: Mapping[str, Shard], *, where: str = "the layout") -> None:
        self.entries = dict(entries)
        self.where = where
        self._exact = {key: shard for key, shard in self.entries.items() if not _is_pattern(key)}
        self._patterns = [(key, _compile(key), shard) for key, shard in self.entries.items() if _is_pattern(key)]

    def __repr__(self) -> str:
        return f"<ShardLayout {len(self.entries)} entries>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardLayout) and self.as_json() == other.as_json()

    @classmethod
    def parse(cls, declared, *, where: str = "the layout") -> "ShardLayout":
        """From {name or pattern: 'split:heads', ...} (a port's `parity_shards`, a trace's `shards.layout`)."""
        if isinstance(declared, ShardLayout):
            return declared
        if not isinstance(declared, Mapping) or not declared:
            raise OptionError(f"{where}: the shard layout is {type(declared).__name__}, not an object of "
                              "checkpoint -> layout, e.g. {\"layers.{i}.q\": \"split:heads\", \"*\": \"replicated\"} "
                              "(docs/trace-format.md, 'Sharded traces')")
        entries = {}
        for key, value in declared.items():
            if not isinstance(key, str) or not key:
                raise OptionError(f"{where}: a shard layout key is {key!r}; write a checkpoint name or pattern")
            entries[key] = parse_shard(value, f"{where}, {key!r}")
        return cls(entries, where=where)

    def as_json(self) -> dict[str, str]:
        return {key: str(shard) for key, shard in self.entries.items()}

    def of(self, name: str) -> Shard:
        """The layout of `name` (a checkpoint, `local.<checkpoint>`, or a parameter); OptionError if none."""
        parameter = _parameter(name)
        found = self._declared(name, parameters=parameter is not None)
        if found is not None:
            return found
        if parameter is not None:
            module, suffix = parameter
            output = self.collective_input(module) or self.of(module)
            return parameter_shard(module, output, suffix)
        raise OptionError(f"{self.where}: no shard layout for {name}; declare it (e.g. \"{_pattern_of(name)}\": "
                          "\"replicated\") or add \"*\": \"replicated\" for whatever every rank holds whole")

    def collective_input(self, checkpoint: str) -> Shard | None:
        """The layout of `local.<checkpoint>` where an entry names collective inputs (a bare wildcard does not)."""
        name = LOCAL_PREFIX + checkpoint
        if name in self._exact:
            return self._exact[name]
        return next((shard for key, pattern, shard in self._patterns
                     if key.startswith(LOCAL_PREFIX) and pattern.match(name)), None)

    def _declared(self, name: str, *, parameters: bool) -> Shard | None:
        if name in self._exact:
            return self._exact[name]
        for key, pattern, shard in self._patterns:
            if parameters and not key.endswith(WEIGHT_SUFFIXES):
                continue   # a wildcard never decides a parameter: it lies as its module's output
            if pattern.match(name):
                return shard
        return None


def parameter_shard(module: str, output: Shard, suffix: str) -> Shard:
    """How a parameter of the module making `module`'s output lies, from that output's layout."""
    checkpoint = parse(module)
    if output.kind == "split":
        last = output.dim in ("heads", "channels", "vocab") and not (checkpoint and checkpoint.kind == "attn_probs")
        if not (last or output.dim == "-1"):
            return REPLICATED   # split along the tokens: sequence parallel keeps whole weights
        weight, bias = PARAMETER_SHARDS[("split", "last")]
    else:
        weight, bias = PARAMETER_SHARDS[(output.kind, output.dim)]
    return weight if suffix == "weight" else bias


def per_head(name: str) -> bool:
    checkpoint = parse(name.removeprefix(LOCAL_PREFIX))
    return checkpoint is not None and checkpoint.kind in HEAD_KINDS


def checkpoint_of(name: str) -> str:
    """The reference's name for a rank's tensor: `local.layers.0.attn_out` -> `layers.0.attn_out`."""
    return name.removeprefix(LOCAL_PREFIX)


def _parameter(name: str) -> tuple[str, str] | None:
    for suffix in WEIGHT_SUFFIXES:
        if name.endswith(suffix) and parse(name[: -len(suffix)]) is not None:
            return name[: -len(suffix)], suffix[1:]
    return None


def _is_pattern(key: str) -> bool:
    return "{i}" in key or "*" in key


def _compile(key: str) -> re.Pattern:
    return re.compile(re.escape(key).replace(r"\{i\}", r"\d+").replace(r"\*", ".*") + r"\Z")


def _pattern_of(name: str) -> str:
    return re.sub(r"^(local\.)?layers\.\d+\.", lambda m: f"{m.group(1) or ''}layers.{{i}}.", name)
