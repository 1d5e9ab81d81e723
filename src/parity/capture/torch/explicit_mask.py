"""A port whose forward demands an explicit attention mask once its KV caches are set up, and whose caches count
their own positions: torchtune's TransformerDecoder after `setup_caches` (`caches_are_enabled()` true).

Its caches write each call's keys at the next free slot, whatever `input_pos` says, and its forward refuses a
call without a `mask` of shape (B, T, L), L the caches' length (`decoder_max_cache_seq_len`), True where a
query may look. Every call parity makes gives it the causal mask's rows of the positions it runs at, and a
call at position 0 (a whole pass, or a prompt before decoding) starts from empty caches (`reset_caches()`),
as torchtune's own generation does between prompts. Without caches set up it is a plain forward, untouched.
"""

from __future__ import annotations

from contextlib import contextmanager

from parity.capture.torch.signature import forward_parameters


def takes_explicit_mask(model) -> bool:
    """Whether `model` holds caches of torchtune's kind: a `mask` keyword, caches_are_enabled/reset_caches, and
    the caches' length."""
    names, _ = forward_parameters(model)
    return ("mask" in names and callable(getattr(model, "caches_are_enabled", None))
            and callable(getattr(model, "reset_caches", None)))


@contextmanager
def explicit_masks(model):
    """While inside, a call of `model` with its caches enabled and no mask is given the causal mask's rows at its
    `input_pos`, its caches emptied first when that starts at 0."""
    if not takes_explicit_mask(model):
        yield
        return

    def give_mask(module, args, kwargs):
        import torch

        length = getattr(module, "decoder_max_cache_seq_len", None)
        positions = kwargs.get("input_pos")
        if kwargs.get("mask") is not None or positions is None or not length or not module.caches_are_enabled():
            return None
        positions = positions.reshape(-1, positions.shape[-1])                       # (B, T) or (1, T)
        if int(positions[0, 0]) == 0:
            module.reset_caches()
        keys = torch.arange(length, device=positions.device)
        mask = keys[None, None, :] <= positions[:, :, None]                          # (B, T, L)
        return args, {**kwargs, "mask": mask}

    handle = model.register_forward_pre_hook(give_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
