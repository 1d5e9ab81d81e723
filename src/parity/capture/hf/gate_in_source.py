"""Which of a gated MLP's two input projections is its gate, read from the code of its forward.

Where names do not say (LLMs-from-scratch's `fc1`, `fc2`, `fc3`), the gate is the
projection whose output the forward passes through an activation:

    x_fc1 = self.fc1(x)
    x_fc2 = self.fc2(x)
    x = nn.functional.silu(x_fc1) * x_fc2      # fc1 is the gate, fc2 the up

The forward's own code decides, not a guess from names: a port that activates the
projection holding the checkpoint's up weights has its gate there, and is compared so.
None where the source cannot be read or does not say (both, or neither, activated).
"""

from __future__ import annotations

import ast

ACTIVATION_WORDS = ("silu", "gelu", "relu", "swish", "sigmoid", "mish", "act")


def gate_in_source(mlp, projections: tuple[str, str]) -> str | None:
    """The one of `projections` (names of `mlp`'s children) that its forward activates, or None."""
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(mlp).forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    bound = {}   # variable -> the child whose output it holds (x_fc1 = self.fc1(x))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            child = _child_called(node.value)
            if child is not None:
                bound[node.targets[0].id] = child
    activated = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_activation(node.func):
            for argument in node.args:
                child = _child_called(argument) or (bound.get(argument.id) if isinstance(argument, ast.Name) else None)
                if child is not None:
                    activated.add(child)
    found = activated & set(projections)
    return found.pop() if len(found) == 1 else None


def _child_called(node) -> str | None:
    """`name` where `node` is self.name(...)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
        return node.func.attr
    return None


def _is_activation(function) -> bool:
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    return any(word in name.lower() for word in ACTIVATION_WORDS)
