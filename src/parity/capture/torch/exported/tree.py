"""The module tree a program made by torch.export was made of, rebuilt at its paths.

The program's own submodules only hold its parameters (plain modules, never called). The tree is rebuilt
from the module calls its graph records (calls.py): torch.nn's layers are what they were (a Linear is an
`nn.Linear` with its sizes, a list of blocks an `nn.ModuleList`), other classes keep their names; each holds
the program's own parameters and buffers, the same tensors. Called, a module returns the value its call in
the graph made (set by the program as it runs: program.py); it cannot run alone.

    build_tree(root, graph_module, calls)
"""

from __future__ import annotations

import torch

from parity.capture.torch.exported.calls import ModuleCall
from parity.capture.torch.probe import Probe
from parity.core.errors import CaptureError
from parity.core.names import Tap


class _Replaying:
    """What a rebuilt module returns when called: the value its call in the graph made."""

    def forward(self, *inputs, **kwargs):
        value = self.__dict__.get("_parity_value", _UNSET)
        if value is _UNSET:
            raise CaptureError(f"{type(self).__name__} is a module of an exported program: it runs only within the "
                               "program's graph (call the whole program)")
        return value


_UNSET = object()
_CLASSES: dict[str, type] = {}


def _module_class(kind: str | None, children: list[str]) -> type:
    """The class a rebuilt module gets: torch.nn's own where the program's was one, else one of the same name."""
    if kind is None:
        return torch.nn.ModuleList if children and all(name.isdigit() for name in children) else torch.nn.Module
    if kind in _CLASSES:
        return _CLASSES[kind]
    module_name, _, name = kind.rpartition(".")
    original = getattr(torch.nn, name, None) if module_name.startswith("torch.nn.modules") else None
    if kind == f"{Probe.__module__}.{Probe.__qualname__}":
        original = Probe         # parity's own: it takes a row block's `start` (program.py gives it)
    if isinstance(original, type) and issubclass(original, torch.nn.Module):
        made = type(name, (_Replaying, original), {"__module__": __name__})
    else:
        made = type(name or "Module", (_Replaying, torch.nn.Module), {"__module__": __name__})
    _CLASSES[kind] = made
    return made


def _new_module(cls: type):
    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    return module


def build_tree(root, graph_module, calls: list[ModuleCall]) -> None:
    """Modules at the paths the program was made of, holding its parameters and buffers."""
    kinds = {call.path: call.kind for call in calls}
    owned = dict(graph_module.named_parameters(remove_duplicate=False))
    buffers = dict(graph_module.named_buffers(remove_duplicate=False))
    paths = set(kinds) | {name.rpartition(".")[0] for name in (*owned, *buffers)}
    every = set()
    for path in paths:
        parts = path.split(".") if path else []
        every.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    children: dict[str, list[str]] = {}
    for path in every:
        parent, _, name = path.rpartition(".")
        children.setdefault(parent, []).append(name)
    for path in sorted(every, key=lambda path: (path.count("."), _numeric_order(path))):
        parent, _, name = path.rpartition(".")
        holder = root.get_submodule(parent) if parent else root
        holder.add_module(name, _new_module(_module_class(kinds.get(path), children.get(path, []))))
    share_state(root, graph_module)
    for _, module in root.named_modules():
        _describe(module)


def share_state(root, graph_module) -> None:
    """The program's parameters and buffers (the same tensors) registered in the tree at their paths."""
    persistent = set(graph_module.state_dict(keep_vars=True))
    for name, parameter in graph_module.named_parameters(remove_duplicate=False):
        path, _, leaf = name.rpartition(".")
        (root.get_submodule(path) if path else root).register_parameter(leaf, parameter)
    for name, buffer in graph_module.named_buffers(remove_duplicate=False):
        path, _, leaf = name.rpartition(".")
        (root.get_submodule(path) if path else root).register_buffer(leaf, buffer, persistent=name in persistent)


def _numeric_order(path: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split("."))


def _describe(module) -> None:
    """The sizes torch.nn's layers keep beside their weights (parity reads a linear's width by them)."""
    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is None:
        return
    if isinstance(module, torch.nn.Linear) and weight.ndim == 2:
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, torch.nn.Embedding) and weight.ndim == 2:
        module.num_embeddings, module.embedding_dim = weight.shape
        module.padding_idx = None


def table_and_head_taps(module) -> tuple:
    """Taps for the weights of the embedding the program reads token ids with (`embed.weight`) and of the
    output head, the last linear call as wide as that table (`logits.weight`); the logits themselves are the
    program's return value (a head's output may still be capped or scaled after it)."""
    paths = {id(child): path for path, child in module.named_modules()}
    called = [module.get_submodule(call.path) for call in module.calls]
    table = next((child for child in called if isinstance(child, torch.nn.Embedding)), None)
    if table is None:
        return ()
    taps = [Tap(paths[id(table)], ("embed",), "weights")]
    heads = [child for child in called if isinstance(child, torch.nn.Linear)
             and getattr(child, "out_features", None) == table.num_embeddings]
    if heads:
        taps.append(Tap(paths[id(heads[-1])], ("logits",), "weights"))
    return tuple(taps)
