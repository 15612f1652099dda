"""Mamba-2 state-space duality (SSD): the chunked parallel scan and the one-step recurrence.

Notation (Mamba-2 paper): b batch, l length, c chunks, L chunk length, h heads, p head dim,
g groups of B/C, n state size. The recurrence per head is

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T        (p, n)
    y_t     = state_t C_t                                            (p,)

The chunked form computes the same thing with matmuls: exact attention-like mixing inside a
chunk, and a short recurrence over chunk boundary states. Everything runs in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum(x[..., j+1 : i+1]) for i >= j, else -inf; summed directly (a cumsum of masked
    x), not as a difference of long running sums, which would lose precision."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # (..., T, T): x[..., k, j] = x_k
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    out = torch.cumsum(x.masked_fill(~strict, 0.0), dim=-2)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~causal, float("-inf"))


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Expand grouped B or C (..., g, n) to one per head (..., h, n)."""
    g = t.size(-2)
    return t if g == num_heads else t.repeat_interleave(num_heads // g, dim=-2)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan. x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n) -> y (b,l,h,p), state (b,h,p,n).

    Inside the scan, tensors are laid out (b, g, r, c, L, .) with r = h / g heads per group of B / C
    and c chunks of L positions, so every contraction is one batched matmul and the C.B scores are
    computed once per group, not once per head. ``reset`` (b, l) bool marks positions where a new
    sequence (episode) starts: the state carried into such a position is dropped, exactly as if it had
    been zeroed there (every decay term whose span crosses a reset is masked: positions compare their
    reset counts).
    """
    b, l, h, p = x.shape
    g, n = B.size(2), B.size(3)
    r = h // g
    pad = (-l) % chunk_size
    if pad:
        # Zero dt on padding: no decay and no input, so the final state is unchanged.
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, L = (l + pad) // chunk_size, chunk_size
    dt = dt.float()
    xdt = (x.float() * dt[..., None]).view(b, c, L, g, r, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, L, p)
    Bg = B.float().view(b, c, L, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, L, n)
    Cg = C.float().view(b, c, L, g, n).permute(0, 3, 1, 2, 4)
    A_cs = torch.cumsum((dt * A.float()).view(b, c, L, g, r).permute(0, 3, 4, 1, 2), dim=-1)  # (b, g, r, c, L)

    # exp(sum of A dt over (j, i]) for j <= i inside a chunk, 0 above the diagonal (masked before exp)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    diff = A_cs[..., :, None] - A_cs[..., None, :]  # (b, g, r, c, L, L)
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs)  # (b, g, r, c, L)
    decay_out = torch.exp(A_cs)  # (b, g, r, c, L): from each chunk's start to each position
    # between[z, w] = sum of A dt over chunks w .. z-1 (-inf for w > z)
    between = segsum(F.pad(A_cs[..., -1], (1, 0)))  # (b, g, r, c+1, c+1)
    chunk_mask = torch.ones(c + 1, c + 1, dtype=torch.bool, device=x.device).tril()
    if reset is not None:
        rs = F.pad(reset.float(), (0, pad)).view(b, c, L)
        R = torch.cumsum(rs.view(b, -1), dim=1).view(b, c, L)  # resets up to and including each position
        R_start = R[..., :1] - rs[..., :1]  # resets before each chunk's first position
        causal = causal & (R[..., :, None] == R[..., None, :])[:, None, None]
        decay_to_end = decay_to_end * (R == R[..., -1:])[:, None, None]
        decay_out = decay_out * (R == R_start)[:, None, None]
        crossed = F.pad((R[..., -1] > R_start[..., 0]).float(), (1, 0)).cumsum(1)  # (b, c+1)
        chunk_mask = chunk_mask & (crossed[:, :, None] == crossed[:, None, :])[:, None, None]
    decay = torch.exp(diff.masked_fill(~causal, float("-inf")))

    # 1. within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(sum A dt over (j, i]) x_j dt_j
    scores = Cg @ Bg.transpose(-1, -2)  # (b, g, c, L, L), one per group
    y = (scores[:, :, None] * decay) @ xdt  # (b, g, r, c, L, p)

    # 2. each chunk's contribution to the state at its end: (x dt decayed to the end)^T B
    chunk_states = (xdt * decay_to_end[..., None]).transpose(-1, -2) @ Bg[:, :, None]  # (b, g, r, c, p, n)

    # 3. recurrence over chunk boundaries, starting from the initial state
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
    init = initial_state.float().view(b, g, r, 1, p, n)
    states = torch.cat([init, chunk_states], dim=3).flatten(-2)  # (b, g, r, c+1, p*n)
    states = torch.exp(between.masked_fill(~chunk_mask, float("-inf"))) @ states  # state entering each chunk
    states = states.view(b, g, r, c + 1, p, n)
    states, final_state = states[:, :, :, :-1], states[:, :, :, -1]

    # 4. the state entering each chunk, read out by C and decayed to each position
    y = y + (Cg[:, :, None] @ states.transpose(-1, -2)) * decay_out[..., None]  # (b, g, r, c, L, p)
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * L, h, p)
    return y[:, :l], final_state.reshape(b, h, p, n)


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step. state (b,h,p,n), x (b,h,p), dt (b,h), B/C (b,g,n) -> y (b,h,p), new state.
    ``reset`` (b,) drops the incoming state of the rows where a new sequence starts."""
    h = x.size(1)
    if reset is not None:
        state = state * (~reset.bool()).float()[:, None, None, None]
    B, C = _heads(B.float(), h), _heads(C.float(), h)  # (b, h, n)
    dt = dt.float()
    dA = torch.exp(dt * A.float())  # (b, h)
    state = state * dA[..., None, None] + (x.float() * dt[..., None])[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd_update_(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor) -> torch.Tensor:
    """One decoding step with the state updated in place (= ``ssd_recurrent`` at l = 1): state (b,h,p,n)
    contiguous, x (b,1,h,p), dt (b,1,h), B/C (b,1,g,n) -> y (b,1,h,p). The decay and the input's outer
    product go into the state's own memory (a scale, then a batched rank-1 update) and the read-out is a
    batched matrix-vector product: three passes over the state and no state-sized temporaries, which
    at decode batch sizes are most of a Mamba layer's step."""
    b, _, h, p = x.shape
    n = state.size(-1)
    dt = dt[:, 0].float()
    state.mul_(torch.exp(dt * A.float())[..., None, None])
    s = state.view(b * h, p, n)
    s.baddbmm_((x[:, 0].float() * dt[..., None]).reshape(b * h, p, 1), _heads(B[:, 0].float(), h).reshape(b * h, 1, n))
    return torch.bmm(s, _heads(C[:, 0].float(), h).reshape(b * h, n, 1)).view(b, 1, h, p)


def ssd_recurrent(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    reset: torch.Tensor | None = None,
    history: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``l`` recurrent steps (= ``ssd_step`` applied l times) for decoding and speculative verification.
    state (b,h,p,n), x (b,l,h,p), dt (b,l,h), B/C (b,l,g,n) -> y (b,l,h,p), final state and, with
    ``history``, every state (l+1,b,h,p,n) with ``[0]`` the incoming one. The decay, the input outer
    products and the read-out are batched over positions; only the state update runs position by position."""
    h, l = x.size(2), x.size(1)
    dt = dt.float()
    dA = torch.exp(dt * A.float())  # (b, l, h)
    if reset is not None:
        dA = dA * (~reset.bool()).float()[..., None]
    Bh, Ch = _heads(B.float(), h), _heads(C.float(), h)  # (b, l, h, n)
    dBx = (x.float() * dt[..., None])[..., None] * Bh[:, :, :, None, :]  # (b, l, h, p, n)
    if l == 1 and not history:  # one decoding step
        final = state * dA[:, 0, :, None, None] + dBx[:, 0]
        return torch.einsum("bhpn,bhn->bhp", final, Ch[:, 0])[:, None], final, None
    states = [state]
    for t in range(l):
        states.append(states[-1] * dA[:, t, :, None, None] + dBx[:, t])
    stacked = torch.stack(states)
    y = torch.einsum("lbhpn,blhn->blhp", stacked[1:], Ch)
    return y, states[-1], stacked if history else None
