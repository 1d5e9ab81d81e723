"""Modules compiled by torch.compile, as parity traces them.

`torch.compile(module)` wraps the module (an OptimizedModule: its paths prefixed `_orig_mod.`, its forward
`(*args, **kwargs)`, its class torch's); `module.compile()` compiles it in place. A wrapped module is
taken as its own module compiled in place, by the same compiler with the same options (what
`nn.Module.compile` does), so that its paths, forward signature and class read as the port wrote them.

Inside a compiled module dynamo traces the forward hooks into its graph: a hook that does more than keep
its tensors breaks the graph, and `fullgraph=True` refuses it. `compiled_within` tells the tracer to keep
them as the graph makes them and record them after the forward (capture/torch/tracer.py).
"""

from __future__ import annotations


def compiled_in_place(model):
    """`torch.compile(module)`'s wrapper as the module it wraps, compiled in place with the wrapper's compiler
    and options; any other module as it is."""
    import torch

    original, context = getattr(model, "_orig_mod", None), getattr(model, "dynamo_ctx", None)
    if not isinstance(original, torch.nn.Module) or not callable(context):
        return model
    original._compiled_call_impl = context(original._call_impl)
    return original


def is_compiled(module) -> bool:
    """Compiled in place (`module.compile()`), wrapped by torch.compile, or its forward compiled on the instance."""
    if getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod"):
        return True
    return hasattr(vars(module).get("forward"), "_torchdynamo_orig_callable")


def compiled_within(model) -> bool:
    """Whether any module of `model` (itself included) runs compiled."""
    return any(is_compiled(module) for module in model.modules())


def guard_call(model, guard) -> bool:
    """Wrap a compiled module's compiled call in `guard` (a function -> function), outside the graph: a guard
    inside it (one that patches os._exit, redirects prints) would break it. False where it is not compiled."""
    compiled = getattr(model, "_compiled_call_impl", None)
    if compiled is None:
        return False
    model._compiled_call_impl = guard(compiled)
    return True


# compiled versions of one function dynamo keeps while parity drives a compiled module (torch's default: 8)
RECOMPILE_LIMIT = 64


def recompiles_allowed():
    """A context in which dynamo guards a compiled graph on the modules' hooks and compiles a function anew up to
    RECOMPILE_LIMIT times. By default dynamo does not look at hooks added after a graph was compiled: a graph
    compiled without parity's hooks would run with them in place, recording nothing. And parity calls a
    module with more shapes and caches than one program does (a prefill, steps of one token, chunks, padded
    batches, hooks on and off); past torch's limit dynamo runs the function uncompiled, or, with
    fullgraph=True, fails."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: max(getattr(config, name), RECOMPILE_LIMIT), "skip_nnmodule_hook_guards": False})
