"""Continuous batching: requests share decode steps on one ``Decoder``.

Requests wait in a queue and take free rows as they come: the waiting prompts are prefilled
together (one call, right-padded to one length), each once however many rows
(samples) it has, and copied into their rows.
Then every step feeds one token per row and each row chooses its next token at its own
uniforms (drawn from its request's seed and key, so a request's tokens do not depend on which
requests share its steps). A row whose request ends (a stop token, its token limit, its answer
budget, or a cancel) is free at once; when nothing waits and at most half the rows are busy, the
busy rows are packed into a smaller cache, so finished rows stop costing compute; when requests
arrive later (a server), the cache grows back toward ``max_rows`` to take them.

``generate_batch`` and ``generate`` (``chimera.inference.generate``) and the server run this loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from chimera.inference.budget import ThinkingBudget, ThinkingTracker
from chimera.inference.decoder import Decoder, RowSampling, choose
from chimera.inference.sampling import GREEDY, Sampler, row_uniforms


@dataclass(eq=False)
class Request:
    """One sequence to generate: a prompt, how to sample, when to stop."""

    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler = GREEDY
    stop_tokens: frozenset[int] = frozenset()
    seed: int = 0
    key: str = ""
    """With ``seed``, names the request's uniforms (e.g. "prompt 3 / sample 1")."""
    budget: ThinkingBudget | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    """None while running; "stop", "length" or "cancelled" when done."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a prompt needs at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        self.tracker: ThinkingTracker | None = None if self.budget is None else self.budget.track(self.prompt)
        self._u: list[float] | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def uniforms(self) -> list[float]:
        """max_new_tokens uniforms, one per token this request may draw."""
        if self._u is None:
            self._u = row_uniforms(self.seed, self.key, self.max_new_tokens)
        return self._u

    def forced(self) -> int:
        """The token this request must emit next (-1: none)."""
        f = None if self.tracker is None else self.tracker.forced()
        return -1 if f is None else f

    def accept(self, token: int, logprob: float) -> None:
        """Record a generated token and decide whether the request is done."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if self.tracker is not None:
            self.tracker.observe(token)
        if token in self.stop_tokens:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
        elif self.tracker is not None and self.tracker.done():
            self.finish_reason = "length"


@dataclass
class Event:
    """A token a step gave a request."""

    request: Request
    token: int
    logprob: float


class Engine:
    """Continuous batching of requests over ``max_rows`` rows of ``capacity`` positions (see the module doc)."""

    def __init__(self, model, max_rows: int, capacity: int, compile: bool = False):
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be at least 1")
        self.model = model
        self.max_rows = max_rows
        self.capacity = capacity
        self.decoder = Decoder(model, max_rows, capacity, compile)
        self.vocab = model.config.vocab_size
        self.rows: list[Request | None] = [None] * max_rows
        self.waiting: deque[Request] = deque()
        self.next_tokens = torch.zeros(max_rows, dtype=torch.long)
        self.steps = 0
        self._sampling_key: tuple | None = None
        self._rows_sampling: RowSampling | None = None

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.busy

    def submit(self, request: Request) -> Request:
        """Queue a request; it takes a row at the next ``step`` with one free."""
        if len(request.prompt) + request.max_new_tokens > self.capacity:
            raise ValueError(f"a prompt of {len(request.prompt)} tokens plus max_new_tokens={request.max_new_tokens} "
                             f"exceeds the engine's capacity of {self.capacity} positions")
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request now (a client went away): its row is free for the next one."""
        if request in self.waiting:
            self.waiting.remove(request)
        for i, r in enumerate(self.rows):
            if r is request:
                self.rows[i] = None
        if not request.done:
            request.finish_reason = "cancelled"

    def run(self) -> Iterator[Event]:
        """Step until every submitted request is done, yielding each generated token."""
        while not self.idle:
            yield from self.step()

    @torch.no_grad()
    def step(self) -> list[Event]:
        """Admit waiting requests to free rows (their first token comes from the prefill), then one decode
        step for every running row. Returns the tokens generated."""
        events = self._admit()
        if any(r is not None and not r.done for r in self.rows):
            events += self._decode()
        self.rows = [None if r is None or r.done else r for r in self.rows]
        self._compact()
        self.steps += 1
        return events

    # ---- admission ------------------------------------------------------------------------------
    def _admit(self) -> list[Event]:
        """Free rows take waiting requests; their prompts are prefilled together, each distinct one once."""
        self._grow()
        free = [i for i, r in enumerate(self.rows) if r is None]
        groups: dict[tuple[int, ...], list[int]] = {}
        while free and self.waiting:
            row, req = free.pop(0), self.waiting.popleft()
            self.rows[row] = req
            groups.setdefault(tuple(req.prompt), []).append(row)
        if not groups:
            return []
        logits = self.decoder.prefill([list(p) for p in groups], list(groups.values()))
        rows = [row for g in groups.values() for row in g]
        which = torch.tensor([i for i, g in enumerate(groups.values()) for _ in g], device=logits.device)
        reqs = [self.rows[row] for row in rows]
        tokens, lps = choose(logits.index_select(0, which), self._uniforms(reqs), self._sampling(reqs))
        return self._accept(rows, tokens, lps)

    # ---- decoding -------------------------------------------------------------------------------
    def _decode(self) -> list[Event]:
        reqs = [None if r is None or r.done else r for r in self.rows]
        if self._sampling_key != self._key(reqs):
            self._rows_sampling = self._sampling(reqs)
            self._sampling_key = self._key(reqs)
        device = self.decoder.device
        tokens, lps = self.decoder.step(self.next_tokens.to(device), self._uniforms(reqs), self._rows_sampling)
        return self._accept([i for i, r in enumerate(reqs) if r is not None], tokens, lps, all_rows=True)

    def _accept(self, rows: list[int], tokens: torch.Tensor, lps: torch.Tensor, all_rows: bool = False) -> list[Event]:
        """Give each of ``rows`` its token (``tokens`` / ``lps`` per row of ``rows``, or per cache row)."""
        tokens, lps = tokens.tolist(), lps.tolist()
        events = []
        for j, row in enumerate(rows):
            k = row if all_rows else j
            req = self.rows[row]
            req.accept(tokens[k], lps[k])
            self.next_tokens[row] = tokens[k]
            events.append(Event(req, tokens[k], lps[k]))
        return events

    def _uniforms(self, reqs: list[Request | None]) -> torch.Tensor:
        u = [0.0 if r is None else r.uniforms()[len(r.tokens)] for r in reqs]
        return torch.tensor(u, device=self.decoder.device)

    @staticmethod
    def _key(reqs: list[Request | None]) -> tuple:
        """What the rows' sampling tensors depend on."""
        return tuple(None if r is None else (id(r), r.forced(), r.tracker is not None and r.tracker.closed)
                     for r in reqs)

    def _sampling(self, reqs: list[Request | None]) -> RowSampling:
        """The rows' samplers, forced tokens and masks as tensors (idle rows: greedy, unforced)."""
        samplers = [GREEDY if r is None else r.sampler for r in reqs]
        device = self.decoder.device
        closed = [i for i, r in enumerate(reqs) if r is not None and r.tracker is not None and r.tracker.closed]
        bias = torch.zeros(len(reqs) if closed else 1, self.vocab, device=device)
        for i in closed:
            bias[i, list(reqs[i].budget.segment_ids)] = float("-inf")
        return RowSampling(
            temperature=torch.tensor([s.temperature for s in samplers], device=device),
            top_k=torch.tensor([s.top_k for s in samplers], device=device),
            top_p=torch.tensor([s.top_p for s in samplers], device=device),
            force=torch.tensor([-1 if r is None else r.forced() for r in reqs], device=device),
            bias=bias, filtered=any(s.top_k > 0 or s.top_p < 1 for s in samplers))

    def _grow(self) -> None:
        """After packing, requests that wait beyond the free rows get new rows, up to ``max_rows`` (the new
        rows copy row 0's state, idle until a prefill overwrites them)."""
        need = min(self.max_rows, self.busy + len(self.waiting))
        extra = need - len(self.rows)
        if extra <= 0:
            return
        device = self.decoder.device
        self.decoder.select(torch.cat([torch.arange(len(self.rows)), torch.zeros(extra, dtype=torch.long)]).to(device))
        self.rows += [None] * extra
        self.next_tokens = torch.cat([self.next_tokens, torch.zeros(extra, dtype=torch.long)])
        self._sampling_key = None

    def _compact(self) -> None:
        """With nothing waiting and at most half the rows busy, keep only the busy rows (at least two, so
        that a compiled step never needs a graph for batch 1 that it did not start with)."""
        busy = [i for i, r in enumerate(self.rows) if r is not None]
        if self.waiting or not busy or len(busy) > len(self.rows) // 2 or len(self.rows) <= 2:
            return
        if len(busy) == 1:
            busy.append(next(i for i, r in enumerate(self.rows) if r is None))
        self.decoder.select(torch.tensor(busy, device=self.decoder.device))
        self.rows = [self.rows[i] for i in busy]
        self.next_tokens = self.next_tokens[busy]
        self._sampling_key = None
