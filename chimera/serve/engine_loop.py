"""One thread owns the ``Engine`` and steps it; the server's handlers talk to it through queues.

Handlers (on the asyncio event loop) ``submit`` a group of ``Request``s (the ``n`` choices of one
HTTP request) and get an ``asyncio.Queue`` that receives ``(choice index, Output)`` after every
engine step that gave one of them tokens; ``cancel`` (a client went away, or a stop string ended
a choice) frees their rows at the next step. The thread blocks while the engine is idle, and
between steps takes every command waiting, so requests that arrive together join the same decode
steps (continuous batching). An exception inside a step fails the requests then running (their
queues get the error) and the engine is rebuilt; the thread and the server live on.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import traceback
from dataclasses import dataclass, field

import torch

from chimera.inference import Engine, Request


@dataclass
class Output:
    """What one step gave one choice: new tokens and their logprobs; ``finish_reason`` once it is done;
    ``error`` when the engine failed."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Stats:
    """Counters the engine thread keeps (read them from any thread)."""

    steps: int = 0
    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    tokens: int = 0
    max_busy: int = 0
    """The most rows that decoded in one step."""
    busy: int = 0


class _Group:
    def __init__(self, requests: list[Request], loop: asyncio.AbstractEventLoop):
        self.requests = requests
        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()
        self.index = {id(r): i for i, r in enumerate(requests)}


class EngineLoop:
    """The engine's thread (see the module doc). ``max_rows`` rows of ``capacity`` positions each."""

    def __init__(self, model, max_rows: int, capacity: int, compile: bool = False):
        self.model, self.max_rows, self.capacity, self.compile = model, max_rows, capacity, compile
        self.engine = Engine(model, max_rows, capacity, compile)
        self.stats = Stats()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._groups: dict[int, _Group] = {}  # id(request) -> its group
        self._thread = threading.Thread(target=self._run, name="chimera-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._commands.put(("stop", None))
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- called from the event loop -------------------------------------------------------------
    def submit(self, requests: list[Request]) -> asyncio.Queue[tuple[int, Output]]:
        """Queue ``requests`` (one HTTP request's choices) -> the queue their outputs arrive on."""
        group = _Group(requests, asyncio.get_running_loop())
        self._commands.put(("submit", group))
        return group.queue

    def cancel(self, requests: list[Request]) -> None:
        """Stop these requests wherever they are (waiting or decoding); their rows are free for others."""
        self._commands.put(("cancel", requests))

    # ---- the engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            block = self.engine.idle
            while True:
                try:
                    cmd, arg = self._commands.get(block=block)
                except queue.Empty:
                    break
                if cmd == "stop":
                    return
                self._command(cmd, arg)
                block = self.engine.idle
            if not self.engine.idle:
                self._step()

    def _command(self, cmd: str, arg) -> None:
        if cmd == "submit":
            group: _Group = arg
            for r in group.requests:
                try:
                    self.engine.submit(r)
                except ValueError as e:  # the handler checks lengths first; this is a last guard
                    self._deliver(group, {id(r): Output(error=str(e), finish_reason="error")})
                    continue
                self._groups[id(r)] = group
                self.stats.submitted += 1
        elif cmd == "cancel":
            for r in arg:
                if id(r) in self._groups:
                    self.engine.cancel(r)
                    self._groups.pop(id(r))
                    self.stats.cancelled += 1

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as e:  # a failed step must not take the server down: fail its requests, start afresh
            self.stats.errors += 1
            message = f"the inference engine failed: {type(e).__name__}: {e}"
            traceback.print_exc()
            failed, self._groups = self._groups, {}
            self.engine = Engine(self.model, self.max_rows, self.capacity, self.compile)  # before anyone hears
            by_group: dict[int, tuple[_Group, dict]] = {}
            for rid, g in failed.items():
                by_group.setdefault(id(g), (g, {}))[1][rid] = Output(error=message, finish_reason="error")
            for g, outs in by_group.values():
                self._deliver(g, outs)
            return
        self.stats.steps += 1
        self.stats.busy = self.engine.busy
        self.stats.max_busy = max(self.stats.max_busy, len({id(e.request) for e in events}))
        outs: dict[int, Output] = {}
        for e in events:
            o = outs.setdefault(id(e.request), Output())
            o.tokens.append(e.token)
            o.logprobs.append(e.logprob)
            o.finish_reason = e.request.finish_reason
        self.stats.tokens += len(events)
        by_group = {}
        for rid, o in outs.items():
            g = self._groups.get(rid)
            if g is None:  # cancelled after this step began
                continue
            if o.finish_reason is not None:
                self._groups.pop(rid)
                self.stats.finished += 1
            by_group.setdefault(id(g), (g, {}))[1][rid] = o
        for g, group_outs in by_group.values():
            self._deliver(g, group_outs)

    @staticmethod
    def _deliver(group: _Group, outs: dict[int, Output]) -> None:
        items = [(group.index[rid], o) for rid, o in outs.items()]

        def put() -> None:
            for item in items:
                group.queue.put_nowait(item)

        try:
            group.loop.call_soon_threadsafe(put)
        except RuntimeError:  # the event loop has closed (server shutting down)
            pass
