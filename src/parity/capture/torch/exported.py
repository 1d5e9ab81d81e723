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
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from parity.core.errors import CaptureError

STACK = "nn_module_stack"
_PLACEHOLDER_KEY = "_empty_nn_module_stack"     # torch.export's own marker, not a module
# Ops that only reshape or copy a tensor: walked through from an attention op back to the key it was given.
_SHAPE_ONLY = frozenset({"view", "reshape", "_unsafe_view", "expand", "unsqueeze", "clone", "contiguous", "alias",
                         "squeeze", "_to_copy", "to", "slice", "repeat_interleave", "repeat", "detach"})
_CACHE_WRITES = {"index_copy": 3, "index_copy_": 3, "index_put": 2, "index_put_": 2, "copy_": 1, "copy": 1,
                 "slice_scatter": 1}
_ATTENTION_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                  "_scaled_dot_product_cudnn_attention")
_SOFTMAX_OPS = ("softmax", "_softmax", "_safe_softmax")


def is_exported(value: Any) -> bool:
    """An ExportedProgram, or a GraphModule whose nodes say which module calls made them (torch.export's)."""
    try:
        import torch
    except ImportError:
        return False
    if isinstance(value, torch.export.ExportedProgram):
        return True
    return isinstance(value, torch.fx.GraphModule) and any(STACK in node.meta for node in value.graph.nodes)


def is_exported_module(module: Any) -> bool:
    return isinstance(module, ExportedModule)


def exported_module(value: Any) -> Any:
    """The program (an ExportedProgram or its GraphModule) as an nn.Module whose module calls fire hooks."""
    import torch

    if isinstance(value, ExportedModule):
        return value
    graph_module = value.module() if isinstance(value, torch.export.ExportedProgram) else value
    module = ExportedModule(graph_module)
    taps = getattr(value, "parity_taps", None) or getattr(graph_module, "parity_taps", None)
    if taps:    # where the checkpoints live, set on the program by its maker (the module's own are not exported)
        module.parity_taps = taps
    return module


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module in the graph: the nodes it made, the values it read from outside and handed out."""

    path: str
    kind: str
    nodes: frozenset
    inputs: tuple
    outputs: tuple
    last: Any
    attention: tuple | None = None   # (query, key as written, probabilities or None): its attention op's nodes

    def __repr__(self) -> str:
        return f"<ModuleCall {self.path or '<root>'} {len(self.nodes)} nodes, {len(self.outputs)} out>"


def module_calls(graph) -> list[ModuleCall]:
    """Every module call of the graph, in the order they end (an inner call before the call that holds it)."""
    open_calls: dict[str, list] = {}          # key -> [path, kind, nodes in order, nodes made by it, not a child]
    ended: list[tuple] = []
    for node in graph.nodes:
        stack = node.meta.get(STACK)
        if not stack or node.op not in ("call_function", "call_method", "call_module"):
            continue
        keys = [key for key in stack if not str(key).startswith(_PLACEHOLDER_KEY)]
        for key in [key for key in open_calls if key not in keys]:
            ended.append(tuple(open_calls.pop(key)))
        for key in keys:
            path, kind = stack[key]
            if key not in open_calls:
                open_calls[key] = [path, _type_name(kind), [], []]
            open_calls[key][2].append(node)
        if keys:
            open_calls[keys[-1]][3].append(node)
    ended.extend(tuple(call) for call in reversed(list(open_calls.values())))
    return [_call(path, kind, nodes, own) for path, kind, nodes, own in ended]


def _call(path: str, kind: str, nodes: list, own: list) -> ModuleCall:
    members = frozenset(nodes)
    inputs: list = []
    for node in nodes:
        for source in node.all_input_nodes:
            if source not in members and source.op != "get_attr" and source not in inputs:
                inputs.append(source)
    # what it hands out, less its input passed through (a float32 cast of float32 is the input itself, which
    # the graph may read from there)
    handed_out = tuple(node for node in nodes if any(user not in members for user in node.users))
    computed = tuple(node for node in handed_out if not _passes_on(node, inputs, members))
    outputs = _returned_first(computed or handed_out, inputs)   # a Probe returns its input as it is
    scores = _routing_scores(own, members)
    if scores is not None and scores not in outputs:   # a router's logits, returned though nothing reads them
        outputs = (scores,) + outputs
    return ModuleCall(path, kind, members, tuple(inputs), outputs, nodes[-1], _attention_nodes(nodes))


def _returned_first(outputs: tuple, inputs: list) -> tuple:
    """The outputs in the order the module most likely returns them: the graph does not keep a tuple's order.
    A block's hidden state (`return x, (k, v)`) or an attention's output beside its weights comes first: the
    last one made of its input's shape. Else they follow the graph's order, integer tensors after the others
    (an MoE router's `logits, weights, ids`)."""
    if len(outputs) < 2:
        return outputs
    shape = _shape_text(inputs[0]) if inputs else None
    alike = [node for node in outputs if shape is not None and _shape_text(node) == shape]
    ordered = sorted(outputs, key=lambda node: not _is_floating(node))       # stable: the graph's order within
    if alike:
        ordered.remove(alike[-1])
        ordered.insert(0, alike[-1])
    return tuple(ordered)


def _routing_scores(nodes: list, members: frozenset):
    """An MoE router's logits: what its top-k choice is made of, before a softmax or a cast (None where the
    call makes no top-k choice)."""
    choice = next((node for node in nodes if _op_name(node) == "topk"), None)
    source = choice.args[0] if choice is not None else None
    while hasattr(source, "op") and _op_name(source) in _SOFTMAX_OPS + ("to", "_to_copy", "sigmoid"):
        source = source.args[0]
    return source if hasattr(source, "op") and source in members else None


def _is_floating(node) -> bool:
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return bool(getattr(value, "is_floating_point", lambda: True)())


def _shape_text(node) -> tuple | None:
    shape = getattr(node.meta.get("val"), "shape", None) if hasattr(node, "meta") else None
    return None if shape is None else tuple(str(dim) for dim in shape)


def _passes_on(node, inputs: list, members: frozenset) -> bool:
    """Whether `node` is one of `inputs` reshaped or cast, made by no op that computes."""
    while node in members and _op_name(node) in _SHAPE_ONLY and node.args and hasattr(node.args[0], "op"):
        node = node.args[0]
    return node in inputs


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', kind)}"


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
    import torch

    if kind is None:
        return torch.nn.ModuleList if children and all(name.isdigit() for name in children) else torch.nn.Module
    if kind in _CLASSES:
        return _CLASSES[kind]
    module_name, _, name = kind.rpartition(".")
    original = getattr(torch.nn, name, None) if module_name.startswith("torch.nn.modules") else None
    if isinstance(original, type) and issubclass(original, torch.nn.Module):
        made = type(name, (_Replaying, original), {"__module__": __name__})
    else:
        made = type(name or "Module", (_Replaying, torch.nn.Module), {"__module__": __name__})
    _CLASSES[kind] = made
    return made


def _new_module(cls: type):
    import torch

    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    return module


class ExportedModule:
    """Placeholder replaced below by the nn.Module subclass (torch is imported where used)."""


def _define() -> None:
    import torch

    class ExportedModule(torch.nn.Module):          # noqa: F811 - the real class, defined once torch is importable
        """The program's graph run node by node; its module calls made again so that hooks see them."""

        def __init__(self, graph_module) -> None:
            super().__init__()
            self.__dict__["program"] = graph_module      # not a submodule: its parameters are the tree's
            calls = module_calls(graph_module.graph)
            root = next((call.kind for call in calls if not call.path), None)
            self.__dict__["exported_from"] = root or f"{type(graph_module).__module__}.GraphModule"
            self.__dict__["calls"] = [call for call in calls if call.path]
            # whether it rotates anything (RoPE): an attention op's query is then q after RoPE
            self.__dict__["rotates"] = any(_op_name(node) in ("cos", "sin") for node in graph_module.graph.nodes)
            self.__dict__["_ends"] = _ends(self.calls)
            self.__dict__["_last_uses"] = _last_uses(graph_module.graph, self.calls)
            _build_tree(self, graph_module, self.calls)
            signature = _signature(graph_module)
            self.__dict__["signature"] = signature

            def forward(*args, **kwargs):
                return self._run(*args, **kwargs)

            forward.__signature__ = signature
            self.__dict__["forward"] = forward

        def __repr__(self) -> str:
            return f"<ExportedModule of {self.exported_from}, {len(self.calls)} module calls>"

        def _run(self, *args, **kwargs):
            flat = _flat_inputs(self.program, self.signature, args, kwargs)
            _refuse_other_shapes(self.program, flat)
            try:
                return _Runner(self, self.program).run(*flat)    # its outputs in the program's output structure
            except AssertionError as error:
                if not str(error).startswith("Guard failed"):
                    raise
                raise CaptureError(f"the exported program refuses these inputs ({str(error).splitlines()[0]}): "
                                   "export it with dynamic_shapes whose range holds them") from None

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

    globals()["ExportedModule"] = ExportedModule

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
            from parity.capture.hf.attention import listener_of

            listener = listener_of(module)
            if listener is not None:
                _tell_listener(listener, call, self.env)
            module.__dict__["_parity_value"] = outputs[0] if len(outputs) == 1 else outputs
            try:
                module(*inputs)
            finally:
                module.__dict__.pop("_parity_value", None)

    globals()["_Runner"] = _Runner


def table_and_head_taps(module) -> tuple:
    """Taps for the weights of the embedding the program reads token ids with (`embed.weight`) and of the
    output head, the last linear call as wide as that table (`logits.weight`); the logits themselves are the
    program's return value (a head's output may still be capped or scaled after it)."""
    import torch

    from parity.core.names import Tap

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


def _build_tree(root, graph_module, calls: list[ModuleCall]) -> None:
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
    for name, parameter in owned.items():
        path, _, leaf = name.rpartition(".")
        (root.get_submodule(path) if path else root).register_parameter(leaf, parameter)
    persistent = _persistent(graph_module)
    for name, buffer in buffers.items():
        path, _, leaf = name.rpartition(".")
        (root.get_submodule(path) if path else root).register_buffer(leaf, buffer, persistent=name in persistent)
    for _, module in root.named_modules():
        _describe(module)


def _numeric_order(path: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split("."))


def _persistent(graph_module) -> set[str]:
    try:
        return set(graph_module.state_dict(keep_vars=True))
    except Exception:   # noqa: BLE001 - a module whose state_dict hooks fail: every buffer taken as persistent
        return {name for name, _ in graph_module.named_buffers()}


def _describe(module) -> None:
    """The sizes torch.nn's layers keep beside their weights (parity reads a linear's width by them)."""
    import torch

    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is None:
        return
    if isinstance(module, torch.nn.Linear) and weight.ndim == 2:
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, torch.nn.Embedding) and weight.ndim == 2:
        module.num_embeddings, module.embedding_dim = weight.shape
        module.padding_idx = None


def _signature(graph_module) -> inspect.Signature:
    """The program's forward as it was exported: its arguments' names, a constant one (use_cache=False)
    defaulting to the value it was exported with."""
    signature = inspect.signature(graph_module.forward)
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    import torch

    parameters = []
    for index, parameter in enumerate(signature.parameters.values()):
        value = placeholders[index].meta.get("val") if len(placeholders) == len(signature.parameters) else None
        if parameter.default is inspect.Parameter.empty and value is not None \
                and not isinstance(value, (torch.Tensor, torch.SymInt)):
            parameter = parameter.replace(default=value)
        parameters.append(parameter)
    return signature.replace(parameters=parameters)


def _flat_inputs(graph_module, signature: inspect.Signature, args: tuple, kwargs: dict) -> list:
    """The graph's placeholders' values: the arguments bound by name and flattened by the program's input spec."""
    from torch.fx._pytree import tree_flatten_spec

    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"the exported program's forward{signature}: {error}") from None
    bound.apply_defaults()
    info = getattr(graph_module.graph._codegen, "pytree_info", None)
    values = list(bound.arguments.values())
    if info is None or info.in_spec is None:
        return values
    in_spec = info.in_spec
    if in_spec.type is tuple and in_spec.num_children == 2 and in_spec.child(0).type is tuple \
            and in_spec.child(1).type is dict:
        count = in_spec.child(0).num_children
        names = list(bound.arguments)
        structured = (list(values[:count]), {key: bound.arguments[name] for key, name in
                                             zip(in_spec.child(1).context, names[count:])})
        return tree_flatten_spec(structured, in_spec)
    return tree_flatten_spec(values, in_spec)


def _attention_nodes(nodes: list) -> tuple | None:
    """(query after RoPE, key as the module made it, probabilities or None) of the attention op among `nodes`:
    `scaled_dot_product_attention` (no probabilities), or the softmax of eager attention's scores."""
    attention = next((node for node in nodes if _op_name(node) in _ATTENTION_OPS), None)
    probabilities = None
    if attention is not None:
        query, key = attention.args[0], attention.args[1]
    else:
        probabilities = next((node for node in nodes if _op_name(node) in _SOFTMAX_OPS), None)
        scores = _scores_product(probabilities) if probabilities is not None else None
        if scores is None:
            return None
        query, key = scores.args[0], _untransposed(scores.args[1])
    key = _written_key(key)
    if not hasattr(query, "op") or key is None:
        return None
    return query, key, probabilities


def _ids_placeholder(graph_module):
    """The placeholder of the token ids: the first that is an integer tensor of two dimensions or more."""
    import torch

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
    import torch

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


def _op_name(node) -> str:
    if node.op != "call_function":
        return ""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def _scores_product(softmax):
    """The matrix product of query and key that the softmax's scores come from (through scaling and masking)."""
    node = softmax.args[0]
    for _ in range(8):
        if not hasattr(node, "op"):
            return None
        if _op_name(node) in ("matmul", "bmm") and len(node.all_input_nodes) == 2:
            return node
        node = node.args[0] if node.args else None
    return None


def _untransposed(node):
    """The key a `key.transpose(-2, -1)` was made of."""
    if hasattr(node, "op") and _op_name(node) in ("transpose", "permute"):
        return node.args[0]
    return None


def _written_key(node):
    """The key as the module made it: walked back through reshapes and GQA's expansion, and out of a cache it
    was written into (the value written, not the whole cache); None where it is a cache read as it was."""
    for _ in range(32):
        if not hasattr(node, "op") or node.op in ("get_attr", "placeholder"):
            return None
        name = _op_name(node)
        if name in _CACHE_WRITES and len(node.args) > _CACHE_WRITES[name]:
            node = node.args[_CACHE_WRITES[name]]
        elif name in _SHAPE_ONLY and node.args and hasattr(node.args[0], "op"):
            node = node.args[0]
        else:
            return node
    return None


_define()
