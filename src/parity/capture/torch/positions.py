"""How a port's forward takes absolute positions, read from the keyword it names, and what a call that gives
none is given.

    positions, position_ids   (B, T) tensor, optional   parity's protocol (docs/porting.md), transformers
    input_pos                 (T,) tensor               gpt-fast and the ports modelled on it
    cache_position            (T,) tensor               ExecuTorch's runner (transformers' export recipe), where
                                                        the forward names no other positions
    start_pos                 int, the first position   Meta's Llama reference code and the ports of it

The last three are also how those ports decode: the KV cache lives in their attention modules (gpt-fast's
`setup_caches`, Meta's `cache_k`/`cache_v`), each call writes its keys and values at the positions given and
attends to everything cached before them, and a plain forward over a prompt is a call at position 0. Their
forwards need the argument even then (gpt-fast indexes its RoPE table and causal mask by it), so every call
parity makes without positions is given 0..T-1 (`positions_filled`). Not so for a port whose optional
`input_pos` means "use the cache" and which refuses it before its cache is set up (LitGPT's GPT without
`set_kv_cache`): a two-token call with positions raises where one without runs, and it is called as it is.
"""

from __future__ import annotations

from contextlib import contextmanager

from parity.capture.torch.signature import forward_parameters

POSITION_KEYWORDS = ("positions", "position_ids", "input_pos", "start_pos", "cache_position")
# a port that takes these (and no positions before them) holds its cache in its modules
HELD_CACHE_KEYWORDS = ("input_pos", "start_pos", "cache_position")


def position_keyword(model) -> str | None:
    """The keyword `model`'s forward takes absolute positions by, if it names one."""
    names, _ = forward_parameters(model)
    return next((name for name in POSITION_KEYWORDS if name in names), None)


def position_argument(keyword: str, start: int, length: int, batch: int, device):
    """The value of `keyword` for `length` tokens at positions start.., in a batch of `batch`."""
    import torch

    if keyword == "start_pos":
        return start
    positions = torch.arange(start, start + length, device=device)                # (T,)
    if keyword in ("input_pos", "cache_position"):
        return positions
    return positions.unsqueeze(0).expand(batch, -1)                               # (B, T)


@contextmanager
def positions_filled(model):
    """While inside, a call of `model` that gives none of the positions its forward takes by input_pos or
    start_pos runs at positions 0..T-1, T being the length of the first tensor it is given (the token ids).
    Nothing is done for the other keywords, which a forward takes as optional."""
    keyword = position_keyword(model)
    if keyword not in HELD_CACHE_KEYWORDS or refuses_positions(model, keyword):
        yield
        return

    def fill(module, args, kwargs):
        if keyword in kwargs or len(args) > 1:   # given (parity passes positions by keyword only)
            return None
        ids = next((value for value in (*args, *kwargs.values()) if hasattr(value, "shape")), None)
        if ids is None or len(ids.shape) != 2:
            return None
        batch, length = ids.shape                                                 # (B, T) token ids
        return args, {**kwargs, keyword: position_argument(keyword, 0, length, batch, ids.device)}

    handle = model.register_forward_pre_hook(fill, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def refuses_positions(model, keyword: str) -> bool:
    """Whether `model`, whose forward takes `keyword` as optional, raises when given positions 0..1 for two token
    ids and runs without them (LitGPT's input_pos selects a KV cache that is not set up)."""
    import torch

    if not _optional(model, keyword):
        return False
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else None
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)                    # (B, T) = (1, 2)
    with torch.no_grad():
        try:
            model(ids, **{keyword: position_argument(keyword, 0, 2, 1, device)})
            return False
        except Exception:   # noqa: BLE001 - whatever the port raises: it is then tried without them
            pass
        try:
            model(ids)
        except Exception:   # noqa: BLE001 - it fails either way: the call with positions says why, later
            return False
    return True


def _optional(model, keyword: str) -> bool:
    import inspect

    for cls in type(model).__mro__:
        forward = cls.__dict__.get("forward")
        if forward is None:
            continue
        try:
            parameter = inspect.signature(forward).parameters.get(keyword)
        except (TypeError, ValueError):
            continue
        if parameter is not None:
            return parameter.default is not inspect.Parameter.empty
    return False
