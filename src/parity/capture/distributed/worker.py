"""What runs in each rank's process: the process group joined, the port built, commands served.

The parent (group.py) sends every rank the same commands through its pipe, and every rank
runs them in the same order, so the collectives inside the port's forward meet. A rank
answers each with ("ok", value) or ("error", one line that points at the user's code).

    trace    one forward pass traced with hooks; the rank's checkpoints and its `shards`
             metadata written to its own trace file (a rank trace, docs/trace-format.md)
    logits   one forward pass over token ids; the forward's output as the rank holds it
    stop     leave the process group and exit
"""

from __future__ import annotations

import os
import sys
from typing import Any


def serve(rank: int, world_size: int, setup: dict[str, Any], connection) -> None:
    """A rank's life: join, build, then answer commands until told to stop or the parent goes away."""
    os.dup2(2, 1)   # whatever the port prints goes to stderr, as a candidate's does (--json - stays JSON)
    try:
        module = _start(rank, world_size, setup)
        connection.send(("ok", _described(module)))
    except BaseException as error:   # the user's factory, torch.distributed's rendezvous: one line back
        _send_error(connection, error)
        return
    try:
        while True:
            try:
                command, payload = connection.recv()
            except EOFError:
                return
            if command == "stop":
                return
            try:
                connection.send(("ok", COMMANDS[command](module, rank, world_size, setup, payload)))
            except Exception as error:
                _send_error(connection, error)
                return   # a rank that failed mid-forward leaves the others in a collective: the parent stops all
    finally:
        _leave()


def _start(rank: int, world_size: int, setup: dict[str, Any]):
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from parity.capture.torch.factory import build_module

    torch.set_num_threads(setup.get("threads") or torch.get_num_threads())
    if setup["backend"] == "gloo":   # every rank is on this machine: loopback, whatever the hostname resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    dist.init_process_group(setup["backend"], init_method=setup["rendezvous"], rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=setup["collective_timeout_s"]))
    if setup["backend"] == "nccl":
        torch.cuda.set_device(rank)
    return build_module(setup["spec"], setup["model_path"])


def _described(module) -> dict[str, Any]:
    from parity.capture.torch.candidate import module_dtype

    shards = getattr(module, "parity_shards", None)
    if hasattr(shards, "as_json"):
        shards = shards.as_json()
    return {"class": type(module).__name__, "dtype": module_dtype(module),
            "shards": dict(shards) if isinstance(shards, dict) else shards,
            "taps": getattr(module, "parity_taps", None) is not None}


def trace(module, rank: int, world_size: int, setup: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Trace one forward pass over `request['tokens']` and write the rank's trace to `request['path']`."""
    from parity.capture.torch.candidate import infer_taps
    from parity.capture.torch.module import (base_metadata, input_ids_of, nothing_recorded, returned_logits,
                                             traced_forward)
    from parity.core.trace import make_trace, save_trace

    taps = request.get("taps") or getattr(module, "parity_taps", None) or infer_taps(module, setup["spec"])
    input_ids = input_ids_of(request["tokens"], module)
    # copy=True: a tensor changed in place after it was recorded is never traced a second time, which one
    # rank alone would do, leaving the others waiting in a collective
    tracer, output = traced_forward(module, input_ids, taps, None, copy=True, checkpoints=request.get("checkpoints"),
                                    token_count=input_ids.shape[-1], heads=_heads(module, world_size),
                                    weights=request.get("weights", False), raw=False)
    tensors = dict(tracer.tensors)
    logits = returned_logits(output, request.get("checkpoints"), present=tensors)
    if logits is not None:
        tensors["logits"] = logits.cpu()
    if not tensors:
        raise nothing_recorded(module)
    metadata = {**base_metadata(module, input_ids), "shards": {"rank": rank, "world_size": world_size,
                                                               "layout": request["layout"]}}
    path = request["path"].format(rank=rank)
    save_trace(make_trace(tensors, metadata), path)
    return {"path": path, "count": len(tensors)}


def logits(module, rank: int, world_size: int, setup: dict[str, Any], ids: list[int]):
    """The forward's output over `ids` as this rank holds it: (T, V) or its vocabulary slice, float64."""
    from parity.capture.torch.incremental import full_logits

    return full_logits(module, list(ids))


COMMANDS = {"trace": trace, "logits": logits}


def _heads(module, world_size: int) -> frozenset[int]:
    """The head counts per-head tensors are read by: the model's, and each rank's share of them."""
    from parity.capture.torch.layout import config_heads

    counts = config_heads(getattr(module, "config", None))
    return counts | {count // world_size for count in counts if count % world_size == 0}


def _send_error(connection, error: BaseException) -> None:
    try:
        connection.send(("error", one_line(error)))
    except (OSError, EOFError):
        pass   # the parent is gone


def one_line(error: BaseException) -> str:
    """The error in one line, pointing at the user's own code where it came from there."""
    from parity.capture.torch.factory import describe_error
    from parity.core.errors import CaptureError, ParityError

    if isinstance(error, CaptureError) and error.__cause__ is not None:   # the forward pass: name the user's line
        return f"the forward pass failed: {describe_error(error.__cause__)}"
    if isinstance(error, ParityError):
        return " ".join(str(error).split())
    return describe_error(error)


def _leave() -> None:
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:   # leaving is best effort: the parent reaps the process either way
        pass
