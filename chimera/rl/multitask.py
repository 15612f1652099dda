"""Multi-task gradient aggregation behind one interface: ``aggregate(task_losses, shared_params)``.

``sum`` is unitary scalarization (the default and usually as good as anything, Kurin et al. 2022);
the others are the specialised multi-task optimizers it is compared against:

- ``pcgrad`` (Yu et al. 2020): each task gradient is projected onto the normal plane of every
  other task gradient it conflicts with (negative dot product), in random order, then summed.
- ``mgda`` (Sener & Koltun 2018): the minimum-norm point of the convex hull of the task gradients
  with respect to the shared parameters (Frank-Wolfe, exact line search); ``mgda_ub``, their upper
  bound, takes the weights from the gradients with respect to ``shared_repr`` (the shared
  representation, required) instead, which is one backward pass cheaper per task.
- ``imtl_g`` (Liu et al. 2021): weights summing to one that make the aggregate's projection on
  every unit task gradient equal.
- ``graddrop`` (Chen et al. 2020): per coordinate, keep the positive or the negative task
  gradients with probability P = (1 + sum g / sum |g|) / 2.
- ``rlw`` (Lin et al. 2021): the losses weighted by softmax of a standard normal draw.
- ``cagrad`` (Liu et al. 2021): the direction maximising the worst task's improvement within a ball
  of radius c * |g0| around the mean gradient g0, rescaled by 1 / (1 + c^2). Its dual is solved on
  the Gram matrix divided by the squared mean gradient norm, as the official code does: the argmin
  is scale-free, and so are the solver's steps.

``aggregate`` writes ``.grad`` of every parameter reached by the losses: the shared parameters
get the aggregated gradient, the others (task-specific encoders and heads, which only one loss
reaches) the gradient of the summed loss. It returns the task weights or cosines it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch

Method = Literal["sum", "pcgrad", "mgda", "mgda_ub", "imtl_g", "graddrop", "rlw", "cagrad"]
METHODS: tuple[str, ...] = ("sum", "pcgrad", "mgda", "mgda_ub", "imtl_g", "graddrop", "rlw", "cagrad")


def task_gradients(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """(tasks, P) matrix of flattened gradients of each loss with respect to ``params``."""
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows)


# ---- the rules, on a (tasks, P) gradient matrix -----------------------------------------------------
def pcgrad(G: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    out = G.clone()
    k = G.size(0)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i:
                continue
            dot = out[i] @ G[j]
            if dot < 0:
                out[i] -= dot / (G[j] @ G[j]).clamp_min(1e-20) * G[j]
    return out.sum(0)


def _min_norm_2(v11: float, v12: float, v22: float) -> float:
    """argmin over a in [0, 1] of |a x1 + (1 - a) x2|^2 from the Gram entries."""
    if v12 >= v11:
        return 1.0
    if v12 >= v22:
        return 0.0
    return (v22 - v12) / (v11 + v22 - 2 * v12)


def min_norm_weights(G: torch.Tensor, iters: int = 250, tol: float = 1e-10) -> torch.Tensor:
    """Weights on the simplex minimising |sum w_i g_i| (Frank-Wolfe with exact line search)."""
    M = (G @ G.t()).double()
    k = M.size(0)
    if k == 1:
        return torch.ones(1, dtype=G.dtype)
    if k == 2:
        a = _min_norm_2(M[0, 0].item(), M[0, 1].item(), M[1, 1].item())
        return torch.tensor([a, 1 - a], dtype=G.dtype)
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    for _ in range(iters):
        t = int(torch.argmin(M @ w))
        v11 = float(w @ M @ w)
        v12 = float(w @ M[:, t])
        v22 = float(M[t, t])
        gamma = _min_norm_2(v11, v12, v22)  # weight kept on the current point
        new = gamma * w
        new[t] += 1 - gamma
        if float((new - w).abs().sum()) < tol:
            w = new
            break
        w = new
    return w.to(G.dtype)


def imtl_g_weights(G: torch.Tensor) -> torch.Tensor:
    """alpha_{2:k} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum alpha_{2:k}; D rows g_1 - g_i, U rows u_1 - u_i."""
    k = G.size(0)
    if k == 1:
        return torch.ones(1, dtype=G.dtype)
    Gd = G.double()
    U = Gd / Gd.norm(dim=1, keepdim=True).clamp_min(1e-20)
    D = Gd[:1] - Gd[1:]
    Ud = U[:1] - U[1:]
    rest = Gd[0] @ Ud.t() @ torch.linalg.pinv(D @ Ud.t())
    return torch.cat([1 - rest.sum(0, keepdim=True), rest]).to(G.dtype)


def graddrop(G: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    P = 0.5 * (1 + G.sum(0) / G.abs().sum(0).clamp_min(1e-20))
    U = torch.rand(P.shape, generator=generator, dtype=G.dtype)
    keep = ((P > U) & (G > 0)) | ((P < U) & (G < 0))
    return (G * keep).sum(0)


def rlw_weights(k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.softmax(torch.randn(k, generator=generator), 0)


def cagrad_weights(G: torch.Tensor, c: float, iters: int = 500) -> torch.Tensor:
    """argmin over the simplex of w^T G g0 + c |g0| |G^T w| (projected gradient descent; convex), on the
    Gram matrix normalised by the squared mean gradient norm: scaling G scales the objective only.
    The k-dimensional solve runs in NumPy: per-iteration tensor overheads made it 10x a LeNet step."""
    M = (G @ G.t()).double().cpu().numpy()
    M = M / max(float(np.sqrt(np.clip(np.diag(M), 0, None)).mean() ** 2), 1e-300)
    k = M.shape[0]
    b = M.mean(1)  # G g0 with g0 = mean gradient
    radius = c * np.sqrt(max(float(M.mean()), 0.0))
    w = np.full(k, 1.0 / k)
    lr = 1.0 / (np.sqrt(np.diag(M).max()) + 1e-12)
    for _ in range(iters):
        Mw = M @ w
        grad = b + radius * Mw / np.sqrt(w @ Mw + 1e-12)  # d/dw of w.b + radius sqrt(w^T M w + 1e-12)
        new = _project_simplex(w - lr * grad)
        done = np.abs(new - w).max() < 1e-13
        w = new
        if done:
            break
    return torch.from_numpy(w).to(G.dtype)


def _project_simplex(v: np.ndarray) -> np.ndarray:
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    rho = int(np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0].max())
    return np.clip(v - css[rho] / (rho + 1), 0, None)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto {w >= 0, sum w = 1} (Duchi et al. 2008)."""
    return torch.from_numpy(_project_simplex(v.detach().double().cpu().numpy())).to(v.dtype)


def cagrad(G: torch.Tensor, c: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    w = cagrad_weights(G, c)
    g0 = G.mean(0)
    gw = w @ G
    lam = c * g0.norm() / gw.norm().clamp_min(1e-20)
    return (g0 + lam * gw) / (1 + c**2), w


# ---- the interface ------------------------------------------------------------------------------------
def aggregate(task_losses: dict[str, torch.Tensor] | Sequence[torch.Tensor], shared_params: Iterable[torch.Tensor],
              method: str = "sum", *, shared_repr: Sequence[torch.Tensor] | None = None, cagrad_c: float = 0.5,
              generator: torch.Generator | None = None) -> dict[str, float]:
    """Backpropagate several task losses, combining their gradients on ``shared_params`` by ``method``.

    Sets ``.grad`` (accumulating, like ``backward``) and returns per-task weights / diagnostics.
    """
    if method not in METHODS:
        raise ValueError(f"unknown multi-task aggregator {method!r}; choose one of {', '.join(METHODS)}")
    names = list(task_losses) if isinstance(task_losses, dict) else [str(i) for i in range(len(task_losses))]
    losses = list(task_losses.values()) if isinstance(task_losses, dict) else list(task_losses)
    shared = [p for p in shared_params if p.requires_grad]
    k = len(losses)
    if method == "sum" or k == 1 or not shared:
        sum(losses).backward()
        return {}
    info: dict[str, float] = {}
    if method == "mgda_ub" and not shared_repr:
        raise ValueError("mgda_ub needs shared_repr (the shared representation the task heads read); "
                         "without it use 'mgda', the min-norm point of the gradients on the shared parameters")
    if method in ("rlw", "mgda", "mgda_ub", "imtl_g"):  # loss weighting
        if method == "rlw":
            w = rlw_weights(k, generator)
        elif method in ("mgda", "mgda_ub"):
            w = min_norm_weights(task_gradients(losses, list(shared_repr) if method == "mgda_ub" else shared))
        else:
            w = imtl_g_weights(task_gradients(losses, shared))
        g = task_gradients([sum(wi * loss for wi, loss in zip(w.tolist(), losses))], shared)[0]
    else:
        G = task_gradients(losses, shared)
        if k == 2:
            info["cosine"] = float(torch.nn.functional.cosine_similarity(G[0], G[1], dim=0))
        if method == "pcgrad":
            g = pcgrad(G, generator)
        elif method == "graddrop":
            g = graddrop(G, generator)
        else:
            g, w = cagrad(G, cagrad_c)
    if method in ("rlw", "mgda", "mgda_ub", "imtl_g", "cagrad"):
        info.update({f"weight/{n}": float(wi) for n, wi in zip(names, w)})
    before = [p.grad.clone() if p.grad is not None else None for p in shared]
    sum(losses).backward()  # task-specific parameters: the summed loss
    offset = 0
    for p, old in zip(shared, before):
        n = p.numel()
        new = g[offset:offset + n].view_as(p).to(p.dtype)
        p.grad = new if old is None else old + new
        offset += n
    return info
