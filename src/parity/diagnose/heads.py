"""Head layouts: the candidate's per-head tensor is the reference's with its heads reordered, or with
(heads, tokens) memory read as (tokens, heads): a merge of heads without the transpose.

Each is a permutation of the reference's values, so its inverse applied to the candidate
restores the reference: `confirmed` when it does so within the checkpoint's tolerance.
Reported as layout_permuted (values.py).
"""

from __future__ import annotations

import numpy as np

from parity.core.names import HEAD_KINDS
from parity.core.results import Diagnosis
from parity.diagnose.context import Context, matches
from parity.diagnose.repair import confirm


def _heads(context: Context, width: int) -> int | None:
    head_dim = context.config.head_dim
    return width // head_dim if head_dim and width % head_dim == 0 and width > head_dim else None


def merged_without_transpose(x: np.ndarray, heads: int) -> np.ndarray:
    """(T, H*hd) as a merge that skips the transpose writes it: (H, T, hd) memory read as (T, H*hd)."""
    count = x.shape[0]
    return x.reshape(count, heads, -1).transpose(1, 0, 2).reshape(count, -1)


def unmerged(x: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of merged_without_transpose."""
    count = x.shape[0]
    return x.reshape(heads, count, -1).transpose(1, 0, 2).reshape(count, -1)


def head_order(reference: np.ndarray, candidate: np.ndarray) -> list[int] | None:
    """order[i] = the reference's head that the candidate's head i holds, when the heads are a permutation
    (heads on axis 1 of (T, H, hd), or axis 0 of (H, T, S))."""
    count = reference.shape[0]
    left, right = candidate.reshape(count, -1), reference.reshape(count, -1)                  # (H, rest) each
    squares = np.einsum("ij,ij->i", right, right, dtype=np.float64)
    distances = (np.einsum("ij,ij->i", left, left, dtype=np.float64)[:, None] + squares[None, :]
                 - 2 * np.einsum("ik,jk->ij", left, right, dtype=np.float64)) / np.where(squares > 0, squares, 1.0)
    order = [int(np.argmin(row)) for row in distances]
    if sorted(order) != list(range(count)) or order == list(range(count)):
        return None
    return order


def head_layouts(context: Context):
    for name, checkpoint, reference, candidate in context.focused():
        if checkpoint.kind in HEAD_KINDS and reference.ndim == 2:
            heads = _heads(context, reference.shape[-1])
            if heads is None:
                continue
            if reference.shape[0] > 1 and matches(candidate, merged_without_transpose(reference, heads), reference) is not None:
                diagnosis = Diagnosis("layout_permuted", name,
                                      f"the candidate's {name} is the reference's (tokens, heads, head_dim) values laid "
                                      f"out as (heads, tokens, head_dim) and read as (tokens, heads x head_dim): the "
                                      f"heads are merged without the transpose (reshape of a (H, T, hd) tensor)")
                yield confirm(context, diagnosis, unmerged(candidate, heads), "reading the candidate back as (heads, tokens)")
                return
            split = lambda x: x.reshape(x.shape[0], heads, -1).transpose(1, 0, 2)   # noqa: E731  (H, T, hd)
            order = head_order(split(reference), split(candidate))
            if order is not None:
                hypothesis = split(reference)[order].transpose(1, 0, 2).reshape(reference.shape)
                inverse = np.argsort(order)
                repaired = split(candidate)[inverse].transpose(1, 0, 2).reshape(reference.shape)
                yield from _reordered(context, name, candidate, hypothesis, reference, order, repaired)
                return
            found = list(_columns(context, name, reference, candidate, heads))
            if found:
                yield from found
                return
        elif checkpoint.kind == "attn_probs" and reference.ndim == 3 and reference.shape[0] > 1:
            order = head_order(reference, candidate)
            if order is not None:
                yield from _reordered(context, name, candidate, reference[order], reference, order,
                                      candidate[np.argsort(order)])
                return


MAX_COLUMNS = 4096   # columns matched one to one (a (W, W) distance table)


def column_order(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray | None:
    """order[j] = the reference's column that the candidate's column j holds, when the columns are a permutation."""
    if reference.ndim != 2 or reference.shape[1] > MAX_COLUMNS or reference.shape[0] < 2:
        return None
    reference, candidate = reference.astype(np.float32), candidate.astype(np.float32)      # a (W, W) table: float32
    squares_r, squares_c = np.sum(reference * reference, 0), np.sum(candidate * candidate, 0)
    distances = squares_c[:, None] + squares_r[None, :] - 2 * candidate.T @ reference        # (W, W)
    order = np.argmin(distances, axis=1)
    if len(set(order.tolist())) != len(order) or np.array_equal(order, np.arange(len(order))):
        return None
    return order


def _described(order: np.ndarray, heads: int) -> str:
    width = len(order)
    dim = width // heads
    transposed = np.arange(width).reshape(heads, dim).T.reshape(-1)     # (hd, H) read as (H, hd)
    if np.array_equal(order, transposed):
        return "laid out as (head_dim, heads) and read as (heads, head_dim): a transpose of the last two axes"
    within = order.reshape(heads, dim) - (np.arange(heads) * dim)[:, None]
    if np.all(within == within[0]):
        half = np.concatenate([np.arange(0, dim, 2), np.arange(1, dim, 2)])
        if np.array_equal(within[0], half) or np.array_equal(np.argsort(within[0]), half):
            return "each head's dimensions reordered between halves (i, i + d/2) and pairs (2i, 2i+1)"
        return "each head's dimensions reordered the same way"
    return "its columns reordered"


def _columns(context: Context, name: str, reference: np.ndarray, candidate: np.ndarray, heads: int):
    order = column_order(reference, candidate)
    if order is None:
        return
    hypothesis = reference[:, order]
    if matches(candidate, hypothesis, reference) is None:
        return
    repaired = np.empty_like(candidate)
    repaired[:, order] = candidate
    diagnosis = Diagnosis("layout_permuted", name, f"the candidate's {name} holds the reference's values with "
                                                   f"{_described(order, heads)}")
    yield confirm(context, diagnosis, repaired, "putting the columns back in order")


def _reordered(context: Context, name: str, candidate, hypothesis, reference, order: list[int], repaired):
    if matches(candidate, hypothesis, reference) is None:
        return
    reversed_ = order == list(range(len(order)))[::-1]
    diagnosis = Diagnosis("layout_permuted", name,
                          f"the candidate's {name} holds the reference's heads in the order {order}"
                          f"{' (reversed)' if reversed_ else ''}: heads reordered when split or merged")
    yield confirm(context, diagnosis, repaired, "putting the heads back in order")
