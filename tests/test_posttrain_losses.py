"""The GRPO-family and ESPO objectives hand-computed on a tiny group (2 samples, 3 positions)."""

import math
import threading

import pytest
import torch

from chimera.posttrain.losses import (
    LossConfig,
    group_advantages,
    keep_groups,
    mismatch_metrics,
    overlong_penalty,
    policy_loss,
    stop_epochs,
)

# sample 0 (reward 1) has 2 sampled tokens and one environment token; sample 1 (reward 0) has 3
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
RATIOS = torch.tensor([[1.5, 0.5, 1.0], [1.1, 0.7, 1.3]])
REWARDS = torch.tensor([[1.0, 0.0]])


def batch():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]])
    logp = (old + RATIOS.log()).requires_grad_()
    return logp, old


def loss_of(cfg, **kw):
    logp, old = batch()
    adv = group_advantages(REWARDS, scale=cfg.algo != "dr_grpo").flatten()
    return policy_loss(logp, old, MASK, adv, cfg, **kw)


def test_group_advantages_dynamic_sampling_and_overlong_shaping():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(group_advantages(r), torch.tensor([[1.0, -1.0, -1.0, 1.0], [0, 0, 0, 0]]), atol=1e-5)
    assert torch.allclose(group_advantages(r, scale=False), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]]))
    assert keep_groups(r).tolist() == [True, False]
    assert overlong_penalty(torch.tensor([10, 14, 16, 20]), 16, 4).tolist() == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(torch.tensor([1]), 16, 0)


def test_grpo_clips_both_ways_and_averages_per_sequence():
    loss, m = loss_of(LossConfig("grpo"))
    # A = +1: -min(r, clip r) = -1.2, -0.5 -> mean -0.85; A = -1: max(r, clip r) = 1.1, 0.8, 1.3 -> mean 1.0667
    assert loss.item() == pytest.approx((-0.85 + 3.2 / 3) / 2, abs=1e-5)
    assert m["losses/clipfrac"] == pytest.approx(4 / 5)
    assert m["losses/ratio_dev"] == pytest.approx(1.7 / 5)


def test_dapo_clip_higher_and_token_level_mean():
    loss, _ = loss_of(LossConfig("dapo", eps_low=0.2, eps_high=0.28))
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.1 + 0.8 + 1.3) / 5, abs=1e-5)


def test_dr_grpo_has_no_std_or_length_normalisation():
    loss, _ = loss_of(LossConfig("dr_grpo"))
    # A = +-0.5: -0.6 - 0.25 + 0.55 + 0.4 + 0.65 = 0.75, over B * T = 6
    assert loss.item() == pytest.approx(0.75 / 6, abs=1e-6)
    loss, _ = loss_of(LossConfig("dr_grpo", max_tokens=5))
    assert loss.item() == pytest.approx(0.75 / 10, abs=1e-6)


def test_gspo_uses_one_ratio_per_sequence():
    loss, _ = loss_of(LossConfig("gspo"))
    s0, s1 = math.sqrt(1.5 * 0.5), (1.1 * 0.7 * 1.3) ** (1 / 3)  # geometric means of the sampled tokens' ratios
    assert loss.item() == pytest.approx((-s0 + s1) / 2, abs=1e-5)
    logp, old = batch()  # with A = (-1, +1) the lower clip binds: sample 0's ratio 0.866 counts as 0.9
    loss, m = policy_loss(logp, old, MASK, torch.tensor([-1.0, 1.0]), LossConfig("gspo", eps_low=0.1, eps_high=0.1))
    assert loss.item() == pytest.approx((0.9 - s1) / 2, abs=1e-5)
    assert m["losses/clipfrac"] == pytest.approx(2 / 5)  # sample 0's two tokens


def test_espo_is_unclipped_and_stops_past_delta():
    loss, m = loss_of(LossConfig("espo"))
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 1.1 + 0.7 + 1.3) / 5, abs=1e-5)
    assert stop_epochs(LossConfig("espo", espo_delta=0.25), m["losses/ratio_dev"])
    assert not stop_epochs(LossConfig("espo", espo_delta=0.5), m["losses/ratio_dev"])
    assert not stop_epochs(LossConfig("grpo"), 10.0)


def test_importance_correction_truncated_or_masked_and_the_mismatch_metric():
    _, old = batch()
    rollout = old.clone()
    rollout[0, 0] -= math.log(3.0)  # the engine gave token 0 a third of the trainer's probability
    loss, m = loss_of(LossConfig("espo", is_correction="tis", is_cap=2.0), rollout_logp=rollout)
    assert loss.item() == pytest.approx((-1.5 * 2 - 0.5 + 1.1 + 0.7 + 1.3) / 5, abs=1e-5)
    assert m["mismatch/token_mult_prob_error"] == pytest.approx((3 + 4) / 5, abs=1e-5)
    loss, m = loss_of(LossConfig("espo", is_correction="mis", is_cap=2.0), rollout_logp=rollout)
    assert loss.item() == pytest.approx((-0.5 + 1.1 + 0.7 + 1.3) / 4, abs=1e-5)
    loss, _ = loss_of(LossConfig("gspo", is_correction="tis", is_cap=2.0), rollout_logp=rollout)
    s0, s1 = math.sqrt(1.5 * 0.5), (1.1 * 0.7 * 1.3) ** (1 / 3)
    assert loss.item() == pytest.approx((-s0 * math.sqrt(2.0) + s1) / 2, abs=1e-5)  # sample 0: sqrt(2 * 1)
    loss, _ = loss_of(LossConfig("espo", is_correction="none"), rollout_logp=rollout)
    assert loss.item() == pytest.approx(0.22, abs=1e-5)
    same = mismatch_metrics(old, old, MASK)
    assert same["mismatch/token_mult_prob_error"] == 1.0 and same["mismatch/kl_k3"] == 0.0


def test_kl_to_the_reference_k1_and_k3():
    logp, _ = batch()
    ref = logp.detach() - math.log(2.0)
    for est, kl in (("k1", math.log(2.0)), ("k3", 0.5 + math.log(2.0) - 1)):
        loss, m = loss_of(LossConfig("espo", kl_beta=0.1, kl_estimator=est), ref_logp=ref)
        assert m["losses/kl_ref"] == pytest.approx(kl, abs=1e-5)
        assert loss.item() == pytest.approx(0.22 + 0.1 * kl, abs=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        loss_of(LossConfig("grpo", kl_beta=0.1))


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "espo"])
def test_environment_tokens_get_no_gradient(algo):
    logp, old = batch()
    loss, _ = policy_loss(logp, old, MASK, torch.tensor([1.0, -1.0]), LossConfig(algo))
    loss.backward()
    assert logp.grad[0, 2] == 0 and (logp.grad[MASK.bool()] != 0).any()


def test_bad_loss_config_is_named():
    with pytest.raises(ValueError, match="algo"):
        LossConfig("ppo")
    with pytest.raises(ValueError, match="is_cap"):
        LossConfig(is_cap=1.0)


class Ranks:
    """W threads that share one batch, each with its rows; ``total(rank)`` is their all-reduce (each call
    waits until every thread has given its tensor), as ``chimera.train.distributed.total`` is for processes."""

    def __init__(self, size: int):
        self.slots: list[torch.Tensor | None] = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)  # a thread that raised breaks it, not hangs it

    def total(self, rank: int):
        def f(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            got = torch.stack(self.slots)
            out = got.sum(0) if op == "sum" else got.max(0).values
            self.barrier.wait()
            return out
        return f


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "espo"])
@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_split_rows_with_totals_give_the_loss_gradient_and_statistics_of_the_whole_batch(algo, correction):
    """Data-parallel: ranks holding 3, 2 and 0 rows of a batch each compute their share with the batch's
    normalisers; their losses and gradients sum to the whole batch's and every statistic is the batch's."""
    g = torch.Generator().manual_seed(0)
    B, T = 5, 7
    old = -torch.rand(B, T, generator=g) * 3
    logp0 = old + 0.3 * torch.randn(B, T, generator=g)
    rollout_lp = old + 0.5 * torch.randn(B, T, generator=g)
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[3] = 0.0  # a row with nothing sampled: out of per-sequence counts
    adv = torch.randn(B, generator=g)
    cfg = LossConfig(algo=algo, is_correction=correction, kl_beta=0.1, eps_low=0.1, eps_high=0.15, is_cap=1.5)

    whole = logp0.clone().requires_grad_()
    loss, metrics = policy_loss(whole, old, mask, adv, cfg, rollout_lp, ref)
    loss.backward()

    blocks = [range(0, 3), range(3, 5), range(5, 5)]
    ranks = Ranks(len(blocks))
    got: list = [None] * len(blocks)

    def work(rank: int) -> None:
        rows = slice(blocks[rank].start, blocks[rank].stop)
        mine = logp0[rows].clone().requires_grad_()
        part, m = policy_loss(mine, old[rows], mask[rows], adv[rows], cfg, rollout_lp[rows], ref[rows],
                              total=ranks.total(rank))
        if mine.numel():
            part.backward()
        got[rank] = (float(part.detach()), m, mine.grad if mine.grad is not None else torch.zeros_like(mine))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(blocks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(part for part, _, _ in got) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(torch.cat([grad for _, _, grad in got]), whole.grad, rtol=1e-5, atol=1e-7)
    for _, m, _ in got:
        assert m.keys() == metrics.keys()
        for k, v in metrics.items():
            assert m[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
