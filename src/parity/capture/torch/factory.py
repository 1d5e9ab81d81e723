"""The user's own code, named `FILE.py:NAME` or `package.module:NAME`: imported as a script would be,
its failures told in one line that points at the user's file.

    build = load_factory("my_port.py:build")              # the function itself
    model = build_module("my_port.py:build", "models/x")  # called, with the model path if it takes one
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from parity.core.errors import OptionError


def split_spec(spec: str) -> tuple[str, str]:
    """'my_port.py:build' -> ('my_port.py', 'build'); a spec without ':NAME' is refused."""
    module_name, _, name = spec.rpartition(":")
    if not module_name or not name:
        raise OptionError(f"'{spec}' is not FILE.py:NAME or module:NAME (e.g. my_port.py:build)")
    return module_name, name


def import_module(name: str) -> ModuleType:
    """Import FILE.py as a script would run (its directory and the working directory importable), or a module."""
    for directory in ([str(Path(name).resolve().parent)] if name.endswith(".py") else []) + [str(Path.cwd())]:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        if not name.endswith(".py"):
            return importlib.import_module(name)
        path = Path(name)
        if not path.exists():
            raise OptionError(f"{name}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    except OptionError:
        raise
    except Exception as error:  # the user's code: say where it failed, in one line
        raise OptionError(f"importing {name} failed: {describe_error(error)}") from error


def load_factory(spec: str, *, what: str = "a factory that returns the model") -> Callable:
    """The callable `NAME` of `FILE.py:NAME` / `module:NAME`; `what` says what it should be, for the error."""
    module_name, name = split_spec(spec)
    function = getattr(import_module(module_name), name, None)
    if not callable(function):
        raise OptionError(f"{module_name} has no function '{name}'; name {what}")
    return function


def build_module(spec: str, model_path: str | None = None):
    """Call the factory `spec` (with `model_path` if it takes a required argument) and return its torch.nn.Module."""
    factory = load_factory(spec)
    takes_path = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in inspect.signature(factory).parameters.values()
    )
    try:
        model = factory(model_path) if takes_path else factory()
    except Exception as error:  # the user's code: say where it failed, in one line
        raise OptionError(f"{spec} failed: {describe_error(error)}") from error
    if not hasattr(model, "named_modules"):
        raise OptionError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def describe_error(error: BaseException) -> str:
    """'ExceptionType: message (at file:line)' in one line, the line being the innermost frame of the user's
    code: not parity's, not an installed library's (torch's call machinery says nothing of the port)."""
    import traceback

    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "/parity/" not in frame.filename]
    own = [frame for frame in frames if not _installed(frame.filename)]
    at = own[-1] if own else None   # an error from the call machinery alone points at no line of the user's
    message = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {message}" + (f" (at {at.filename}:{at.lineno})" if at else "")


def _installed(filename: str) -> bool:
    """A file of an installed package or of the standard library, not the user's."""
    import sysconfig

    libraries = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    return "site-packages" in filename or "dist-packages" in filename or filename.startswith(tuple(libraries))
