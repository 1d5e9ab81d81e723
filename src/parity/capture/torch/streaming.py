"""Capture straight to disk: each checkpoint is written while the forward pass goes on.

`parity capture` does not hold the trace in memory: the hooks hand each recorded
tensor to a TraceStreamer, whose thread appends it to the trace file (core/
trace_writer.py) and lets it go. The forward's own tensors are handed over
without a copy; once one is written, its version counter is read again, and if
the forward changed it in place before it was written the whole pass runs again
with a copy made of each tensor as it is recorded (what trace_module does too).
The queue holds at most MAX_QUEUED_BYTES: past that the forward waits for the
disk, so memory stays bounded however large the trace.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from parity.capture.torch.module import (base_metadata, input_ids_of, nothing_recorded, quantized_metadata,
                                         returned_logits, traced_forward)
from parity.capture.torch.taps import TapsLike
from parity.core.trace.trace import metadata_strings, stored
from parity.core.trace.writer import TraceWriter

MAX_QUEUED_BYTES = 256 << 20


class TraceStreamer:
    """Takes recorded tensors (put) and writes them, in order, from one background thread."""

    def __init__(self, writer: TraceWriter, max_queued_bytes: int | None = None) -> None:
        self._writer = writer
        self._queue: queue.Queue = queue.Queue()
        self._budget = threading.Condition()
        self._queued_bytes, self._max_queued_bytes = 0, max_queued_bytes or MAX_QUEUED_BYTES
        self._names: set[str] = set()
        self.overwritten: list[str] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="parity-trace-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<TraceStreamer {len(self._names)} tensors, {self._queued_bytes:,} bytes queued>"

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def put(self, name: str, tensor, *, owned: bool, ready=None) -> None:
        """Queue `tensor` (on the host) for writing; `owned`: a copy nothing else changes; `ready`: an event
        to wait on before reading it (a device's copy still under way)."""
        size = tensor.element_size() * tensor.nelement()
        with self._budget:
            while self._queued_bytes and self._queued_bytes + size > self._max_queued_bytes and self._error is None:
                self._budget.wait()
            self._queued_bytes += size
        self._names.add(name)
        self._queue.put((name, tensor, None if owned else tensor._version, ready, size))

    def close(self) -> list[str]:
        """Wait until everything queued is written; the checkpoints changed in place before they were."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.overwritten

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, tensor, version, ready, size = item
            try:
                if self._error is None:
                    self._write(name, tensor, version, ready)
            except BaseException as error:  # noqa: BLE001 - handed to the caller by close()
                self._error = error
            finally:
                del tensor, item
                with self._budget:
                    self._queued_bytes -= size
                    self._budget.notify_all()

    def _write(self, name: str, tensor, version, ready) -> None:
        if ready is not None:
            ready.synchronize()
        self._writer.add(name, *stored(tensor))
        if version is not None and tensor._version != version:
            self.overwritten.append(name)


def stream_module(
    model,
    tokens,
    writer: TraceWriter,
    *,
    taps: TapsLike = "hf",
    checkpoints: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    forward: Callable | None = None,
    weights: bool = False,
    raw: bool = False,
    after: Callable[[TraceWriter], None] | None = None,
    **tracing,
) -> list[str]:
    """trace_module, written to `writer` as the checkpoints arrive; returns the names written. `after(writer)`
    adds what is made after the forward (capture/hf/head.py). The caller's `trace_file` block makes the file
    appear once this returns."""
    input_ids = input_ids_of(tokens, model)
    options = dict(checkpoints=checkpoints, weights=weights, raw=raw, token_count=input_ids.shape[-1], **tracing)
    for copy in (False, True):
        streamer = TraceStreamer(writer)
        try:
            tracer, output = traced_forward(model, input_ids, taps, forward, copy=copy, sink=streamer, **options)
        finally:
            overwritten = streamer.close()
        if not overwritten:
            break
        writer.restart()  # a tensor changed in place before it was written: run again, copying each
    for name, parameter in tracer.tensors.items():  # the tapped modules' own parameters (--weights)
        writer.add(name, *stored(parameter))
    logits = returned_logits(output, checkpoints, present=writer)
    if logits is not None:
        writer.add("logits", *stored(logits))
    if after is not None:
        after(writer)
    if not writer.names:
        raise nothing_recorded(model)
    writer.finish(metadata_strings({**base_metadata(model, input_ids), **quantized_metadata(tracer.quantized),
                                    **(metadata or {})}))
    return writer.names
