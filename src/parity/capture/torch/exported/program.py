"""A program made by torch.export, as an nn.Module whose module calls fire their hooks.

Its graph runs node by node (torch.fx's Interpreter); when the last node of a module call has run, the
module of the rebuilt tree (tree.py) is called with the values the call read from outside and returns the
values it handed out, so each hook sees the call as it would have in the module itself; an attention
module's listener (capture/hf/attention.py) is told its query, key and probabilities. Nothing is computed
twice, and a hook's returned replacement is not written back into the graph. Each value lives until its
last reader, or the module call that hands it out, has run.

Its forward takes the arguments the program was exported with (a constant one, such as use_cache=False,
defaulting to its value). A program exported without dynamic shapes runs at that shape only: another is a
one-line error, and `refuses` says which checks that rules out.
"""

from __future__ import annotations

import inspect

import torch

from parity.capture.hf.attention import listener_of
from parity.capture.torch.exported.calls import ModuleCall, module_calls, op_name
from parity.capture.torch.exported.tree import build_tree, share_state
from parity.core.errors import CaptureError


class ExportedModule(torch.nn.Module):
    """The program's graph run node by node; its module calls made again so that hooks see them."""

    parity_exported = True

    def __init__(self, graph_module) -> None:
        super().__init__()
        self.__dict__["program"] = graph_module      # not a submodule: its parameters are the tree's
        calls = module_calls(graph_module.graph)
        root = next((call.kind for call in calls if not call.path), None)
        self.__dict__["exported_from"] = root or f"{type(graph_module).__module__}.GraphModule"
        self.__dict__["calls"] = [call for call in calls if call.path]
        # whether it rotates anything (RoPE): an attention op's query is then q after RoPE
        self.__dict__["rotates"] = any(op_name(node) in ("cos", "sin") for node in graph_module.graph.nodes)
        self.__dict__["_ends"] = _ends(self.calls)
        self.__dict__["_block_starts"] = _row_block_starts(self.calls, _ids_placeholder(graph_module))
        self.__dict__["_last_uses"] = _last_uses(graph_module.graph, self.calls)
        build_tree(self, graph_module, self.calls)
        signature = _signature(graph_module)
        self.__dict__["signature"] = signature

        def forward(*args, **kwargs):
            return self._run(*args, **kwargs)

        forward.__signature__ = signature
        self.__dict__["forward"] = forward

    def _apply(self, fn, recurse=True):
        """`.to(device)`, `.float()`...: applied to the program, whose graph reads its own parameters,
        buffers and constants; the tree then holds what the program holds."""
        self.program._apply(fn, recurse)
        share_state(self, self.program)
        return self

    def __repr__(self) -> str:
        return f"<ExportedModule of {self.exported_from}, {len(self.calls)} module calls>"

    def _run(self, *args, **kwargs):
        positional, keyword = _arguments(self.program, self.signature, args, kwargs)
        flat = _flat_inputs(self.program, positional, keyword)
        _refuse_other_shapes(self.program, flat)
        try:
            if not self._observed():     # nothing listens: the program's own code, as fast as it runs alone
                return self.program(*positional, **keyword)
            return _Runner(self, self.program).run(*flat)    # its outputs in the program's output structure
        except AssertionError as error:
            if not str(error).startswith("Guard failed"):
                raise
            raise CaptureError(f"the exported program refuses these inputs ({str(error).splitlines()[0]}): "
                               "export it with dynamic_shapes whose range holds them") from None

    def _observed(self) -> bool:
        """Whether a hook or an attention listener waits on a module of the tree (or on every module)."""
        from torch.nn.modules import module as torch_module

        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return True
        return any(module._forward_hooks or module._forward_pre_hooks or listener_of(module) is not None
                   for module in self.modules() if module is not self)

    def exported_shape(self) -> tuple | None:
        """The shape of the token ids the program was exported for, None at each dynamic dimension
        (`(1, None)`: one sequence of any length); None where it takes no integer tensor."""
        ids = _ids_placeholder(self.program)
        return None if ids is None else _static_dims(ids.meta["val"])

    def refuses(self, capability: str) -> str | None:
        """Why the program's static shapes rule out `capability` ("logits" of other lengths, "padding"), or
        None."""
        shape = self.exported_shape()
        if shape is None or len(shape) != 2:
            return None
        batch, length = shape
        if capability == "logits" and length is not None:
            return (f"it was exported for {length} tokens only (no dynamic shapes): export it with "
                    "dynamic_shapes={'input_ids': {1: torch.export.Dim('T')}} to check decoding")
        if capability == "padding" and batch is not None and batch < 2:
            return (f"it was exported for a batch of {batch} only: export it with a dynamic batch "
                    "dimension to check padded batches")
        return None

class _Runner(torch.fx.Interpreter):
    def __init__(self, owner, graph_module) -> None:
        super().__init__(graph_module, garbage_collect_values=False)
        self.owner = owner

    def run_node(self, node):
        value = super().run_node(node)
        self.env[node] = value
        for call in self.owner._ends.get(node, ()):
            self._call(call)
        for done in self.owner._last_uses.get(node, ()):
            if done is not node:
                self.env.pop(done, None)
        return value

    def _call(self, call: ModuleCall) -> None:
        module = self.owner.get_submodule(call.path)
        inputs = [self.env[node] for node in call.inputs if node in self.env]
        outputs = tuple(self.env[node] for node in call.outputs if isinstance(self.env.get(node), torch.Tensor))
        if not outputs:
            return
        listener = listener_of(module)
        if listener is not None:
            _tell_listener(listener, call, self.env)
        rows = {}
        if getattr(module, "parity_takes_rows", False) and call.path in self.owner._block_starts:
            start = self.owner._block_starts[call.path].get(id(call))
            if start is None:    # a block whose rows cannot be placed: recorded by none of its calls
                return
            rows = {"start": start}
        module.__dict__["_parity_value"] = outputs[0] if len(outputs) == 1 else outputs
        try:
            module(*inputs, **rows)
        finally:
            module.__dict__.pop("_parity_value", None)


def _row_block_starts(calls: list[ModuleCall], ids) -> dict[str, dict[int, int]]:
    """{path: {id(call): the first row it holds}} for a module called once per block of query rows (a Probe
    given each block of the probabilities): the graph keeps no `start`, so the blocks are placed in the order
    they were made along the one axis whose sizes add up to the token count. A module whose blocks no axis
    places gets no starts (its calls are then recorded by none)."""
    by_path: dict[str, list[ModuleCall]] = {}
    for call in calls:
        by_path.setdefault(call.path, []).append(call)
    tokens = _static_dims(ids.meta["val"])[-1] if ids is not None else None
    starts: dict[str, dict[int, int]] = {}
    for path, repeated in by_path.items():
        if len(repeated) < 2:
            continue
        shapes = [getattr(call.outputs[0].meta.get("val"), "shape", None) if call.outputs else None
                  for call in repeated]
        starts[path] = {}
        if tokens is None or any(shape is None for shape in shapes) or len({len(shape) for shape in shapes}) != 1:
            continue
        axes = [axis for axis in range(len(shapes[0]))
                if all(isinstance(shape[axis], int) for shape in shapes)
                and sum(shape[axis] for shape in shapes) == tokens]
        if len(axes) != 1:
            continue
        offset = 0
        for call, shape in zip(repeated, shapes):
            starts[path][id(call)] = offset
            offset += shape[axes[0]]
    return starts


def _ends(calls: list[ModuleCall]) -> dict:
    ends: dict = {}
    for call in calls:
        ends.setdefault(call.last, []).append(call)
    return ends


def _last_uses(graph, calls: list[ModuleCall]) -> dict:
    """{node: the values no node or module call needs after it}: a module call reads its inputs and outputs
    when its last node has run, so they live until then."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    last: dict = {}
    for node in graph.nodes:
        for source in node.all_input_nodes:
            last[source] = max(last.get(source, -1), order[node])
    for call in calls:
        for source in call.inputs + call.outputs + tuple(node for node in call.attention or () if node is not None):
            last[source] = max(last.get(source, -1), order[call.last])
    nodes = list(graph.nodes)
    frees: dict = {}
    for source, index in last.items():
        if source.op != "placeholder":
            frees.setdefault(nodes[index], []).append(source)
    return frees


def _signature(graph_module) -> inspect.Signature:
    """The program's forward as it was exported: its arguments' names, a constant one (use_cache=False)
    defaulting to the value it was exported with."""
    signature = inspect.signature(graph_module.forward)
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    parameters = []
    for index, parameter in enumerate(signature.parameters.values()):
        value = placeholders[index].meta.get("val") if len(placeholders) == len(signature.parameters) else None
        if parameter.default is inspect.Parameter.empty and value is not None \
                and not isinstance(value, (torch.Tensor, torch.SymInt)):
            parameter = parameter.replace(default=value)
        parameters.append(parameter)
    return signature.replace(parameters=parameters)


def _arguments(graph_module, signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[list, dict]:
    """(positional, keyword) arguments as the program takes them: bound by name, defaults filled, each given
    the way its input spec says it was exported (use_cache=False by keyword)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"the exported program's forward{signature}: {error}") from None
    bound.apply_defaults()
    values, names = list(bound.arguments.values()), list(bound.arguments)
    info = getattr(graph_module.graph._codegen, "pytree_info", None)
    in_spec = None if info is None else info.in_spec
    if in_spec is not None and in_spec.type is tuple and in_spec.num_children == 2 \
            and in_spec.child(0).type is tuple and in_spec.child(1).type is dict:
        count = in_spec.child(0).num_children
        return values[:count], {key: bound.arguments[name] for key, name in zip(in_spec.child(1).context,
                                                                                names[count:])}
    return values, {}


def _flat_inputs(graph_module, positional: list, keyword: dict) -> list:
    """The graph's placeholders' values: the arguments flattened by the program's input spec."""
    from torch.fx._pytree import tree_flatten_spec

    info = getattr(graph_module.graph._codegen, "pytree_info", None)
    if info is None or info.in_spec is None:
        return positional + list(keyword.values())
    in_spec = info.in_spec
    if in_spec.type is tuple and in_spec.num_children == 2 and in_spec.child(0).type is tuple \
            and in_spec.child(1).type is dict:
        return tree_flatten_spec((positional, keyword), in_spec)
    return tree_flatten_spec(positional, in_spec)


def _ids_placeholder(graph_module):
    """The placeholder of the token ids: the first that is an integer tensor of two dimensions or more."""
    for node in graph_module.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.ndim >= 2:
            return node
    return None


def _static_dims(value) -> tuple:
    return tuple(dim if isinstance(dim, int) else None for dim in value.shape)


def _refuse_other_shapes(graph_module, flat: list) -> None:
    """A one-line error where a tensor is given at another size than a dimension the program was exported
    with (its guard would fail deep in the graph)."""
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    for node, value in zip(placeholders, flat):
        exported = node.meta.get("val")
        if not isinstance(exported, torch.Tensor) or not isinstance(value, torch.Tensor):
            continue
        dims = _static_dims(exported)
        if len(dims) != value.ndim or any(dim is not None and dim != size for dim, size in zip(dims, value.shape)):
            shown = "(" + ", ".join("any" if dim is None else str(dim) for dim in dims) + ")"
            raise CaptureError(f"the exported program takes {node.name} of shape {shown} and was given "
                               f"{tuple(value.shape)}: export it with dynamic_shapes for that dimension "
                               f"(torch.export.Dim), or check it on inputs of the shape it was exported for")


def _tell_listener(listener, call: ModuleCall, env: dict) -> None:
    """Hand the attention module's query, key (before GQA expansion and before a cache holds it) and
    probabilities (None where the graph's op fuses them) to its listener, as transformers' call would."""
    if call.attention is None:
        return
    query, key, probabilities = (env.get(node) if node is not None else None for node in call.attention)
    if query is None or key is None or query.ndim != 4 or key.ndim != 4:
        return
    listener(query, key, probabilities)
