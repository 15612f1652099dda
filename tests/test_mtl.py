"""The multi-task aggregators on hand-computed three-task cases, the step-cost meter, the Multi-digit
builder (labels recovered from the pixels it overlays) and the supervised multi-task loop.

Toy: L_i = g_i . theta + h_i^2, so the task gradients on the shared theta are exactly the rows g_i of G
and every task-specific h_i must receive the summed loss's gradient 2 h_i. (The two-task cases are in
test_multitask.py.)
"""

import numpy as np
import pytest
import torch

from chimera.mtl import MTLConfig, StepMeter, aggregate, build_multidigit, overlay, train_multidigit
from chimera.mtl.digits import load_digits_array

H = torch.tensor([1.0, 2.0, 3.0])


def run3(G, method, **kw):
    theta = torch.nn.Parameter(torch.zeros(G.size(1)))
    h = torch.nn.Parameter(H.clone())
    losses = {n: g @ theta + h[i] ** 2 for i, (n, g) in enumerate(zip("abc", G))}
    info = aggregate(losses, [theta], method, **kw)
    torch.testing.assert_close(h.grad, 2 * H)  # task-specific parameters: the summed loss
    return theta.grad, info


CONFLICT = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])  # only tasks a and b conflict (a . b = -1)
DIAG = torch.diag(torch.tensor([1.0, 2.0, 2.0]))  # orthogonal gradients of norms 1, 2, 2


def test_sum_of_three_tasks():
    g, _ = run3(CONFLICT, "sum")
    torch.testing.assert_close(g, torch.tensor([0.0, 2.0]))


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_three_tasks_by_hand(seed):
    # a -> a - (a.b / |b|^2) b = (0.5, 0.5); b -> b - (a.b / |a|^2) a = (0, 1); c conflicts with no one.
    g, _ = run3(CONFLICT, "pcgrad", generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(g, torch.tensor([0.5, 2.5]))


def test_mgda_three_orthogonal_tasks_weights_inverse_squared_norms():
    # min |sum w_i a_i e_i|^2 on the simplex: w_i ~ 1 / a_i^2 -> (1, 1/4, 1/4) / 1.5
    g, info = run3(DIAG, "mgda")
    assert [info[f"weight/{n}"] for n in "abc"] == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-6)
    torch.testing.assert_close(g, torch.tensor([2 / 3, 1 / 3, 1 / 3]))


def test_mgda_ub_three_tasks_weights_from_the_representation():
    theta = torch.nn.Parameter(torch.zeros(3))
    z = 2 * theta  # the shared representation: d z / d theta = 2
    info = aggregate([g @ z for g in DIAG], [theta], "mgda_ub", shared_repr=[z])
    assert [info[f"weight/{i}"] for i in range(3)] == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-6)
    torch.testing.assert_close(theta.grad, 2 * torch.tensor([2 / 3, 1 / 3, 1 / 3]))


def test_imtl_g_three_orthogonal_tasks_weights_inverse_norms():
    # equal projections w_i a_i on every unit gradient e_i, weights summing to 1: w = (1/2, 1/4, 1/4)
    g, info = run3(DIAG, "imtl_g")
    assert [info[f"weight/{n}"] for n in "abc"] == pytest.approx([0.5, 0.25, 0.25], abs=1e-6)
    torch.testing.assert_close(g, torch.tensor([0.5, 0.5, 0.5]))


def test_graddrop_three_tasks_sign_probabilities():
    # columns: (1, 1, -2): P = 1/2, keeps 2 or -2; (3, -1, 0): P = (1 + 2/4)/2 = 3/4, keeps 3 or -1;
    # (1, 2, 3): all positive, P = 1, always 6
    G = torch.tensor([[1.0, 3.0, 1.0], [1.0, -1.0, 2.0], [-2.0, 0.0, 3.0]])
    D = torch.stack([run3(G, "graddrop", generator=torch.Generator().manual_seed(s))[0] for s in range(400)])
    assert set(D[:, 0].tolist()) == {2.0, -2.0}
    assert set(D[:, 1].tolist()) == {3.0, -1.0}
    assert float((D[:, 0] > 0).float().mean()) == pytest.approx(0.5, abs=0.08)
    assert float((D[:, 1] > 0).float().mean()) == pytest.approx(0.75, abs=0.07)
    torch.testing.assert_close(D[:, 2], torch.full((400,), 6.0))


def test_rlw_three_tasks_softmax_of_normal_weights():
    g, info = run3(CONFLICT, "rlw", generator=torch.Generator().manual_seed(7))
    w = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(7)), 0)
    assert [info[f"weight/{n}"] for n in "abc"] == pytest.approx(w.tolist(), abs=1e-6)
    torch.testing.assert_close(g, w @ CONFLICT)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("k", [2, 3])
def test_cagrad_orthogonal_equal_tasks_by_hand_at_every_scale(k, scale):
    # symmetric: w uniform, g_w = g0, lambda = c |g0| / |g_w| = c -> d = (1 + c) g0 / (1 + c^2)
    c = 0.5
    theta = torch.nn.Parameter(torch.zeros(k))
    aggregate([g @ theta for g in scale * torch.eye(k)], [theta], "cagrad", cagrad_c=c)
    torch.testing.assert_close(theta.grad, torch.full((k,), scale / k * (1 + c) / (1 + c**2)))


@pytest.mark.parametrize("scale", [1e-3, 10.0, 1e3])
def test_cagrad_three_tasks_direction_scales_with_the_gradients(scale):
    G = torch.tensor([[1.0, 0.2, -0.5, 0.3], [-0.4, 1.0, 0.3, 0.0], [0.1, -0.9, 0.8, -0.2]])
    g1, w1 = run3(G, "cagrad")
    gs, ws = run3(scale * G, "cagrad")
    torch.testing.assert_close(gs, scale * g1, rtol=1e-4, atol=1e-6 * scale)
    assert ws == pytest.approx(w1, abs=1e-5)


# ---- the step-cost meter -------------------------------------------------------------------------
def test_step_meter_sees_the_step_allocation_and_times_the_others():
    meter = StepMeter(memory_steps=(1,))
    for _ in range(3):
        with meter.step():
            x = torch.ones(1 << 20)  # 4 MiB
            del x
    s = meter.summary()
    assert s["timed_steps"] == 2 and s["memory_steps"] == 1
    assert (1 << 22) <= s["peak_bytes"] < (1 << 22) + (1 << 16)
    assert 0 < s["seconds_per_step"] < 1


def test_step_meter_pcgrad_needs_more_memory_than_the_sum():
    def peak(method):
        torch.manual_seed(0)
        trunk, heads = torch.nn.Linear(256, 256), [torch.nn.Linear(256, 1) for _ in range(3)]
        x = torch.randn(64, 256)
        meter = StepMeter(memory_steps=(0,))
        with meter.step():
            z = trunk(x)
            aggregate([h(z).square().mean() for h in heads], list(trunk.parameters()), method)
        return meter.summary()["peak_bytes"]

    # the (3, P) gradient matrix alone is 3 * 65,792 floats
    assert peak("pcgrad") - peak("sum") >= 3 * 65792 * 4


def test_step_meter_without_steps_says_so():
    with pytest.raises(ValueError, match="no step was recorded"):
        StepMeter().summary()


# ---- Multi-digit ---------------------------------------------------------------------------------
def test_multidigit_labels_are_those_of_the_digits_it_overlays():
    """Recover each image's digits from its pixels alone: the left digit's uncovered L-shaped border and
    the right digit's, matched against all 1,797 source digits, must name the labels the builder gave."""
    offset = 3
    data = build_multidigit(seed=1, offset=offset, pairs_per_image=2)
    src, lab = load_digits_array()
    left_only = np.ones((8, 8), bool)
    left_only[offset:, offset:] = False  # the part of the left digit the right one cannot cover
    right_only = np.ones((8, 8), bool)
    right_only[:8 - offset, :8 - offset] = False
    for split in data.values():
        img = split.images[:150, 0].numpy()  # (150, 11, 11)
        for i in range(img.shape[0]):
            left_seen = img[i, :8, :8][left_only]
            right_seen = img[i, offset:, offset:][right_only]
            left_match = np.flatnonzero((src[:, left_only] == left_seen).all(1))
            right_match = np.flatnonzero((src[:, right_only] == right_seen).all(1))
            assert len(left_match) and set(lab[left_match]) == {int(split.labels["left"][i])}
            assert len(right_match) and set(lab[right_match]) == {int(split.labels["right"][i])}
            # and the covered part is the maximum of the two
            l_src, r_src = src[split.left_index[i]], src[split.right_index[i]]
            both = np.maximum(l_src[offset:, offset:], r_src[:8 - offset, :8 - offset])
            np.testing.assert_array_equal(img[i, offset:8, offset:8], both)


def test_multidigit_splits_are_seeded_and_share_no_source_digit():
    a, b = build_multidigit(seed=4), build_multidigit(seed=4)
    for name in a:
        torch.testing.assert_close(a[name].images, b[name].images)
    srcs = {n: set(s.left_index) | set(s.right_index) for n, s in a.items()}
    assert not (srcs["train"] & srcs["val"]) and not (srcs["train"] & srcs["test"]) and not (srcs["val"] & srcs["test"])
    assert len(a["train"]) == 4 * 1078 and a["train"].images.shape[1:] == (1, 11, 11)
    assert not torch.equal(build_multidigit(seed=5)["test"].images, a["test"].images)


def test_overlay_takes_the_maximum_where_digits_overlap():
    left, right = np.zeros((8, 8)), np.zeros((8, 8))
    left[7, 7], right[0, 0], right[7, 7] = 0.5, 0.25, 1.0
    out = overlay(left, right, 2)
    assert out.shape == (10, 10) and out[7, 7] == 0.5 and out[2, 2] == 0.25 and out[9, 9] == 1.0


def test_multidigit_refuses_a_bad_offset():
    with pytest.raises(ValueError, match="offset=8"):
        build_multidigit(offset=8)


# ---- the loop --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    return build_multidigit(seed=0, pairs_per_image=2)


@pytest.mark.parametrize("method", ["sum", "mgda_ub"])
def test_multidigit_loop_learns_and_records_the_step_cost(small_data, method):
    r = train_multidigit(MTLConfig(method=method, epochs=3, batch_size=32, seed=0), small_data)
    assert r["test_mean"] > 0.4  # chance is 0.1
    assert r["epoch"] == 2 and r["seconds_per_step"] > 0 and r["peak_bytes"] > 0


def test_early_stopping_reports_the_best_validation_epoch(small_data):
    cfg = MTLConfig(epochs=4, batch_size=128, dropout=0.5, weight_decay=1e-3, early_stopping=True)
    r = train_multidigit(cfg, small_data)
    curve = r["val_curve"]
    assert r["epoch"] == max(i for i, v in enumerate(curve) if v == max(curve))


def test_mtl_config_names_a_bad_method(small_data):
    with pytest.raises(ValueError, match=r"'pcgard'.*pcgrad"):
        train_multidigit(MTLConfig(method="pcgard"), small_data)


# ---- the CLRS generalist through the same interface -------------------------------------------------
def _clrs_cfg(tmp_path, **kw):
    from chimera.clrs.train import CLRSRunConfig, TrainCLRSConfig

    return TrainCLRSConfig(algorithms=("minimum", "bfs"), processor="mpnn", hidden=8, steps=4, batch_size=2,
                           eval_every=2, val_samples=4, test_size=8, test_samples=2,
                           run=CLRSRunConfig(out_dir=str(tmp_path), log_every=2, ckpt_every=4, plots=False), **kw)


def test_clrs_generalist_aggregates_its_processor_and_records_the_step_cost(tmp_path):
    import json

    from chimera.clrs.train import train_clrs

    run, results = train_clrs(_clrs_cfg(tmp_path, aggregator="pcgrad", weight_decay=1e-4, keep_best=False),
                              log=lambda *_: None)
    assert set(results) == {"minimum", "bfs"}
    cost = json.loads((run.path / "results.json").read_text())["cost"]
    # 4 steps: the third is profiled for memory (StepMeter.memory_steps = (2, 5)), the others timed
    assert cost["timed_steps"] == 3 and cost["memory_steps"] == 1 and cost["peak_bytes"] > 0


def test_clrs_generalist_refuses_mgda_ub(tmp_path):
    from chimera.clrs.train import train_clrs

    with pytest.raises(ValueError, match=r"aggregator 'mgda_ub'.*own batch"):
        train_clrs(_clrs_cfg(tmp_path, aggregator="mgda_ub"), log=lambda *_: None)


def test_interleaved_costs_time_and_profile_every_method():
    from chimera.mtl import interleaved_costs

    costs = interleaved_costs({"small": lambda: torch.ones(1 << 10), "big": lambda: torch.ones(1 << 20)}, rounds=4,
                              memory_steps=(1,))
    assert costs["small"]["timed_steps"] == costs["big"]["timed_steps"] == 3
    assert costs["big"]["peak_bytes"] >= 1 << 22 > costs["small"]["peak_bytes"]
