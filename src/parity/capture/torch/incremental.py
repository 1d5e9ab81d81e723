"""Incremental decoding of a PyTorch candidate through its KV cache, traced step by step.

A candidate decodes when, called as transformers models are, it does: with
use_cache=True it returns its logits and a cache (a tuple, or an object with
`.logits` and `.cache` or `.past_key_values`), and given that cache back with one
more token it returns that token's logits. This is found by trying
(decode_support), not from the forward's signature: wrappers and patched models
take `**kwargs`. The cache goes back under the keyword the forward names:
`cache` (transformers 5.24 on) or `past_key_values` (before, and most ports).
A forward that fills the cache object it is given and returns its logits alone
(LLMs-from-scratch) decodes when the model says how to make a fresh cache
(`parity_new_cache`): the object given is then the cache.

A port that names no cache but takes `input_pos` or `start_pos` (gpt-fast, Meta's
reference code) holds its cache in its modules (capture/torch/positions.py): it
decodes by being called at the next position, and HELD stands for its cache. It is
taken to decode when its output at a position depends on what was run before it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from parity.capture.torch.layout import canonical_layout, config_heads, first_tensor
from parity.capture.torch.module import ids_tensor
from parity.capture.torch.positions import HELD_CACHE_KEYWORDS, position_argument, position_keyword
from parity.capture.torch.signature import forward_parameters
from parity.capture.torch.taps import TapsLike
from parity.capture.torch.tracer import ModuleTracer
from parity.core.pass_sketch import RECORDED_PREFILL_TOKENS, PassSketch

CACHE_KEYWORDS = ("cache", "past_key_values")   # transformers 5.24 renamed past_key_values to cache
PROTOCOL = ("forward(ids, positions=None, cache=None) returning (logits, cache), where cache=None starts a new "
            "cache (docs/porting.md)")


@dataclass(frozen=True)
class CacheCalls:
    """How a model's forward takes a cache, from the signatures of the forwards in its class hierarchy (a
    wrapper taking **kwargs inherits its base's; one that takes none, only its own): the cache keyword (`cache`, `past_key_values`, or None for
    none), whether to pass use_cache=True, and the keyword absolute positions go by, if it names one."""

    keyword: str | None
    use_cache: bool
    positions: str | None

    @property
    def held(self) -> bool:
        """The cache lives in the model's modules: no cache keyword, positions by input_pos or start_pos."""
        return self.keyword is None and self.positions in HELD_CACHE_KEYWORDS

    def __repr__(self) -> str:
        return f"<CacheCalls {self.keyword} use_cache={self.use_cache} positions={self.positions}>"


class HeldCache:
    """The cache of a model that holds it in its modules: nothing to pass back, nothing to read."""

    def __repr__(self) -> str:
        return "<HeldCache>"


HELD = HeldCache()


def cache_calls(model) -> CacheCalls:
    names, takes_kwargs = forward_parameters(model)
    keyword = next((name for name in CACHE_KEYWORDS if name in names), "past_key_values" if takes_kwargs else None)
    return CacheCalls(keyword=keyword, use_cache="use_cache" in names or takes_kwargs,
                      positions=position_keyword(model))


def cache_keyword(model) -> str:
    """The keyword `model`'s forward takes its cache by (`past_key_values` when it names none)."""
    return cache_calls(model).keyword or "past_key_values"


def call_with_cache(model, ids, cache, *, start: int = 0, last_only: bool = False):
    """(logits, cache) of one forward over `ids` (a (B, T) tensor at positions start..start+T-1) continuing
    from `cache` (None: a fresh one). `last_only`: a transformers model puts only the last position through its
    output head (the logits of a long prompt's other positions are not made), and runs its attention in blocks
    of query rows at a long input (capture/hf/attention.py); a port runs as it is."""
    from parity.capture.hf.attention import kept_logits, long_input_attention

    calls = cache_calls(model)
    if cache is None and not calls.held:
        cache = new_cache(model)
    kwargs = {} if calls.held else {calls.keyword or "past_key_values": cache}
    kwargs.update(kept_logits(model, 1) if last_only else {})
    if calls.use_cache:
        kwargs["use_cache"] = True
    if calls.positions:
        kwargs[calls.positions] = position_argument(calls.positions, start, ids.shape[-1], ids.shape[0], ids.device)
    with long_input_attention(model):
        logits, returned = _split(model(ids, **kwargs))
    if calls.held:
        return logits, HELD
    return logits, returned if returned is not None else cache   # none returned: the one given, filled in place


def new_cache(model):
    """A fresh cache from the port's `parity_new_cache()`, for a forward that fills the cache it is given in
    place and returns its logits alone (LLMs-from-scratch's KVCache); None without one."""
    make = getattr(model, "parity_new_cache", None)
    return make() if callable(make) else None


def positioned_forward(model, start: int, *, who: str = "the candidate"):
    """`forward(model, input_ids)` running `input_ids` at absolute positions start.., through the keyword the
    model's forward names them by (capture/torch/positions.py); OptionError saying what to add when it names none."""
    from parity.core.errors import OptionError

    keyword = cache_calls(model).positions
    if keyword is None:
        raise OptionError(f"--start-position needs {who} to take absolute positions, and its forward names none: "
                          f"add a `positions` argument, {PROTOCOL}")
    if keyword in HELD_CACHE_KEYWORDS:   # its modules' cache: the tokens continue whatever it holds before them
        raise OptionError(f"--start-position is not checked for {who}: its forward takes {keyword} as the place "
                          f"after the tokens its modules have cached, so tokens at position {start} attend to "
                          f"{start} cached positions before them, not to themselves alone; add a `positions` "
                          f"argument for that, {PROTOCOL}")

    def forward(module, input_ids, **options):
        batch, length = input_ids.shape
        return module(input_ids, **{keyword: position_argument(keyword, start, length, batch, input_ids.device)},
                      **options)

    return forward


def decode_support(model, prompt: list[int]) -> str | None:
    """None when `model` decodes through a cache (tried on the prompt's first tokens); else why not, saying
    what to add."""
    import torch

    from parity.capture.torch.factory import describe_error

    calls = cache_calls(model)
    if calls.held:
        return _held_cache_support(model, prompt, calls.positions)
    if calls.keyword is None:
        return f"its forward takes no cache: add a `cache` argument, {PROTOCOL}"
    call = f"forward(ids, {calls.keyword}=None{', use_cache=True' if calls.use_cache else ''})"
    first, second = prompt[:1], prompt[1:2] or prompt[:1]
    try:
        with torch.no_grad():
            _, cache = call_with_cache(model, ids_tensor([first], model), None)
    except Exception as error:  # the user's code
        return f"called as {call} it failed: {describe_error(error)}"
    if cache is None:
        return (f"called as {call} it returned no cache; return (logits, cache): {PROTOCOL}; or, for a forward "
                f"that fills a cache object it is given, set `parity_new_cache` on the model: a function returning "
                f"a fresh one")
    try:
        with torch.no_grad():
            logits, _ = call_with_cache(model, ids_tensor([second], model), cache, start=len(first))
    except Exception as error:  # the user's code
        return f"given its own cache back with one more token it failed: {describe_error(error)}"
    if logits is None or logits.dim() < 2 or logits.shape[-2] != 1:
        shape = "no logits" if logits is None else f"logits of shape {list(logits.shape)}"
        return f"given its own cache back with one more token it returned {shape}, not that token's row"
    return None


def _held_cache_support(model, prompt: list[int], keyword: str) -> str | None:
    """None when a model taking `keyword` (input_pos, start_pos) decodes through the cache its modules hold: its
    logits for a token at position 1 change with the token at position 0 run before it. Else why not."""
    import torch

    from parity.capture.torch.factory import describe_error

    first, second = prompt[:1], prompt[1:2] or prompt[:1]
    rows = []
    try:
        with torch.no_grad():
            for before in (first, None):
                if before is None:   # another token at position 0, from the vocabulary the logits span
                    before = [(first[0] + 1) % rows[0].shape[-1]]
                call_with_cache(model, ids_tensor([before], model), HELD, start=0)
                logits, _ = call_with_cache(model, ids_tensor([second], model), HELD, start=1)
                if logits is None or logits.dim() < 2 or logits.shape[-2] != 1:
                    shape = "no logits" if logits is None else f"logits of shape {list(logits.shape)}"
                    return f"called with one token at {keyword}=1 it returned {shape}, not that token's row"
                rows.append(logits[..., -1, :])
    except Exception as error:  # the user's code
        return f"called one token at a time with {keyword} it failed: {describe_error(error)}"
    if torch.equal(rows[0], rows[1]):
        return (f"it takes {keyword} but keeps no cache: a token's logits at position 1 are the same whatever "
                f"token ran at position 0; hold the keys and values in its modules, or {PROTOCOL}")
    return None


def _split(output):
    """(logits, cache) of a forward's output; either None when the output has none."""
    import torch

    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, (tuple, list)):
        logits = output[0] if output and isinstance(output[0], torch.Tensor) else None
        return logits, output[1] if len(output) > 1 else None
    cache = getattr(output, "cache", None)
    return getattr(output, "logits", None), cache if cache is not None else getattr(output, "past_key_values", None)


def incremental(model, prompt: list[int], continuation: list[int], *, taps: TapsLike | None = None, config=None):
    """Logits rows (1 + N, V) and, with taps, each step's recorded checkpoints (step 0 is the prefill; a prompt
    over RECORDED_PREFILL_TOKENS gives its checkpoints' sketches, a PassSketch).
    `config` (default: the model's) gives the head counts per-head tensors are read by: a step's keys hold
    the cached positions too, so its token count does not tell their layout."""
    import torch

    heads = config_heads(config if config is not None else getattr(model, "config", None))
    rows, steps, cache, start = [], [], None, 0
    chunks = [prompt] + [[token] for token in continuation]
    with torch.no_grad():
        for chunk in chunks:
            if taps is not None and len(chunk) > RECORDED_PREFILL_TOKENS:   # a long prompt: sketched
                steps.append(PassSketch(len(chunk)))
                with ModuleTracer(model, taps, heads=heads, stream=steps[-1]):
                    logits, cache = call_with_cache(model, ids_tensor([chunk], model), cache, start=start,
                                                    last_only=True)
            elif taps is not None:
                with ModuleTracer(model, taps, heads=heads) as tracer:
                    logits, cache = call_with_cache(model, ids_tensor([chunk], model), cache, start=start)
                steps.append({name: tensor.float().cpu().numpy() for name, tensor in tracer.tensors.items()})
            else:
                logits, cache = call_with_cache(model, ids_tensor([chunk], model), cache, start=start,
                                                last_only=True)
            rows.append(logits[0, -1].double().cpu().numpy())
            start += len(chunk)
    return np.stack(rows), steps


def cached_stepper(model):
    """`step(ids)`: runs `ids` after everything given before, through the model's cache; the last position's
    logits (V,) as float64 numpy."""
    import torch

    state = {"cache": None, "start": 0}

    def step(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits, state["cache"] = call_with_cache(model, ids_tensor([ids], model), state["cache"],
                                                     start=state["start"], last_only=True)
        state["start"] += len(ids)
        return logits[0, -1].double().cpu().numpy()

    return step


def full_logits(model, ids: list[int], first: int = 0) -> np.ndarray:
    """The logits at positions first.. of one forward over `ids`: (T - first, V) float64, or every row the
    forward returns where that is not T (a forward that returns the last position's alone). A transformers
    model runs its attention in blocks of query rows at a long input and puts only the rows asked for
    through its output head; a port's rows are taken from what it returns."""
    import torch

    from parity.capture.hf.attention import kept_logits, long_input_attention

    kept = len(ids) - first
    with torch.no_grad(), long_input_attention(model):
        output = first_tensor(model(ids_tensor([ids], model), **kept_logits(model, kept if first else 0)))
    logits = canonical_layout("logits", output)
    if first and logits.shape[0] == len(ids):
        logits = logits[first:]
    return logits.double().cpu().numpy()


def cache_tensors(cache) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """layer -> (keys, values), each (S, Hkv, hd), from a transformers cache (`.layers[i].keys` of the layers
    that have keys, or a tuple of (k, v) pairs, (B, Hkv, S, hd), bare or as an object's `.cache`) or a cache
    with `keys`/`values` dicts of (S, Hkv, hd)."""
    if isinstance(getattr(cache, "cache", None), (tuple, list)):   # LLMs-from-scratch's KVCache: .cache, a list
        cache = cache.cache
    if hasattr(cache, "layers"):
        # a hybrid model's cache also holds its state-space layers' states (no keys): those are left out
        pairs = {i: (layer.keys, layer.values) for i, layer in enumerate(cache.layers)
                 if getattr(layer, "keys", None) is not None and getattr(layer, "values", None) is not None}
        return {i: tuple(t[0].transpose(0, 1).float().cpu().numpy() for t in pair) for i, pair in pairs.items()}
    if isinstance(cache, (tuple, list)):
        return {i: tuple(t[0].transpose(0, 1).float().cpu().numpy() for t in pair) for i, pair in enumerate(cache)}
    if isinstance(cache, HeldCache):
        return {}
    if isinstance(getattr(cache, "keys", None), dict):     # tensors, or arrays (a numpy port's)
        return {i: (_float32(cache.keys[i]), _float32(cache.values[i])) for i in cache.keys}
    return {}


def _float32(values) -> np.ndarray:
    if hasattr(values, "float") and hasattr(values, "cpu"):
        return values.float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def prefill_cache(model, prompt: list[int]):
    """The cache a model holds after prefilling `prompt`, as cache_tensors() ({} for a HELD cache)."""
    import torch

    with torch.no_grad():
        _, cache = call_with_cache(model, ids_tensor([prompt], model), None, last_only=True)
    return cache_tensors(cache)


def chunked_prefill_logits(model, prompt: list[int]) -> np.ndarray:
    """The last prompt position's logits when the prompt is prefilled in two chunks."""
    import torch

    half = max(1, len(prompt) // 2)
    with torch.no_grad():
        _, cache = call_with_cache(model, ids_tensor([prompt[:half]], model), None, last_only=True)
        logits, _ = call_with_cache(model, ids_tensor([prompt[half:]], model), cache, start=half, last_only=True)
    return logits[0, -1].double().cpu().numpy()


def attention_mask_support(model) -> str | None:
    """None when the forward names an `attention_mask` parameter; else why padded batches are not checked.
    (Through **kwargs a mask may be used or silently dropped: a difference would not say which.)"""
    parameters = inspect.signature(model.forward).parameters.values()
    if any(p.name == "attention_mask" for p in parameters):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return ("its forward takes attention_mask only through **kwargs, which may drop it: name the parameter "
                "to check padded batches")
    return ("its forward takes no attention_mask: add one, forward(ids, ..., attention_mask=None) with 1 for a "
            "token and 0 for padding, to check padded batches")


def padded_batch_logits(model, prompt: list[int], other: list[int], pad: int, side: str) -> np.ndarray:
    """The prompt's logits rows when it runs in a batch with `other`, padded on `side` (see attention_mask_support)."""
    import torch

    width = max(len(prompt), len(other))
    ids, mask = [], []
    for sequence in (prompt, other):
        padding = [pad] * (width - len(sequence))
        ids.append(padding + sequence if side == "left" else sequence + padding)
        ones, zeros = [1] * len(sequence), [0] * len(padding)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    with torch.no_grad():
        logits = first_tensor(model(ids_tensor(ids, model), attention_mask=ids_tensor(mask, model)))
    rows = logits[0].double().cpu().numpy()                                                  # (width, V)
    return rows[width - len(prompt):] if side == "left" else rows[: len(prompt)]
