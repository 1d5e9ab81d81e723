"""The user's own code named on the command line (`FILE.py:NAME` or `module:NAME`), for sanity, kernel and bench.

The one place these commands load a candidate: it delegates to the loading
helpers `parity check` already has, so that a shared candidate-spec module can
replace both functions here without touching the commands.
"""

from __future__ import annotations

from collections.abc import Callable

from parity.core.errors import OptionError


def build_module(spec: str, model_path: str | None = None):
    """Call the factory `spec` (with `model_path` if it takes a required argument); its torch.nn.Module."""
    from parity.check import _call_factory

    if ":" not in spec:
        raise OptionError(f"'{spec}' is not FILE.py:FACTORY or module:FACTORY (e.g. my_model.py:default_model)")
    return _call_factory(spec, model_path)


def load_function(spec: str, *, what: str) -> Callable:
    """The callable NAME of `FILE.py:NAME` / `module:NAME`; `what` says what it should be, for the error."""
    from parity.check import _import

    module_name, _, name = spec.rpartition(":")
    if not module_name or not name:
        raise OptionError(f"'{spec}' is not FILE.py:NAME or module:NAME (e.g. my_kernels.py:rms_norm)")
    function = getattr(_import(module_name), name, None)
    if not callable(function):
        raise OptionError(f"{module_name} has no function '{name}'; name {what}")
    return function


def describe_error(error: BaseException) -> str:
    """'ExceptionType: message (at file:line)', the line being the innermost frame of the user's code."""
    from parity.check import _where

    return _where(error)
