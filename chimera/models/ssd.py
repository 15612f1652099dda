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
    """out[..., i, j] = sum(x[..., j+1 : i+1]) for i >= j, else -inf. Stable: cumsum of masked x."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # (..., T, T): x[..., k, j] = x_k
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~strict, 0.0)
    out = torch.cumsum(x, dim=-2)
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

    ``reset`` (b, l) bool marks positions where a new sequence (episode) starts: the state carried
    into such a position is dropped, exactly as if it had been zeroed there. Implemented by
    masking every decay term whose span crosses a reset (positions compare their reset counts).
    """
    b, l, h, p = x.shape
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    B, C = _heads(B, h), _heads(C, h)  # (b, l, h, n)
    pad = (-l) % chunk_size
    if pad:
        # Zero dt on padding: no decay and no input, so the final state is unchanged.
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c, L = (l + pad) // chunk_size, chunk_size
    xdt = (x * dt[..., None]).view(b, c, L, h, p)
    B = B.view(b, c, L, h, -1)
    C = C.view(b, c, L, h, -1)
    Adt = (dt * A.float()).view(b, c, L, h).permute(0, 3, 1, 2)  # (b, h, c, L)
    A_cs = torch.cumsum(Adt, dim=-1)

    decay = torch.exp(segsum(Adt))  # (b, h, c, L, L)
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs)  # (b, h, c, L)
    chunk_decay = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    decay_out = torch.exp(A_cs)  # (b, h, c, L)
    if reset is not None:
        rs = F.pad(reset.float(), (0, pad)).view(b, c, L)
        R = torch.cumsum(rs.view(b, -1), dim=1).view(b, c, L)  # resets up to and including each position
        R_start = R[..., :1] - rs[..., :1]  # resets before each chunk's first position
        decay = decay * (R[..., :, None] == R[..., None, :])[:, None]
        decay_to_end = decay_to_end * (R == R[..., -1:])[:, None]
        decay_out = decay_out * (R == R_start)[:, None]
        crossed = F.pad((R[..., -1] > R_start[..., 0]).float(), (1, 0)).cumsum(1)  # (b, c+1)
        chunk_decay = chunk_decay * (crossed[:, :, None] == crossed[:, None, :])[:, None]

    # 1. within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(sum A dt over (j, i]) x_j dt_j
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * decay  # (b, h, c, L, L)
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. each chunk's contribution to the state at its end
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, xdt)  # (b, c, h, p, n)

    # 3. recurrence over chunk boundaries, starting from the initial state
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, B.size(-1), dtype=x.dtype, device=x.device)
    states = torch.cat([initial_state.float()[:, None], chunk_states], dim=1)  # (b, c+1, h, p, n)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    states, final_state = states[:, :-1], states[:, -1]

    # 4. the state entering each chunk, read out by C and decayed to each position
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, decay_out)
    return y.reshape(b, c * L, h, p)[:, :l], final_state


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
