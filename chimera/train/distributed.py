"""Data-parallel training under torchrun: DDP or FSDP2 on a device mesh, shared by every learner.

A learner calls ``init`` (it reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; outside torchrun it gets a
world of one and nothing changes), ``parallelize`` on its built model, ``micro_steps`` for its share of
each global batch, and the gather / load helpers for checkpoints. The model file knows nothing of this
(torchtitan's rule: parallelism is a pass applied to a built model).

The global batch is the single-process one, ``grad_accum`` micro-batches; under W processes each rank
runs ``grad_accum / W`` whole micro-batches and divides its loss by that count, so the averaged gradient
is the single-process gradient (a micro-batch is never split: its loss is a mean over its own tokens).
Checkpoints hold full (gathered) tensors in the single-process format, so they resume at any world size.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Parallel = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    parallel: Literal["none", "ddp", "fsdp"] = "none"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, prints, plots and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ALONE = World()
"""One process: the default world of code that also runs data-parallel."""


def init(parallel: Parallel = "ddp") -> World:
    """The world torchrun started this process in (a process group on gloo, the CPU backend), or a
    world of one when WORLD_SIZE is unset or 1."""
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel={parallel!r} (expected 'ddp' or 'fsdp')")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), parallel=parallel)


def refuse_torchrun(command: str) -> None:
    """Stop a learner that has no data-parallel path when torchrun started several processes (each would
    train alone and write its own run)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        from chimera.config import ConfigError

        raise ConfigError(f"{command} does not run data-parallel yet, and torchrun started {size} processes "
                          f"(each would train alone); run it as one process (train-lm, distill, clrs train and "
                          f"post-train run under torchrun; docs/SCALING.md)")


def shutdown(world: World, clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first waits at a barrier, so none
    leaves while rank 0 is still saving (a rank that exits with the group alive, or with collective
    work still referenced, can abort in gloo's threads at interpreter exit: SIGABRT, "terminate called
    without an active exception"); then the garbage of the run (DDP's reducer holds the group) is
    collected before the group is destroyed. After an error there is no barrier: the other ranks may
    never reach it."""
    if not (world.distributed and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def session(parallel: Parallel = "ddp") -> Iterator[World]:
    """``init``, then ``shutdown`` on the way out: with the barrier after a clean finish, without after an error."""
    world = init(parallel)
    try:
        yield world
    except BaseException:
        shutdown(world, clean=False)
        raise
    shutdown(world)


def micro_steps(grad_accum: int, world: World, batch_size: int | None = None) -> range:
    """The micro-batches of each global batch this rank runs: a contiguous block of grad_accum / W."""
    if grad_accum % world.size:
        hint = ""
        if batch_size is not None and batch_size % world.size == 0:
            hint = (f" (--data.batch-size {batch_size // world.size} --data.grad-accum {grad_accum * world.size} "
                    f"keeps the global batch at {batch_size * grad_accum} sequences)")
        raise ValueError(f"data.grad_accum={grad_accum} does not divide among {world.size} processes: each process "
                         f"runs whole micro-batches of the global batch, so grad_accum must be a multiple of the "
                         f"world size{hint}")
    k = grad_accum // world.size
    return range(world.rank * k, (world.rank + 1) * k)


def parallelize(model: nn.Module, world: World, blocks: Callable[[nn.Module], list[nn.Module]]) -> nn.Module:
    """The module to train: ``model`` itself (one process), wrapped in DDP, or sharded in place by FSDP2
    ``fully_shard`` per block then at the root. Python attributes tagged on parameters (``_no_weight_decay``)
    survive sharding. Build the optimizer after this call, from ``model``'s parameters."""
    if not world.distributed:
        return model
    if world.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers such as MoE loads are reduced by the learner, not copied from rank 0 at every forward
        # (torch >= 2.13 names this forward_sync_buffers; the buffers agree at the start either way)
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
            return DDP(model, forward_sync_buffers=False)
        return DDP(model, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    tags = {name: dict(vars(p)) for name, p in model.named_parameters()}
    mesh = init_device_mesh("cpu", (world.size,))
    for block in blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name, p in model.named_parameters():
        for key, value in tags[name].items():
            setattr(p, key, value)
    return model


def decorrelate_rng(world: World, seed: int, step: int) -> None:
    """Give ranks other than 0 their own torch generator stream from here on (rank 0 keeps the one-process
    stream), so random draws during training (NVFP4's stochastic rounding) are independent across ranks
    instead of repeating rank 0's. Call it after the model is built (its initialisation must agree) and
    after a resume (which restores rank 0's state everywhere)."""
    if world.rank > 0:
        torch.manual_seed(hash((seed, world.rank, step)) % 2**63)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the module is the model)."""
    return model.module if hasattr(model, "require_backward_grad_sync") else model


@contextlib.contextmanager
def grad_sync(model: nn.Module, world: World, sync: bool) -> Iterator[None]:
    """Accumulate this micro-batch's gradient locally (``sync=False``) or reduce it across ranks."""
    if not world.distributed or sync:
        if world.parallel == "fsdp":
            model.set_requires_gradient_sync(True)
        yield
    elif world.parallel == "ddp":
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        yield


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(t: Any) -> Any:
    return t.full_tensor() if _is_dtensor(t) else t


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm over all ranks' shards; returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    total = _full(total)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def all_reduce(t: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """Sum (or mean) ``t`` over ranks in place; a no-op in one process."""
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if op == "mean":
            t /= world.size
    return t


def all_reduce_many(tensors: list[torch.Tensor], world: World) -> None:
    """Sum each tensor over ranks in place, in one collective."""
    if world.distributed and tensors:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))


def sum_gradients(model: nn.Module, world: World) -> None:
    """Sum every parameter's gradient over ranks (a learner whose ranks compute different terms of one loss,
    e.g. different tasks: then no rank's term is averaged away); a parameter no rank gave a gradient keeps
    None, as in one process."""
    if not world.distributed:
        return
    params = list(model.parameters())
    has = torch.tensor([float(p.grad is not None) for p in params])
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    all_reduce_many([*grads, has], world)
    for p, g, h in zip(params, grads, has.tolist()):
        p.grad = g if h > 0 else None


def total(t: torch.Tensor, world: World, op: Literal["sum", "max"] = "sum") -> torch.Tensor:
    """The sum (or max) of ``t`` over ranks as a new tensor without grad; ``t`` itself in one process. For
    normalisers and statistics of a batch whose rows are split among the ranks."""
    if not world.distributed:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out


def block(n: int, world: World) -> range:
    """This rank's contiguous block of ``n`` items, the blocks in rank order as even as they can be (the first
    ``n % W`` ranks take one more; a rank may get none when n < W)."""
    k, extra = divmod(n, world.size)
    lo = world.rank * k + min(world.rank, extra)
    return range(lo, lo + k + (world.rank < extra))


def all_gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with full tensors (a collective under FSDP: every rank calls it)."""
    return {k: _full(v) for k, v in unwrap(model).state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into the model, sharding them where its parameters are sharded."""
    from torch.distributed.tensor import distribute_tensor

    inner = unwrap(model)
    own = inner.state_dict()
    state = {k: distribute_tensor(v, own[k].device_mesh, own[k].placements) if _is_dtensor(own.get(k)) else v
             for k, v in state.items()}
    inner.load_state_dict(state)


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with full tensors in place of shards (a collective under FSDP)."""
    sd = opt.state_dict()
    return {**sd, "state": {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()}}


def load_full_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what ``full_optimizer_state`` returned, sharding each state tensor as its parameter is."""
    from torch.distributed.tensor import distribute_tensor

    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            if not _is_dtensor(p):
                continue
            s = opt.state.get(p, {})
            for k, v in s.items():
                if isinstance(v, torch.Tensor) and not _is_dtensor(v) and v.shape == p.shape:
                    s[k] = distribute_tensor(v, p.device_mesh, p.placements)


class Gatherer:
    """Rank 0's unsharded copy of the model, for evaluation and saving (``model`` itself unless FSDP)."""

    def __init__(self, model: nn.Module, world: World):
        self.world = world
        self.copy = copy.deepcopy(model) if world.parallel == "fsdp" and world.main else None

    def __call__(self, model: nn.Module) -> nn.Module | None:
        """The full model on rank 0 (None on the others); a collective under FSDP."""
        if self.world.parallel != "fsdp":
            return unwrap(model) if self.world.main else None
        state = full_state_dict(model)
        if self.copy is None:
            return None
        self.copy.load_state_dict(state)
        self.copy.train(model.training)
        return self.copy


def start_run(world: World, settings, config: dict[str, Any], resume: str | None):
    """``Run.start`` on rank 0 (None elsewhere) and the checkpoint it resumes from, read on every rank."""
    from chimera.runs import CheckpointManager, Run

    if not world.distributed:
        return Run.start(settings, config, resume)
    run = ckpt = None
    where: tuple[str, str] | str | None = None
    if world.main:
        try:
            run, ckpt = Run.start(settings, config, resume)
            where = (str(run.checkpoints.folder), str(run.checkpoints.path_for(ckpt["step"]))) if ckpt else None
        except Exception as e:
            broadcast(f"{type(e).__name__}: {e}", world)
            raise
    where = broadcast(where, world)
    if isinstance(where, str):
        raise SystemExit(f"rank {world.rank}: rank 0 could not start the run ({where})")
    if not world.main and where is not None:
        ckpt = CheckpointManager(where[0]).load(where[1])
    return run, ckpt
