"""CLRS samplers, the encode-process-decode learner, its losses and scores, and the training loop."""

import numpy as np
import pytest
import torch

from chimera.clrs.model import (
    PROCESSORS,
    Edges,
    EncodeProcessDecode,
    ModelConfig,
    Processor,
    categories,
    output_predictions,
    permutation_target,
    score,
    targets,
)
from chimera.clrs.samplers import Sampler, pred_as_input, randomize_pos, sample_inputs
from chimera.clrs.specs import CLRS_30_ALGS
from chimera.clrs.train import CLRSRunConfig, TrainCLRSConfig, batch_loss, features, prepared, train_clrs
from tests import clrs_reference


def test_samplers_are_deterministic_and_batch_every_algorithm():
    for algo in CLRS_30_ALGS:
        a, b = Sampler(algo, 6, 3, seed=5), Sampler(algo, 6, 3, seed=5)
        ba, bb = a.batch(2), b.batch(2)
        for name, f in ba.hints.items():
            assert np.array_equal(f.data, bb.hints[name].data)
            assert f.data.shape[:2] == (int(ba.lengths.max()), 2)
        assert ba.num_nodes == {"segments_intersect": 4, "optimal_bst": 7}.get(algo, 6)


def test_sampler_distributions():
    rng = np.random.default_rng(0)
    T, P = sample_inputs("kmp_matcher", 20, rng)
    assert len(T) + len(P) == 20 and bytes(T.astype(np.uint8)).find(bytes(P.astype(np.uint8))) >= 0
    flips = [Sampler("segments_intersect", 4, 1, seed=s)._data[0]["output"]["graph"]["intersect"]["data"]
             for s in range(200)]
    assert 0.35 < np.mean(flips) < 0.65  # intersecting and not, about half each
    A, s = sample_inputs("dijkstra", 16, rng)
    assert np.allclose(A, A.T) and 0 <= s < 16  # undirected, weighted
    A = sample_inputs("topological_sort", 16, rng)[0]
    assert np.all(np.linalg.matrix_power(A, 16) == 0)  # acyclic
    xs, ys = sample_inputs("graham_scan", 10, rng)
    assert np.all(xs**2 + ys**2 <= 4.0 + 1e-9)
    with pytest.raises(ValueError, match="unknown CLRS algorithm 'bubblesort'"):
        sample_inputs("bubblesort", 4, rng)


def test_permutation_target_round_trips_to_predecessor_pointers():
    pred = np.array([[2, 0, 2, 1], [0, 2, 3, 0]])  # orders 2,0,1,3 and 0,3,2,1
    P, first = permutation_target(pred)
    assert torch.equal(first.argmax(-1), torch.tensor([2, 0]))
    assert torch.all(P.sum(-1) == 1) and torch.all(P.sum(-2) == 1)  # a permutation matrix (cyclic)
    logits = {"pred": torch.log(P + 1e-9), "pred_mask": torch.log(first + 1e-9)}
    dspec = {"pred": ("output", "node", "permutation_pointer"), "pred_mask": ("output", "node", "mask_one")}
    assert torch.equal(output_predictions(dspec, logits)["pred"], torch.as_tensor(pred))


@pytest.mark.parametrize("algo", ["insertion_sort", "bfs", "floyd_warshall", "lcs_length", "segments_intersect",
                                  "articulation_points", "bridges", "dag_shortest_paths", "minimum"])
def test_perfect_predictions_score_one(algo):
    batch = Sampler(algo, 7, 4, seed=1).batch(4)
    logits = {}
    for name, f in targets(batch).items():
        x = f.data.clone()
        logits[name] = torch.where(x > 0.5, 10.0, -10.0) if f.type_ in ("mask",) else torch.log(x.clamp(min=0) + 1e-9)
    net = EncodeProcessDecode(algo, ModelConfig(hidden=8), categories(algo, batch))
    assert score(batch, output_predictions(net.dspec, logits))["score"] == pytest.approx(1.0)


@pytest.mark.parametrize("processor", PROCESSORS)
@pytest.mark.parametrize("algo", ["floyd_warshall", "lcs_length", "kmp_matcher", "heapsort", "segments_intersect"])
def test_every_processor_runs_every_feature_kind(processor, algo):
    torch.manual_seed(0)
    batch = Sampler(algo, 5 if algo != "kmp_matcher" else 10, 3, seed=0).batch(3)
    net = EncodeProcessDecode(algo, ModelConfig(processor=processor, hidden=16), categories(algo, batch))
    loss, outputs = batch_loss(net, batch)
    loss.backward()
    assert torch.isfinite(loss)
    # (triplet messages reach only the decoders that read edge features, which segments_intersect has none of)
    assert all(p.grad is not None for m in (net.processor.m1, net.processor.o1, net.processor.o2)
               for p in m.parameters())
    for name, f in targets(batch).items():
        assert outputs[name].shape[:f.data.dim()] == f.data.shape[:outputs[name].dim()]


@pytest.mark.parametrize("processor", PROCESSORS)
@pytest.mark.parametrize("algo", ["insertion_sort", "bfs", "dijkstra", "floyd_warshall", "lcs_length", "kmp_matcher",
                                  "segments_intersect", "minimum"])
def test_fused_learner_matches_the_reference_loss_and_gradients(processor, algo):
    """The fused learner (one matmul per location and reader, factored edge features, max with indices) gives
    the unfused reference's loss and gradients on the same weights and batch, Gumbel noise included."""
    torch.manual_seed(0)
    batch = Sampler(algo, 7 if algo != "kmp_matcher" else 10, 3, seed=1).batch(3)
    cfg, cats = ModelConfig(processor=processor, hidden=24), categories(algo, batch)
    fast, ref = EncodeProcessDecode(algo, cfg, cats), clrs_reference.EncodeProcessDecode(algo, cfg, cats)
    with torch.no_grad():  # random biases everywhere, so that no term is zero by chance
        for q in fast.parameters():
            q.normal_(0, 0.3)
    ref.load_state_dict(fast.state_dict())
    results = []
    for net in (fast, ref):
        torch.manual_seed(1)
        loss, _ = batch_loss(net, batch)
        loss.backward()
        # (no gradient and a zero one are the same: fused layers pass zeros to the parts nothing reads)
        results.append((loss.detach(), {k: torch.zeros_like(q) if q.grad is None else q.grad
                                        for k, q in net.named_parameters()}))
    (loss_f, grad_f), (loss_r, grad_r) = results
    assert torch.allclose(loss_f, loss_r, rtol=1e-5, atol=1e-5)
    assert grad_f.keys() == grad_r.keys()
    for k in grad_r:
        assert torch.allclose(grad_f[k], grad_r[k], rtol=1e-5, atol=1e-5), (k, (grad_f[k] - grad_r[k]).abs().max())


def test_static_hint_elimination_turns_the_constant_pred_h_into_an_input():
    batch = Sampler("minimum", 6, 2, seed=0).batch(2)
    moved = pred_as_input(batch)
    assert "pred" in moved.inputs and "pred_h" not in moved.hints
    assert np.array_equal(moved.inputs["pred"].data, batch.hints["pred_h"].data[0])
    net = EncodeProcessDecode("minimum", ModelConfig(hidden=8), {})
    assert net.spec["pred"][0] == "input" and "pred_h" not in net.dspec and "pred" in net.encoders
    assert "pred_h" in EncodeProcessDecode("minimum", ModelConfig(hidden=8, static_hints_as_inputs=False), {}).dspec
    assert torch.isfinite(batch_loss(net, batch)[0])
    assert pred_as_input(Sampler("insertion_sort", 5, 1, seed=0).batch(1)).hints.keys() >= {"pred_h"}  # it moves
    batch.hints["pred_h"].data[-1, 0, 0] += 1  # a pred_h that changes cannot be an input
    with pytest.raises(ValueError, match="pred_h changes along sample 0"):
        pred_as_input(batch)


def test_randomized_pos_is_sorted_uniform_within_each_string():
    batch = Sampler("kmp_matcher", 10, 2, seed=0).batch(2)
    pos = batch.inputs["pos"].data
    starts = [np.flatnonzero(p == 0) for p in pos]
    assert all(len(s) == 2 for s in starts)  # haystack and needle each start at 0
    new = randomize_pos(batch, np.random.default_rng(0)).inputs["pos"].data
    assert not np.allclose(new, pos) and np.all((new > 0) & (new < 1))
    for p, s in zip(new, starts, strict=True):
        assert np.all(np.diff(p[:s[1]]) > 0) and np.all(np.diff(p[s[1]:]) > 0)
    assert np.array_equal(batch.inputs["pos"].data, pos)  # the original batch is left alone


def test_scalar_hint_encoders_start_at_std_one_over_sqrt_hidden():
    cats = categories("dijkstra", Sampler("dijkstra", 5, 1, seed=0).batch(1))
    h = 128
    xavier = EncodeProcessDecode("dijkstra", ModelConfig(hidden=h), cats).encoders["d"]  # d: a scalar hint
    default = EncodeProcessDecode("dijkstra", ModelConfig(hidden=h, encoder_init="default"), cats).encoders["d"]
    assert xavier.weight.abs().max() <= 2 / h**0.5 and 0.5 / h**0.5 < xavier.weight.std() < 1 / h**0.5
    assert default.weight.abs().max() > 0.5 and torch.all(default.bias == 0)


@pytest.mark.parametrize("forcing", [0.0, 1.0])
def test_teacher_forcing_feeds_back_the_true_hints(forcing):
    """With forcing 1 the outputs do not depend on the hint decoders (the true hints are fed back); with 0 they do."""
    torch.manual_seed(0)
    batch = Sampler("bfs", 6, 2, seed=0).batch(2)
    net = EncodeProcessDecode("bfs", ModelConfig(hidden=16, hint_teacher_forcing=forcing), categories("bfs", batch))
    inputs, first, truth = features(batch)
    before = net(batch, inputs, first, truth)[0]["pi"]
    with torch.no_grad():
        for name in ("reach_h", "pi_h"):
            for q in net.decoders[name].parameters():
                q.mul_(-3.0)
    after = net(batch, inputs, first, truth)[0]["pi"]
    assert torch.allclose(before, after) == (forcing == 1.0)


def test_triplet_gmpnn_gate_starts_closed():
    proc = Processor("triplet_gmpnn", 16, 8, True)
    assert torch.all(proc.g3.bias == -3.0)
    assert proc.triplets and not Processor("mpnn", 16, 8, True).gated


def test_pgn_uses_the_graph_and_mpnn_everything():
    torch.manual_seed(0)
    h, n = 8, 4
    node, edge, graph = torch.randn(1, n, h), torch.randn(1, n, n, h), torch.randn(1, h)
    adj = torch.eye(n)[None]
    pgn, mpnn = Processor("pgn", h, 4, False), Processor("mpnn", h, 4, False)
    mpnn.load_state_dict(pgn.state_dict())
    out_pgn, _ = pgn(node, Edges.dense(edge), graph, adj, torch.zeros(1, n, h))
    out_mpnn, _ = mpnn(node, Edges.dense(edge), graph, adj, torch.zeros(1, n, h))
    assert not torch.allclose(out_pgn, out_mpnn)
    full, _ = pgn(node, Edges.dense(edge), graph, torch.ones(1, n, n), torch.zeros(1, n, h))
    assert torch.allclose(full, out_mpnn)


@pytest.mark.parametrize("algo", ["minimum", "bfs"])
def test_a_small_learner_fits_a_fixed_batch(algo):
    torch.manual_seed(0)
    batch = Sampler(algo, 5, 8, seed=0).batch(8)
    net = EncodeProcessDecode(algo, ModelConfig(processor="triplet_gmpnn", hidden=32), categories(algo, batch))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss, _ = batch_loss(net, batch)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first
    net.eval()
    inputs, hints, _ = features(prepared(net, batch))
    with torch.no_grad():
        outputs, _ = net(batch, inputs, hints)
    assert score(batch, output_predictions(net.dspec, outputs))["score"] > 0.9


def test_train_clrs_runs_checkpoints_and_resumes(tmp_path):
    cfg = TrainCLRSConfig(algorithms=("minimum", "bfs"), processor="mpnn", hidden=8, steps=4, batch_size=2,
                          eval_every=2, val_samples=4, test_size=8, test_samples=2,
                          run=CLRSRunConfig(out_dir=str(tmp_path), log_every=2, ckpt_every=2, plots=False))
    run, results = train_clrs(cfg, log=lambda *_: None)
    assert set(results) == {"minimum", "bfs"} and all(0 <= r["test"] <= 1 for r in results.values())
    assert (run.path / "results.json").exists()
    import dataclasses

    more = dataclasses.replace(cfg, steps=6, run=dataclasses.replace(cfg.run, plots=True))
    logs = []
    train_clrs(more, resume=str(run.path), log=logs.append)
    assert any("resumed" in line and "step 4" in line for line in logs)
    assert {p.name for p in (run.path / "plots").glob("*.png")} >= {"train.png", "val.png"}
    with pytest.raises(ValueError, match="unknown CLRS algorithm"):
        train_clrs(dataclasses.replace(cfg, algorithms=("sorting",)), log=lambda *_: None)
