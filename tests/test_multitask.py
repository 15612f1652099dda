"""Each multi-task aggregator against its definition on a two-task toy whose task gradients are known.

L_i = g_i . theta + h_i^2: theta is shared (its task gradients are exactly g_i), h_i belongs to task i.
"""

import itertools

import pytest
import torch

from chimera.rl.multitask import aggregate, min_norm_weights, project_simplex

G1 = torch.tensor([1.0, 1.0, 0.0, 2.0])
G2 = torch.tensor([-1.0, 0.5, 0.0, -3.0])


def toy(g1=G1, g2=G2):
    theta = torch.nn.Parameter(torch.randn(4))
    h = torch.nn.Parameter(torch.tensor([0.5, -2.0]))
    losses = {"a": g1 @ theta + h[0] ** 2, "b": g2 @ theta + h[1] ** 2}
    return theta, h, losses


def run(method, g1=G1, g2=G2, **kw):
    theta, h, losses = toy(g1, g2)
    info = aggregate(losses, [theta], method, **kw)
    assert torch.allclose(h.grad, torch.tensor([1.0, -4.0])), "task-specific grads are those of the summed loss"
    return theta.grad, info


def test_sum_is_unitary_scalarization():
    g, _ = run("sum")
    assert torch.allclose(g, G1 + G2)


def test_pcgrad_projects_conflicting_gradients():
    g, info = run("pcgrad", generator=torch.Generator().manual_seed(0))
    dot = G1 @ G2
    assert dot < 0
    expect = (G1 - dot / (G2 @ G2) * G2) + (G2 - dot / (G1 @ G1) * G1)
    assert torch.allclose(g, expect, atol=1e-6)
    assert info["cosine"] < 0
    # agreeing gradients are left alone
    g, _ = run("pcgrad", g1=G1, g2=2 * G1)
    assert torch.allclose(g, 3 * G1)


def test_mgda_min_norm_point():
    g, info = run("mgda")
    a = float((G2 - G1) @ G2 / ((G1 - G2) @ (G1 - G2)))
    assert 0 < a < 1
    assert info["weight/a"] == pytest.approx(a, abs=1e-6)
    assert torch.allclose(g, a * G1 + (1 - a) * G2, atol=1e-6)
    # interior min-norm point: equal inner products with both gradients
    assert float(g @ G1) == pytest.approx(float(g @ G2), abs=1e-5)


def test_min_norm_three_tasks_matches_grid_search():
    G = torch.tensor([[1.0, 0.2, -0.5], [-0.4, 1.0, 0.3], [0.1, -0.9, 0.8]])
    w = min_norm_weights(G)
    best = min((float((torch.tensor([a, b, 1 - a - b]) @ G).norm()), a, b)
               for a, b in itertools.product(torch.linspace(0, 1, 201).tolist(), repeat=2) if a + b <= 1)
    assert float((w @ G).norm()) <= best[0] + 1e-4
    assert float(w.sum()) == pytest.approx(1.0) and (w >= 0).all()


def test_mgda_ub_uses_the_shared_representation_when_given():
    theta = torch.nn.Parameter(torch.randn(3))
    z = theta * 2  # the shared representation
    losses = [G1[:3] @ z, G2[:3] @ z]
    info = aggregate(losses, [theta], "mgda_ub", shared_repr=[z])
    w = min_norm_weights(torch.stack([G1[:3], G2[:3]]))
    assert torch.allclose(theta.grad, 2 * (w[0] * G1[:3] + w[1] * G2[:3]), atol=1e-6)
    assert info["weight/0"] == pytest.approx(float(w[0]))


def test_imtl_g_equal_projections():
    g, info = run("imtl_g")
    w = torch.tensor([info["weight/a"], info["weight/b"]])
    assert float(w.sum()) == pytest.approx(1.0)
    assert torch.allclose(g, w[0] * G1 + w[1] * G2, atol=1e-6)
    u1, u2 = G1 / G1.norm(), G2 / G2.norm()
    assert float(g @ u1) == pytest.approx(float(g @ u2), abs=1e-5)


def test_graddrop_keeps_one_sign_per_coordinate():
    draws = []
    for seed in range(400):
        g, _ = run("graddrop", generator=torch.Generator().manual_seed(seed))
        draws.append(g)
    D = torch.stack(draws)
    # coordinate 0: +1 vs -1 -> P = 0.5, keeps exactly one of them
    assert set(D[:, 0].tolist()) <= {1.0, -1.0}
    # coordinate 1: both positive -> P = 1, both always kept
    assert torch.allclose(D[:, 1], torch.full((400,), 1.5))
    # coordinate 3: +2 vs -3 -> P = (1 - 1/5) / 2 = 0.4: the positive one is kept with probability 0.4
    assert set(D[:, 3].tolist()) <= {2.0, -3.0}
    assert float((D[:, 3] > 0).float().mean()) == pytest.approx(0.4, abs=0.08)


def test_rlw_softmax_of_normal_weights():
    g, info = run("rlw", generator=torch.Generator().manual_seed(3))
    w = torch.softmax(torch.randn(2, generator=torch.Generator().manual_seed(3)), 0)
    assert info["weight/a"] == pytest.approx(float(w[0]))
    assert torch.allclose(g, w[0] * G1 + w[1] * G2, atol=1e-6)


def test_cagrad_solves_its_dual_and_reduces_to_the_mean_at_c0():
    c = 0.5
    g, info = run("cagrad", cagrad_c=c)
    G = torch.stack([G1, G2])
    g0 = G.mean(0)

    def dual(a):
        gw = a * G1 + (1 - a) * G2
        return float(gw @ g0 + c * g0.norm() * gw.norm())

    a_grid = min(torch.linspace(0, 1, 10001).tolist(), key=dual)
    assert info["weight/a"] == pytest.approx(a_grid, abs=2e-3)
    gw = info["weight/a"] * G1 + info["weight/b"] * G2
    expect = (g0 + c * g0.norm() / gw.norm() * gw) / (1 + c**2)
    assert torch.allclose(g, expect, atol=1e-5)
    g, _ = run("cagrad", cagrad_c=0.0)
    assert torch.allclose(g, g0, atol=1e-6)


def test_project_simplex():
    w = project_simplex(torch.tensor([0.9, 0.8, -1.0], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([0.55, 0.45, 0.0], dtype=torch.float64))


def test_unknown_method_is_named():
    theta, _, losses = toy()
    with pytest.raises(ValueError, match=r"unknown multi-task aggregator 'pcgard'.*pcgrad"):
        aggregate(losses, [theta], "pcgard")


def test_mgda_ub_without_a_shared_representation_is_refused():
    theta, _, losses = toy()
    with pytest.raises(ValueError, match="mgda_ub needs shared_repr"):
        aggregate(losses, [theta], "mgda_ub")


def _cagrad_objective(w, G, c):
    g0 = G.mean(0)
    return float(w @ (G @ g0) + c * g0.norm() * (w @ G).norm())


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1.0, 10.0, 30.0, 100.0, 1e3])
def test_cagrad_weights_do_not_depend_on_the_gradients_scale(scale):
    """The review's case: at 10x / 30x the old step size moved the weight on task a from 0.84 to 0.73 / 0.18.
    On 3 tasks too, the weights are those of scale 1 and reach the grid-search optimum of the dual."""
    from chimera.rl.multitask import cagrad_weights

    torch.manual_seed(0)
    G2t = torch.stack([G1, G2])
    G3t = torch.tensor([[1.0, 0.2, -0.5, 0.3], [-0.4, 1.0, 0.3, 0.0], [0.1, -0.9, 0.8, -0.2]])
    for G in (G2t, G3t):
        w1, ws = cagrad_weights(G, 0.5), cagrad_weights(G * scale, 0.5)
        torch.testing.assert_close(ws, w1, atol=1e-5, rtol=0)
    grid = [torch.tensor([a, b, 1 - a - b]) for a, b in itertools.product(torch.linspace(0, 1, 101).tolist(), repeat=2)
            if a + b <= 1]
    best = min(_cagrad_objective(w, G3t, 0.5) for w in grid)
    assert _cagrad_objective(cagrad_weights(G3t * scale, 0.5), G3t, 0.5) <= best + 1e-4
