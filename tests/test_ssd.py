import pytest
import torch

from chimera.models.ssd import ssd_chunked, ssd_step


def _inputs(b=2, l=37, h=4, p=8, g=2, n=16):
    x = torch.randn(b, l, h, p)
    dt = torch.nn.functional.softplus(torch.randn(b, l, h))
    A = -torch.rand(h) * 2 - 0.1
    B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    return x, dt, A, B, C


def _recurrent(x, dt, A, B, C, state):
    ys = []
    for t in range(x.size(1)):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("with_initial_state", [False, True])
@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
def test_chunked_scan_matches_recurrent_step(with_initial_state, chunk):
    x, dt, A, B, C = _inputs()
    s0 = torch.randn(2, 4, 8, 16) if with_initial_state else torch.zeros(2, 4, 8, 16)
    y, final = ssd_chunked(x, dt, A, B, C, chunk, s0 if with_initial_state else None)
    y_ref, final_ref = _recurrent(x, dt, A, B, C, s0)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


def test_scan_split_in_two_carries_state():
    x, dt, A, B, C = _inputs(l=40)
    y, final = ssd_chunked(x, dt, A, B, C, 16)
    y1, s1 = ssd_chunked(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], 16)
    y2, s2 = ssd_chunked(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], 16, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, final, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [4, 8, 64])
def test_chunked_scan_with_resets_matches_recurrent_step(chunk):
    x, dt, A, B, C = _inputs(l=37)
    reset = torch.zeros(2, 37, dtype=torch.bool)
    reset[0, [0, 5, 6, 20]] = True  # resets at a chunk start, twice in a row, mid-chunk
    reset[1, [16, 33]] = True
    s0 = torch.randn(2, 4, 8, 16)
    y, final = ssd_chunked(x, dt, A, B, C, chunk, s0, reset)
    state, ys = s0, []
    for t in range(37):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], reset[:, t])
        ys.append(y_t)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, state, atol=1e-5, rtol=1e-5)


def test_recurrent_steps_equal_single_steps():
    """ssd_recurrent (decode / verify) = ssd_step applied position by position, with resets and history."""
    from chimera.models.ssd import ssd_recurrent

    g = torch.Generator().manual_seed(3)
    b, l, h, p, n, groups = 2, 5, 4, 3, 6, 2
    x, dt = torch.randn(b, l, h, p, generator=g), torch.rand(b, l, h, generator=g)
    A = -torch.rand(h, generator=g) * 3
    B, C = torch.randn(b, l, groups, n, generator=g), torch.randn(b, l, groups, n, generator=g)
    state0 = torch.randn(b, h, p, n, generator=g)
    reset = torch.rand(b, l, generator=g) < 0.3
    y, final, hist = ssd_recurrent(state0, x, dt, A, B, C, reset, history=True)
    state = state0
    torch.testing.assert_close(hist[0], state0)
    for t in range(l):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], reset[:, t])
        torch.testing.assert_close(y[:, t], y_t)
        torch.testing.assert_close(hist[t + 1], state)
    torch.testing.assert_close(final, state)
    y1, s1, none = ssd_recurrent(state0, x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1])
    y_t, s_t = ssd_step(state0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert none is None
    torch.testing.assert_close(y1[:, 0], y_t)
    torch.testing.assert_close(s1, s_t)


def test_in_place_decoding_step_equals_the_recurrence():
    """ssd_update_ (the decode step's in-place update) = ssd_recurrent at l = 1, state and output."""
    from chimera.models.ssd import ssd_recurrent, ssd_update_

    g = torch.Generator().manual_seed(3)
    b, h, p, n, groups = 3, 4, 8, 16, 2
    state = torch.randn(b, h, p, n, generator=g)
    x, dt = torch.randn(b, 1, h, p, generator=g), torch.rand(b, 1, h, generator=g)
    A = -torch.rand(h, generator=g)
    B, C = torch.randn(b, 1, groups, n, generator=g), torch.randn(b, 1, groups, n, generator=g)
    y_ref, final_ref, _ = ssd_recurrent(state, x, dt, A, B, C)
    s = state.clone()
    y = ssd_update_(s, x, dt, A, B, C)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, final_ref, atol=1e-5, rtol=1e-5)
