"""The reference for a candidate: transformers' class for its config, with the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from parity.core.errors import CaptureError, OptionError, require
from parity.sanity.names import name_map, own_names
from parity.sanity.pair import Pair, SanityConfig


def build_pair(candidate, settings: SanityConfig, reference_dir: str | None = None) -> Pair:
    """Candidate and reference at the run's dtype and device, sharing weights by parameter name.

    Without `reference_dir`, the reference is transformers' own class for the
    candidate's `.config`, given the candidate's weights. With it, the reference
    is that model directory, and its weights are loaded into the candidate.
    """
    transformers = require("transformers", extra="transformers", purpose="parity sanity")
    config = _transformers_config(candidate, transformers, reference_dir)
    if reference_dir is None:
        try:
            reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        except Exception as error:
            raise OptionError(f"transformers has no causal-LM class for the candidate's config "
                              f"(model_type '{getattr(config, 'model_type', '?')}'): {error}") from None
        source, target = candidate, reference
    else:
        if not (Path(reference_dir) / "config.json").is_file():
            raise OptionError(f"--reference {reference_dir}: not a transformers model directory (no config.json)")
        try:
            reference = transformers.AutoModelForCausalLM.from_pretrained(reference_dir, attn_implementation="eager")
        except Exception as error:
            raise CaptureError(f"--reference {reference_dir}: transformers could not load it: {error}") from None
        config = reference.config
        source, target = reference, candidate
    dtype = getattr(torch, settings.dtype)
    candidate.to(device=settings.device, dtype=dtype).eval()
    reference.to(device=settings.device, dtype=dtype).eval()
    pair = Pair(candidate=candidate, reference=reference, config=config, settings=settings)
    if own_names(candidate, reference):   # a port with names of its own: found through its checkpoints
        pair.names = name_map(candidate, reference)
    _share_weights(source, target, pair)
    return pair


def _transformers_config(candidate, transformers, reference_dir: str | None = None):
    config = getattr(candidate, "config", None)
    if config is None and reference_dir is not None:
        return None   # the reference directory's own config
    if config is None:
        raise OptionError(f"the candidate ({type(candidate).__name__}) has no .config: give --reference MODEL (the "
                          "directory whose config.json it implements), or set .config on it (a dict with "
                          "model_type, or a transformers config)")
    if isinstance(config, dict):
        if "model_type" not in config:
            raise OptionError("the candidate's .config is a dict without 'model_type'; add it (e.g. 'llama')")
        values = {key: value for key, value in config.items() if key != "model_type"}
        return transformers.AutoConfig.for_model(config["model_type"], **values)
    if not hasattr(config, "model_type"):
        raise OptionError(f"the candidate's .config ({type(config).__name__}) is not a transformers config "
                          "and has no model_type")
    return config


def _share_weights(source, target, pair: Pair) -> None:
    """Copy `source`'s parameters into `target` by name; record what is missing, unexpected or mismatched."""
    reference_params = dict(pair.reference.named_parameters(remove_duplicate=False))
    candidate_params = dict(pair.candidate.named_parameters(remove_duplicate=False))
    paired = {name: pair.name("candidate", name) for name in reference_params}   # reference name -> candidate's
    pair.missing = sorted(name for name, theirs in paired.items() if theirs not in candidate_params)
    pair.unexpected = sorted(set(candidate_params) - set(paired.values()))
    with torch.no_grad():
        for name, theirs in paired.items():
            if theirs not in candidate_params:
                continue
            reference, candidate = reference_params[name], candidate_params[theirs]
            if reference.shape != candidate.shape:
                pair.mismatched.append(f"{name}: reference {tuple(reference.shape)}, candidate {tuple(candidate.shape)}")
                continue
            (reference if target is pair.reference else candidate).copy_(
                candidate if source is pair.candidate else reference)

