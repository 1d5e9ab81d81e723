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

from parity.capture.torch.compiled import compiled_in_place, guard_call
from parity.core.errors import OptionError
from parity.core.isolation import guarded, is_user_exit


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
        with guarded():
            if not name.endswith(".py"):
                return importlib.import_module(name)
            path = Path(name)
            if not path.is_file():
                raise OptionError(f"{name}: no such file" if not path.exists() else f"{name}: not a regular file; "
                                  "give a Python file")
            module_name = _module_name(path)
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            return module
    except BaseException as error:  # the user's code, SystemExit and os._exit included: one line
        if not is_user_exit(error):
            raise
        raise OptionError(f"importing {name} failed: {describe_error(error)}") from None


def _module_name(path: Path) -> str:
    """The name FILE.py is imported under: its stem, as a script's module would be, unless a library of that name
    is imported already (a port called kernels.py beside transformers' `kernels`): replacing it would hand the
    library's users the port."""
    loaded = sys.modules.get(path.stem)
    origin = getattr(loaded, "__file__", None)
    if loaded is None or (origin is not None and Path(origin).resolve() == path.resolve()):
        return path.stem
    return f"parity_file_{path.stem}"


def load_factory(spec: str, *, what: str = "a factory that returns the model") -> Callable:
    """The callable `NAME` of `FILE.py:NAME` / `module:NAME`; `what` says what it should be, for the error."""
    module_name, name = split_spec(spec)
    module = import_module(module_name)
    try:
        with guarded():
            function = getattr(module, name, None)
    except BaseException as error:  # a module __getattr__ of the user's
        if not is_user_exit(error):
            raise
        raise OptionError(f"looking up {name} in {module_name} failed: {describe_error(error)}") from None
    if not callable(function):
        raise OptionError(f"{module_name} has no function '{name}'; name {what}")
    return function


def build_module(spec: str, model_path: str | None = None, *, guard_forward: bool = True):
    """Call the factory `spec` (with `model_path` if it takes a required argument) and return its torch.nn.Module.

    With `guard_forward`, the module's forward is wrapped so that SystemExit, os._exit or another
    BaseException from it is a CaptureError naming the port (one line, exit 2), never parity's exit;
    ordinary exceptions pass as they are. Its signature is kept (`inspect.signature` follows the wrapper)."""
    factory = load_factory(spec)
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):   # a callable without a signature Python can read: called without arguments
        parameters = ()
    takes_path = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
                     for p in parameters)
    try:
        with guarded():
            model = factory(model_path) if takes_path else factory()
    except BaseException as error:  # the user's code, SystemExit and os._exit included: one line
        if not is_user_exit(error):
            raise
        raise OptionError(f"{spec} failed: {describe_error(error)}; fix the factory so that it returns the model") \
            from None
    import torch

    from parity.capture.torch.exported import exported_module, is_exported

    if is_exported(model):   # torch.export's program (or its .module()): its module calls made again for hooks
        model = exported_module(model)
    if not isinstance(model, torch.nn.Module) and callable(model):   # a function of token ids: its logits alone
        from parity.capture.torch.opaque import OpaqueModel

        model = OpaqueModel(model, spec)
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module, a program made by "
                          "torch.export or a function of token ids; return the model")
    model = compiled_in_place(model)
    if guard_forward:
        _guard_forward(model, spec)
    return model


def _guard_forward(model, spec: str) -> None:
    """Its forward, or a compiled module's compiled call (a guard inside the graph would break it)."""
    import functools

    from parity.core.errors import CaptureError

    def guard(call):
        @functools.wraps(call)
        def guarded_call(*args, **kwargs):
            try:
                with guarded():
                    return call(*args, **kwargs)
            except (Exception, KeyboardInterrupt):
                raise
            except BaseException as error:   # SystemExit, os._exit, a BaseException of the port's own
                raise CaptureError(f"the forward of {spec} {_exited(error)}: a port must return its outputs, not "
                                   "end the process; fix the port") from None
        return guarded_call

    if not guard_call(model, guard):
        model.forward = guard(model.forward)


def _exited(error: BaseException) -> str:
    from parity.core.isolation import ExitCalled

    return describe_error(error) if isinstance(error, ExitCalled) else f"raised {describe_error(error)}"


def describe_error(error: BaseException) -> str:
    """'ExceptionType: message (at file:line)' in one line, the line being the innermost frame of the user's
    code: not parity's, not an installed library's (torch's call machinery says nothing of the port);
    one printable line, however the exception prints itself."""
    import traceback

    from parity.core.isolation import ExitCalled
    from parity.core.printable import printable

    try:
        frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "/parity/" not in frame.filename]
    except Exception:  # noqa: BLE001 - a traceback that cannot be read: say so without the place
        frames = []
    own = [frame for frame in frames if not _installed(frame.filename)]
    at = f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""   # the call machinery alone: no line
    if isinstance(error, ExitCalled):
        return f"called os._exit({error.status}){at}"
    try:
        message = str(error)
    except BaseException:  # noqa: BLE001 - the user's __str__ failed too
        message = "(its message cannot be printed)"
    message = printable(" ".join(message.split()))[:300]
    return f"{type(error).__name__}: {message}{at}"


def _installed(filename: str) -> bool:
    """A file of an installed package or of the standard library, not the user's."""
    import sysconfig

    libraries = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    return "site-packages" in filename or "dist-packages" in filename or filename.startswith(tuple(libraries))
