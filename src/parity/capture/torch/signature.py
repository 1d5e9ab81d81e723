"""What a port's forward takes, read from the signatures of the forwards in its class hierarchy.

Wrappers and patched models take `**kwargs` and pass them on: a forward that takes **kwargs
inherits its base's parameters; one that takes none, only its own. A forward set on the
instance (a patch) is the one called, seen through wrappers (parity's guard).
"""

from __future__ import annotations

import inspect


def forward_parameters(model) -> tuple[set[str], bool]:
    """(the parameter names `model(...)` accepts, whether it accepts any keyword through **kwargs)."""
    names: set[str] = set()
    takes_kwargs = False
    own = vars(model).get("forward")
    own = inspect.unwrap(own) if own is not None else None
    if getattr(own, "__self__", None) is model:
        own = None                         # the class's own forward, bound: its hierarchy says the rest
    forwards = [own] if own is not None else [cls.__dict__.get("forward") for cls in type(model).__mro__
                                               if not cls.__module__.startswith("torch.")]
    for forward in forwards:
        if forward is None:
            continue
        try:
            parameters = inspect.signature(forward).parameters
        except (TypeError, ValueError):
            continue
        names.update(parameters)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break   # what it does not pass on, its bases' forwards never see
        takes_kwargs = True
    return names, takes_kwargs
