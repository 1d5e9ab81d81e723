"""Conventions that are not bugs: recognized in the candidate's trace, adapted to the reference's, and noted.

Ports keep their tensors their own way. These differ from the reference's form without
changing what the model computes, so parity adapts the candidate to the reference before
comparing, and says so once per convention:

    layout          per-head tensors as [T, H, hd] or [H, T, hd] (with or without a batch axis) for
                    [T, H*hd]; attention probabilities as [T, H, S] for [H, T, S]; axes of size 1
    vocab_padding   logits over a vocabulary padded past the tokenizer's ([T, V'] for [T, V], V' > V)
    logit_shift     every logits row shifted by a constant (log-softmax, and so every probability,
                    unchanged)
    residual_pair   a block output kept as two tensors, the branch and the residual ([2, T, D]), summed
    rope_pairs      q and k kept in the interleaved RoPE layout, each head's dimensions rotated in pairs
                    (2i, 2i+1) where the reference rotates i with i+hd/2 (core/rope_layout.py): read in the
                    reference's order, and so are the rows of their parameters (--weights)

Every detector then reads the adapted tensors, so a convention never hides a cause. `strict`
(the option --strict) lists the conventions to hold as failures instead: those checkpoints are
compared as stored, and do not pass.

A trace may declare its per-head layouts in its metadata, `"layouts": {"layers.*.q": "HTD"}`
(axes B batch, H heads, T tokens, D head dim or width, S keys), for where the sizes do not tell.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from parity.core.config_shape import config_shape
from parity.core.names import HEAD_KINDS, is_raw, parse, weight_of
from parity.core.rope_layout import (is_per_head_qk, kept_in_pairs, pairs_detail, rotated_head_dim, unpermute_qk,
                                     unpermute_rows)
from parity.core.trace import Trace
from parity.core.trace.pages import PagesBehind

CONVENTIONS = ("layout", "vocab_padding", "logit_shift", "residual_pair", "rope_pairs",
               "logprob_shift")   # a server's log-probabilities one token off (adapted in core/sequence.py)
_LOGIT_KINDS = ("logits", "lm_head_out")
_SHIFT_CHUNK_ROWS = 256
_SHIFTED_HELD_BYTES = 256 << 20   # shifted logits larger than this are written to a file and mapped
_REARRANGING = ("layout", "rope_pairs")   # conventions that only move elements: as_stored() inverts them
# A per-row constant counts when what it leaves is at most 1% of the error's square (a tenth of its size): a
# quantized build returning log-probabilities leaves about 1e-3 (its noise, ~5% of logits ~15, against a
# logsumexp ~20); a wrong hidden state whose logits move mostly together (the lm_head's rows share a large
# common direction) leaves a few percent (5.4% for a RoPE base 10x too small on SmolLM2), and is not a convention.
_SHIFT_EXPLAINS = 0.01


@dataclass(frozen=True)
class Adaptation:
    """One convention found in the candidate: which checkpoints, and what was done."""

    convention: str
    names: tuple[str, ...]
    detail: str
    held: bool = False              # --strict: recognized, not adapted, so these checkpoints fail as stored

    def __repr__(self) -> str:
        return f"<Adaptation {self.convention}{' held' if self.held else ''}: {len(self.names)} checkpoints>"

    @property
    def note(self) -> str:
        where = _summarize(self.names)
        if self.held:
            return f"not adapted (--strict {self.convention}): {where} {self.detail}, and fail as stored"
        return f"adapted ({self.convention}): {where} {self.detail}; --strict {self.convention} holds it as a failure"


def adapt(reference: Trace, candidate: Trace, *, strict: frozenset[str] = frozenset()
          ) -> tuple[Trace, tuple[Adaptation, ...]]:
    """The candidate with every recognized convention (except those in `strict`) adapted to the reference's
    form, lazily (a tensor is transformed when it is read), and what was adapted."""
    heads = _heads(reference, candidate)
    declared = candidate.metadata.get("layouts") or {}
    transforms: dict[str, _Transform] = {}
    found: dict[tuple[str, str], list[str]] = {}
    for name in candidate.tensors:
        if name not in reference.tensors or is_raw(name):
            continue
        transform = _recognize(name, reference, candidate, heads, declared if isinstance(declared, dict) else {})
        if transform is None:
            continue
        if transform.convention not in strict:
            transforms[name] = transform
        found.setdefault((transform.convention, transform.detail), []).append(name)
    adaptations = [Adaptation(convention, tuple(names), detail, held=convention in strict)
                   for (convention, detail), names in found.items()]
    pairs = _rope_pairs(reference, candidate, transforms)
    if pairs:
        head_dim, paired = pairs
        if "rope_pairs" not in strict:
            transforms.update(paired)
        adaptations.append(Adaptation("rope_pairs", tuple(paired), pairs_detail(head_dim),
                                      held="rope_pairs" in strict))
    if "logit_shift" not in strict:
        shifted = _logit_shifts(reference, candidate, transforms)
        for name, (shifts, transform) in shifted.items():
            transforms[name] = transform
            adaptations.append(Adaptation("logit_shift", (name,), f"every row shifted by a constant "
                                          f"(from {shifts.min():.3g} to {shifts.max():.3g}): probabilities unchanged"))
    if not transforms:
        return candidate, tuple(adaptations)
    tensors = _Adapted(candidate.tensors, transforms)
    dtypes = {name: candidate.dtype_of(name) for name in candidate.tensors} if candidate.dtypes else {}
    # replace() keeps what a Trace subclass carries besides (a ShardedTrace's ranks)
    return dataclasses.replace(candidate, tensors=tensors, dtypes=dtypes), tuple(adaptations)


def as_stored(adapted: Trace, name: str, value: np.ndarray) -> np.ndarray | None:
    """`value`, a tensor in the reference's form, laid out as the candidate stores `name`: the inverse of its
    adaptation in `adapted` (what adapt() returned), for feeding the reference's value to the candidate's own
    code (a replay). `value` itself where `name` was not adapted; None where the adaptation is not a
    rearrangement of the elements (a padded vocabulary, a residual pair, a logit shift: no inverse)."""
    tensors = adapted.tensors
    transform = tensors.transform_of(name) if isinstance(tensors, _Adapted) else None
    if transform is None:
        return value
    if transform.convention not in _REARRANGING:
        return None
    stored_shape = tensors.stored_shape(name)
    index = np.arange(math.prod(stored_shape)).reshape(stored_shape)
    moved = np.asarray(transform.apply(index))        # reference-shaped: where each element is stored
    value = np.asarray(value)
    if moved.shape != value.shape:
        return None
    stored = np.empty(index.size, dtype=value.dtype)
    stored[moved.reshape(-1)] = value.reshape(-1)
    return stored.reshape(stored_shape)


@dataclass(frozen=True)
class _Transform:
    convention: str
    detail: str
    shape: tuple[int, ...]          # the tensor's shape once adapted
    apply: object                   # array -> array

    def __repr__(self) -> str:
        return f"<_Transform {self.convention} -> {list(self.shape)}>"


def _rope_pairs(reference: Trace, candidate: Trace, transforms: Mapping[str, _Transform]):
    """(head size, name -> transform) that reads q and k kept in the interleaved RoPE layout in the reference's
    halves order (core/rope_layout.py), after any other adaptation of theirs; None for a candidate that does
    not keep them so."""
    head_dim = rotated_head_dim(reference)

    def read(name: str) -> np.ndarray:
        return transforms[name].apply(candidate[name]) if name in transforms else candidate[name]

    if not kept_in_pairs(reference, read, candidate.tensors, head_dim):
        return None
    paired = {}
    for name in candidate.tensors:
        base = transforms.get(name)
        shape = base.shape if base is not None else candidate.shape_of(name)
        if name not in reference.tensors or shape != reference.shape_of(name):
            continue
        stored = base.apply if base is not None else np.asarray
        if is_per_head_qk(name) and len(shape) == 2 and not shape[-1] % head_dim:
            paired[name] = _Transform("rope_pairs", "pairs", shape,
                                      lambda array, stored=stored: unpermute_qk(stored(array), head_dim))
        elif _is_per_head_qk_parameter(name) and len(shape) in (1, 2) and not shape[0] % head_dim:
            # its rows are q's or k's channels (a weight [H*hd, D], a bias or a per-head norm's weight): in pairs too
            paired[name] = _Transform("rope_pairs", "pairs", shape,
                                      lambda array, stored=stored: unpermute_rows(stored(array), head_dim))
    return head_dim, paired


def _is_per_head_qk_parameter(name: str) -> bool:
    owner = weight_of(name)
    return owner is not None and is_per_head_qk(owner[0])


def _recognize(name: str, reference: Trace, candidate: Trace, heads: frozenset[int],
               declared: Mapping[str, str]) -> _Transform | None:
    reference_shape, stored = reference.shape_of(name), candidate.shape_of(name)
    if stored == reference_shape:
        return None
    kind = (parse(name).kind if parse(name) else name)
    shape = _without_leading_ones(stored, len(reference_shape))
    if kind == "out" and len(shape) == 3 and shape[0] == 2 and shape[1:] == reference_shape:
        return _Transform("residual_pair", "summed from [2, T, D] (the branch and the residual)", reference_shape,
                          lambda array: np.asarray(array).reshape(shape).sum(axis=0))
    if kind in _LOGIT_KINDS and len(shape) == 2 and shape[0] == reference_shape[0] and shape[1] > reference_shape[1]:
        width = reference_shape[1]
        return _Transform("vocab_padding", f"padded past the vocabulary ({shape[1]} columns for {width}): the first "
                          f"{width} compared", reference_shape,
                          lambda array: np.asarray(array).reshape(shape)[:, :width])
    if math.prod(shape) != math.prod(reference_shape):
        return None
    layout = _declared_layout(name, declared) or _layout(kind, shape, reference_shape, heads)
    if layout is None:
        return None
    axes, description = layout
    if kind in HEAD_KINDS:
        return _Transform("layout", f"stored as {description}, read as [T, H*hd]", reference_shape,
                          lambda array: np.asarray(array).reshape(shape).transpose(axes).reshape(reference_shape))
    return _Transform("layout", f"stored as {description}", reference_shape,
                      lambda array: np.asarray(array).reshape(shape).transpose(axes).reshape(reference_shape))


def _layout(kind: str, shape: tuple[int, ...], reference_shape: tuple[int, ...], heads: frozenset[int]):
    """(axis order, description) that turns `shape` into `reference_shape` by a conventional layout; None."""
    if shape == reference_shape:
        return tuple(range(len(shape))), f"{list(shape)} with axes of size 1"
    if kind in HEAD_KINDS and len(reference_shape) == 2 and len(shape) == 3:
        tokens, width = reference_shape
        token_major = shape[0] == tokens and shape[1] * shape[2] == width
        head_major = shape[1] == tokens and shape[0] * shape[2] == width
        if token_major and head_major and heads:    # as many heads as tokens: the head counts tell, if they can
            token_major, head_major = shape[1] in heads, shape[0] in heads
        if token_major != head_major:
            return ((0, 1, 2), "[T, H, hd]") if token_major else ((1, 0, 2), "[H, T, hd]")
    if kind == "attn_probs" and len(shape) == 3 == len(reference_shape):
        if shape == (reference_shape[1], reference_shape[0], reference_shape[2]) and shape[0] != shape[1]:
            return (1, 0, 2), "[T, H, S]"
    return None


_DECLARED_AXES = {"BHTD": (1, 0, 2), "HTD": (1, 0, 2), "BTHD": (0, 1, 2), "THD": (0, 1, 2),
                  "BTHS": (1, 0, 2), "THS": (1, 0, 2)}


def _declared_layout(name: str, declared: Mapping[str, str]):
    for pattern, layout in declared.items():
        if isinstance(layout, str) and fnmatch.fnmatchcase(name, pattern) and layout.upper() in _DECLARED_AXES:
            return _DECLARED_AXES[layout.upper()], f"{layout.upper()} (declared)"
    return None


def _without_leading_ones(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    while len(shape) > rank and shape[0] == 1:
        shape = shape[1:]
    return shape


def _heads(reference: Trace, candidate: Trace) -> frozenset[int]:
    return frozenset().union(*(config_shape(trace.metadata.get("config")).head_counts
                               for trace in (reference, candidate)))


def _logit_shifts(reference: Trace, candidate: Trace, transforms: Mapping[str, _Transform]) -> dict:
    """name -> (per-row shifts, transform) for logits whose rows differ from the reference's by constants."""
    found = {}
    for name in _LOGIT_KINDS:
        if name not in reference.tensors or name not in candidate.tensors:
            continue
        transform = transforms.get(name)
        shape = transform.shape if transform else candidate.shape_of(name)
        if shape != reference.shape_of(name) or len(shape) != 2:
            continue
        stored = candidate[name]
        values = transform.apply(stored) if transform else np.asarray(stored)
        shifts, kept, whole = _row_shifts(np.asarray(reference[name]), values)
        if whole > 0 and kept <= _SHIFT_EXPLAINS * whole and np.abs(shifts).max() > 0:
            base = transform.apply if transform else np.asarray
            found[name] = (shifts, _Transform(
                "logit_shift", "rows shifted", shape,
                lambda array, base=base, shifts=shifts: _shifted(base(array), shifts)))
    return found


def _shifted(values: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """`values` (T, V) with each row's shift taken off, in float64. Past _SHIFTED_HELD_BYTES (a long input's
    logits: 4.3 GB for Gemma 3's vocabulary at T=2,048) it is written a block of rows at a time to an unlinked
    file (in PARITY_SPILL_DIR, else the system's temporary directory) and mapped read-only, so that a pass over
    it hands its pages back as it goes; the file goes when the array does."""
    from parity.core.trace.spilled import spilled

    if values.shape[0] * values.shape[1] * 8 <= _SHIFTED_HELD_BYTES:
        return np.asarray(values, dtype=np.float64) - shifts[:, None].astype(np.float64)
    return spilled(_shifted_blocks(values, shifts), shape=tuple(values.shape), dtype=np.float64,
                   prefix="parity-shifted-")


def _shifted_blocks(values: np.ndarray, shifts: np.ndarray):
    """Blocks of rows of `values` less their shifts, float64; the pages of `values` handed back as they go."""
    behind = PagesBehind(values)
    for start in range(0, values.shape[0], _SHIFT_CHUNK_ROWS):
        stop = min(start + _SHIFT_CHUNK_ROWS, values.shape[0])
        yield np.asarray(values[start:stop], dtype=np.float64) - shifts[start:stop, None].astype(np.float64)
        behind.passed(stop * values.shape[1])


def _row_shifts(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Each row's mean difference, the error left after removing it, and the error before (sums of squares)."""
    shifts, kept, whole = [], 0.0, 0.0
    behind = PagesBehind(reference, candidate)   # mapped logits: pages handed back as they are read
    for start in range(0, reference.shape[0], _SHIFT_CHUNK_ROWS):
        r = reference[start:start + _SHIFT_CHUNK_ROWS].astype(np.float64)
        difference = candidate[start:start + _SHIFT_CHUNK_ROWS].astype(np.float64) - r
        finite = np.isfinite(difference)
        mean = np.where(finite, difference, 0.0).sum(-1) / np.maximum(finite.sum(-1), 1)
        shifts.append(mean)
        whole += float(np.square(np.where(finite, difference, 0.0)).sum())
        kept += float(np.square(np.where(finite, difference - mean[:, None], 0.0)).sum())
        behind.passed(min(start + _SHIFT_CHUNK_ROWS, reference.shape[0]) * reference[0].size)
    return np.concatenate(shifts) if shifts else np.zeros(0), kept, whole


class _Adapted(Mapping):
    """The candidate's tensors, each adapted when read; shapes known without reading."""

    def __init__(self, tensors: Mapping[str, np.ndarray], transforms: Mapping[str, _Transform]) -> None:
        self._tensors, self._transforms = tensors, transforms

    def __getitem__(self, name: str) -> np.ndarray:
        transform = self._transforms.get(name)
        return transform.apply(self._tensors[name]) if transform else self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape_of(self, name: str) -> tuple[int, ...]:
        transform = self._transforms.get(name)
        if transform is not None:
            return transform.shape
        shape_of = getattr(self._tensors, "shape_of", None)
        return shape_of(name) if shape_of is not None else tuple(self._tensors[name].shape)

    def head(self, name: str, count: int) -> np.ndarray:
        if name in self._transforms:
            return self[name][:count]
        head = getattr(self._tensors, "head", None)
        return head(name, count) if head is not None else self._tensors[name][:count]

    def forget(self) -> None:
        getattr(self._tensors, "forget", lambda: None)()

    def transform_of(self, name: str) -> _Transform | None:
        return self._transforms.get(name)

    def stored_shape(self, name: str) -> tuple[int, ...]:
        shape_of = getattr(self._tensors, "shape_of", None)
        return tuple(shape_of(name)) if shape_of is not None else tuple(np.shape(self._tensors[name]))


def _summarize(names: tuple[str, ...]) -> str:
    """'layers.*.q' for every layer's q; the names themselves otherwise."""
    kinds = {}
    for name in names:
        checkpoint = parse(name)
        key = f"layers.*.{checkpoint.kind}" if checkpoint is not None and checkpoint.layer is not None else name
        kinds.setdefault(key, 0)
        kinds[key] += 1
    return ", ".join(sorted(kinds))
