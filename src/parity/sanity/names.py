"""A port with names of its own: the reference's modules and parameters found in it through the checkpoints.

A port written from scratch names its modules as its author likes (`blocks.0.norm_1`,
`tok`, `head`). Its `parity_taps` (or a naming parity knows) says which module makes
each canonical checkpoint, and the reference's structure says the same of transformers'
modules: a module of each side making the same checkpoint is the same component. The
map pairs them, and their own parameters by local name and shape, so that the sanity
tests find the candidate's norm, decoder layer or lm_head under the reference's name.
"""

from __future__ import annotations

from parity.core.names import Tap

# The checkpoints whose module's output is a whole component: its own parameters are the component's.
COMPONENT_KINDS = ("embed", "attn_norm", "mlp_norm", "final_norm", "q", "k", "v", "attn_out", "mlp_gate", "mlp_up",
                   "mlp_out", "out", "logits", "pre_attn_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm")


def own_names(candidate, reference) -> bool:
    """Whether the candidate names its parameters otherwise than the reference (fewer than half shared)."""
    reference_names = {name for name, _ in reference.named_parameters()}
    shared = reference_names & {name for name, _ in candidate.named_parameters()}
    return len(shared) * 2 < len(reference_names)


def name_map(candidate, reference) -> dict[str, str]:
    """Reference module and parameter name -> the candidate's, for every component both sides tap."""
    from parity.capture.hf.structure import map_model
    from parity.capture.torch.candidate import infer_taps

    taps = getattr(candidate, "parity_taps", None) or infer_taps(candidate, type(candidate).__name__)
    reference_modules = _module_of_checkpoint(reference, map_model(reference).taps)
    candidate_modules = _module_of_checkpoint(candidate, taps)
    names: dict[str, str] = {}
    for role, reference_module in reference_modules.items():
        candidate_module = candidate_modules.get(role)
        if candidate_module is None or reference_module in names:
            continue
        if not _same_kind(reference.get_submodule(reference_module), candidate.get_submodule(candidate_module)):
            continue   # the same checkpoint made by modules of other scopes (a whole MLP, its last projection)
        names[reference_module] = candidate_module
        names.update(_parameters(reference, reference_module, candidate, candidate_module))
    for reference_module, candidate_module in _unique_matches(reference, candidate, names).items():
        names[reference_module] = candidate_module
        names.update(_parameters(reference, reference_module, candidate, candidate_module))
    return names


def _unique_matches(reference, candidate, names: dict[str, str]) -> dict[str, str]:
    """Modules no checkpoint pairs (an embedding tapped at the first layer's input): paired where exactly one
    module on each side has that type and those own parameters."""
    def unpaired(model, paired) -> dict[tuple, list[str]]:
        groups: dict[tuple, list[str]] = {}
        for path, module in model.named_modules():
            own = tuple((name, tuple(p.shape)) for name, p in module.named_parameters(recurse=False))
            if path and own and path not in paired:
                groups.setdefault((_kind(module), own), []).append(path)
        return groups

    reference_groups = unpaired(reference, set(names))
    candidate_groups = unpaired(candidate, set(names.values()))
    return {paths[0]: candidate_groups[key][0] for key, paths in reference_groups.items()
            if len(paths) == 1 and len(candidate_groups.get(key, ())) == 1}


def _kind(module) -> str:
    """A torch layer's kind, a user's subclass of it included (class Embedding(nn.Embedding)); else the class."""
    import torch

    for layer in (torch.nn.Embedding, torch.nn.Linear):
        if isinstance(module, layer):
            return layer.__name__
    return type(module).__name__


def _module_of_checkpoint(model, taps) -> dict[tuple[str, str], str]:
    """(canonical checkpoint, input or output) -> the path of the module that takes or makes it."""
    from parity.capture.torch.taps import fill_layer, index_taps, matching_taps, resolve_taps
    from parity.core.names import parse

    exact, patterns = index_taps(tuple(tap for tap in resolve_taps(taps) if _is_one(tap)))
    found: dict[tuple[str, str], str] = {}
    for path, _ in model.named_modules():
        for tap, match in matching_taps(path, exact, patterns):
            for name in tap.names:
                checkpoint = parse(fill_layer(name, match))
                if checkpoint is not None and (tap.io == "input" or checkpoint.kind in COMPONENT_KINDS):
                    found.setdefault((checkpoint.name, tap.io), path)
    return found


def _is_one(tap: Tap) -> bool:
    return tap.io in ("output", "input") and len(tap.names) == 1


def _same_kind(reference_module, candidate_module) -> bool:
    """Both modules hold the same own parameters (local names and shapes), or neither holds any."""
    def own(module) -> dict:
        return {name: tuple(p.shape) for name, p in module.named_parameters(recurse=False)}

    return own(reference_module) == own(candidate_module)


def _parameters(reference, reference_module: str, candidate, candidate_module: str) -> dict[str, str]:
    """The two modules' own parameters paired by local name and shape."""
    reference_own = dict(reference.get_submodule(reference_module).named_parameters(recurse=False))
    candidate_own = dict(candidate.get_submodule(candidate_module).named_parameters(recurse=False))
    return {f"{reference_module}.{local}": f"{candidate_module}.{local}"
            for local, parameter in reference_own.items()
            if local in candidate_own and candidate_own[local].shape == parameter.shape}
