"""Programs made by torch.export, run so that parity's hooks see the modules they were made of.

`torch.export.export(model, args)` gives an ExportedProgram; its `.module()`, PT2E's `convert_pt2e` and
ExecuTorch's edge programs give a torch.fx GraphModule. Either runs as one flat graph of aten ops: its
submodules only hold the parameters and are never called, so no forward hook fires and a trace of it
holds the logits alone. Each node keeps, in `meta["nn_module_stack"]`, the module calls it was made in
(`{key: (path, type)}`, outermost first), and that is enough to call them again:

- the module tree is rebuilt at the paths the program was made of (`model.layers.0.self_attn.q_proj`),
  holding the program's own parameters and buffers; torch.nn's modules are what they were (a Linear is
  an `nn.Linear`, a list of blocks an `nn.ModuleList`), other classes keep their names;
- the graph runs node by node (torch.fx's Interpreter); when the last node of a module call has run,
  that module is called with the values its nodes read from outside (its inputs, in the order they
  were first read) and returns the values its nodes hand outside (its output: one tensor, or a tuple in
  the graph's order), so each hook sees the call as it would have in the module itself;
- an attention module's query and key after RoPE, and its probabilities where the graph computes
  them, are read off its attention op (`scaled_dot_product_attention`, or the softmax of eager
  attention's scores) and handed to its listener (capture/hf/attention.py), as transformers' own
  attention call would: the key as written before GQA expansion and before a static cache holds it.

Nothing is computed twice: a module called again returns the value the graph made. A hook's returned
replacement is not written back into the graph, and a module of the program cannot be run alone
(replaying a module on other inputs is not possible here: the program has one graph).

    module = exported_module(program)       # an nn.Module whose forward runs the program's graph

calls.py reads the module calls off the graph, tree.py rebuilds the module tree, program.py runs it.
"""

from __future__ import annotations

import sys
from typing import Any

from parity.capture.torch.exported.calls import STACK


def is_exported(value: Any) -> bool:
    """An ExportedProgram, or a GraphModule whose nodes say which module calls made them (torch.export's).
    Without torch imported no such object exists: torch is not imported to answer for a spec string."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(value, torch.export.ExportedProgram):
        return True
    return isinstance(value, torch.fx.GraphModule) and any(STACK in node.meta for node in value.graph.nodes)


def is_exported_module(module: Any) -> bool:
    """A program made by torch.export, as parity runs it (program.py's ExportedModule)."""
    return getattr(type(module), "parity_exported", False)


def exported_module(value: Any) -> Any:
    """The program (an ExportedProgram or its GraphModule) as an nn.Module whose module calls fire hooks."""
    import torch

    from parity.capture.torch.exported.program import ExportedModule

    if isinstance(value, ExportedModule):
        return value
    graph_module = value.module() if isinstance(value, torch.export.ExportedProgram) else value
    module = ExportedModule(graph_module)
    taps = getattr(value, "parity_taps", None) or getattr(graph_module, "parity_taps", None)
    if taps:    # where the checkpoints live, set on the program by its maker (the module's own are not exported)
        module.parity_taps = taps
    return module

