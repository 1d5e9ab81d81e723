"""Which module calls a program made by torch.export was made of, read off its graph.

Each node keeps, in `meta["nn_module_stack"]`, the module calls it was made in (`{key: (path, type)}`,
outermost first). A call is the run of nodes that carry its key; what it reads from outside is its input
(in the order first read), what it hands outside its output. The graph does not keep the order of a tuple a
module returns, nor a value it returns that nothing reads: the likeliest order is taken (`_returned_first`),
and an MoE router's logits are found where its top-k choice is made. An attention module's query and key
after RoPE and its probabilities are the nodes of its attention op.

    calls = module_calls(graph_module.graph)   # [ModuleCall], each inner call before the call holding it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STACK = "nn_module_stack"
_PLACEHOLDER_KEY = "_empty_nn_module_stack"     # torch.export's own marker, not a module
# Ops that only reshape, cast or copy a tensor: walked through back to the value they were made of.
_SHAPE_ONLY = frozenset({"view", "reshape", "_unsafe_view", "expand", "unsqueeze", "clone", "contiguous", "alias",
                         "squeeze", "_to_copy", "to", "slice", "repeat_interleave", "repeat", "detach"})
# Ops that write a value into a cache (argument index of the value written).
_CACHE_WRITES = {"index_copy": 3, "index_copy_": 3, "index_put": 2, "index_put_": 2, "copy_": 1, "copy": 1,
                 "slice_scatter": 1}
_ATTENTION_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                  "_scaled_dot_product_cudnn_attention")
_SOFTMAX_OPS = ("softmax", "_softmax", "_safe_softmax")


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
    choice = next((node for node in nodes if op_name(node) == "topk"), None)
    source = choice.args[0] if choice is not None else None
    while hasattr(source, "op") and op_name(source) in _SOFTMAX_OPS + ("to", "_to_copy", "sigmoid"):
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
    while node in members and op_name(node) in _SHAPE_ONLY and node.args and hasattr(node.args[0], "op"):
        node = node.args[0]
    return node in inputs


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', kind)}"


def _attention_nodes(nodes: list) -> tuple | None:
    """(query after RoPE, key as the module made it, probabilities or None) of the attention op among `nodes`:
    `scaled_dot_product_attention` (no probabilities), or the softmax of eager attention's scores."""
    attention = next((node for node in nodes if op_name(node) in _ATTENTION_OPS), None)
    probabilities = None
    if attention is not None:
        query, key = attention.args[0], attention.args[1]
    else:
        probabilities = next((node for node in nodes if op_name(node) in _SOFTMAX_OPS), None)
        scores = _scores_product(probabilities) if probabilities is not None else None
        if scores is None:
            return None
        query, key = scores.args[0], _untransposed(scores.args[1])
        users = [user for user in probabilities.users if op_name(user) != "_assert_tensor_metadata"]
        if len(users) == 1 and op_name(users[0]) in ("to", "_to_copy"):   # cast back, as the model uses them
            probabilities = users[0]
    key = _written_key(key)
    if not hasattr(query, "op") or key is None:
        return None
    return query, key, probabilities


def _scores_product(softmax):
    """The matrix product of query and key that the softmax's scores come from (through scaling and masking)."""
    node = softmax.args[0]
    for _ in range(8):
        if not hasattr(node, "op"):
            return None
        if op_name(node) in ("matmul", "bmm") and len(node.all_input_nodes) == 2:
            return node
        node = node.args[0] if node.args else None
    return None


def _untransposed(node):
    """The key a `key.transpose(-2, -1)` was made of."""
    if hasattr(node, "op") and op_name(node) in ("transpose", "permute"):
        return node.args[0]
    return None


def _written_key(node):
    """The key as the module made it: walked back through reshapes and GQA's expansion, and out of a cache it
    was written into (the value written, not the whole cache); None where it is a cache read as it was."""
    for _ in range(32):
        if not hasattr(node, "op") or node.op in ("get_attr", "placeholder"):
            return None
        name = op_name(node)
        if name in _CACHE_WRITES and len(node.args) > _CACHE_WRITES[name]:
            node = node.args[_CACHE_WRITES[name]]
        elif name in _SHAPE_ONLY and node.args and hasattr(node.args[0], "op"):
            node = node.args[0]
        else:
            return node
    return None


def op_name(node) -> str:
    if node.op != "call_function":
        return ""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]
