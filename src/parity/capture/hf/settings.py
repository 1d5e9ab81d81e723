"""The reference built again with config settings changed, holding the very same weights.

`parity check` runs the reference once more under a setting a port may read otherwise
(core/config_settings.py), to see whether that reading is what the candidate computes. The model is
built from the changed config without initialising any weight, and takes the reference's parameters
and persistent buffers themselves (no copy): what it adds is what the config makes at build time, as
RoPE's frequency table. It costs a model's structure, not its weights.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from parity.capture.hf.model import HFModel
from parity.capture.hf.structure import map_model
from parity.core.errors import CaptureError


def built_with(reference_model: HFModel, changes: tuple[tuple[str, Any], ...]) -> HFModel:
    """`reference_model` built with its (text) config's top-level fields set as `changes` say, sharing its weights;
    CaptureError where transformers refuses the config or the weights do not fit what it builds."""
    import torch
    import transformers

    source = reference_model.model
    config = copy.deepcopy(source.config)
    fields = text_config(config)   # a multimodal model's text config holds its decoder's settings
    for field, value in changes:
        setattr(fields, field, value)
    state = source.state_dict()
    try:
        with _without_initialising():
            model = transformers.AutoModelForCausalLM.from_config(
                config, dtype=getattr(torch, reference_model.dtype), attn_implementation="eager",
                experts_implementation="eager")
        loaded = model.load_state_dict(state, strict=False, assign=True)
    except Exception as error:   # noqa: BLE001 - transformers validates a config in many ways
        raise CaptureError(f"transformers could not build {reference_model.path} with {dict(changes)}: "
                           f"{type(error).__name__}: {error}") from error
    unloaded = sorted(set(loaded.missing_keys) & {name for name, _ in model.named_parameters()})
    if unloaded:
        raise CaptureError(f"{reference_model.path} built with {dict(changes)} has parameters the reference does "
                           f"not: {unloaded[0]}")
    model.eval()
    return dataclasses.replace(reference_model, model=model, mapping=map_model(model, where=str(reference_model.path)),
                               _tokenizer=reference_model._tokenizer, _parked=None, taken={})


def text_config(config):
    """The config that holds the decoder's settings: a multimodal config's text config, else the config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _without_initialising():
    """transformers' context that builds modules without drawing their weights (where this version has it)."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()
