"""What one training step costs: wall time of every step, and peak memory on a few sampled steps.

Peak memory is the most bytes the step's own tensors held at once above what was allocated when the
step began (activations, retained graphs, the (tasks, P) gradient matrix of the specialised
aggregators), so methods compare on what they add, not on the model they share. On CUDA it is read
from the allocator's peak counter; on the CPU, which has no such counter, from the profiler's
allocation events (alloc +n, free -n, in time order). Profiling slows a step down, so the sampled
steps are not timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def _cpu_peak(events) -> int:
    """Largest running sum of the profiler's ``[memory]`` events (bytes above the start)."""
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    cur = peak = 0
    for _, n in mem:
        cur += n
        peak = max(peak, cur)
    return peak


@dataclass
class StepMeter:
    """Records seconds per step for every step and peak bytes for the steps in ``memory_steps``.

    Use it around whatever a step is, in any loop::

        meter = StepMeter()
        for batch in data:
            with meter.step():
                opt.zero_grad(); aggregate(losses(batch), shared, method); opt.step()
        meter.summary()  # {"seconds_per_step": ..., "peak_bytes": ..., ...}
    """

    device: str | torch.device = "cpu"
    memory_steps: tuple[int, ...] = (2, 5)
    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    count: int = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        dev = torch.device(self.device)
        index, self.count = self.count, self.count + 1
        if index in self.memory_steps:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                start = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                yield
                torch.cuda.synchronize(dev)
                self.peaks.append(torch.cuda.max_memory_allocated(dev) - start)
            else:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    yield
                self.peaks.append(_cpu_peak(prof.profiler.kineto_results.events()))
            return
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        yield
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.seconds.append(time.perf_counter() - t0)

    def summary(self) -> dict[str, float]:
        """Median seconds per timed step, the largest sampled peak (bytes), and how many of each."""
        if not self.seconds and not self.peaks:
            raise ValueError("StepMeter.summary: no step was recorded; wrap each training step in `with meter.step():`")
        return {"seconds_per_step": statistics.median(self.seconds) if self.seconds else float("nan"),
                "peak_bytes": float(max(self.peaks)) if self.peaks else float("nan"),
                "timed_steps": float(len(self.seconds)), "memory_steps": float(len(self.peaks))}


def interleaved_costs(steps: dict[str, Callable[[], object]], rounds: int = 100,
                      memory_steps: tuple[int, ...] = (2, 5)) -> dict[str, dict[str, float]]:
    """``StepMeter.summary`` of each named step function, run round-robin ``rounds`` times, so that other
    load on a shared machine falls on every method alike (runs measured one after another see different load)."""
    meters = {name: StepMeter(memory_steps=memory_steps) for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            with meters[name].step():
                fn()
    return {name: m.summary() for name, m in meters.items()}
