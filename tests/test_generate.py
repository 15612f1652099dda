import torch

from chimera.inference import Sampler, SamplingConfig, draw, generate
from chimera.models import HybridLM, get_config
from chimera.tokenizer import ByteTokenizer, Message


def sample(logits: torch.Tensor, sampler: Sampler, seed: int = 0) -> torch.Tensor:
    u = torch.rand(logits.shape[:-1], generator=torch.Generator().manual_seed(seed))
    return draw(sampler.probs(logits), u)


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(64, 50)
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits, Sampler(temperature=1.0, top_k=1)), greedy)
    assert torch.equal(sample(logits, Sampler(temperature=1.0, top_p=1e-6)), greedy)


def test_top_k_never_samples_outside_the_k_best():
    logits = torch.randn(1, 30).expand(2000, 30)
    picks = sample(logits, Sampler(temperature=2.0, top_k=3))
    assert set(picks.tolist()) == set(logits[0].topk(3).indices.tolist())


def test_sampling_follows_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    picks = sample(logits, Sampler(temperature=1.0))
    freq = torch.bincount(picks, minlength=3).float() / 20000
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)


def test_top_p_one_keeps_every_token_of_a_long_tail():
    """At top_p = 1 nothing is dropped, even where float32 partial sums reach 1 before the tail."""
    logits = torch.cat([torch.tensor([30.0]), torch.zeros(5000)])
    assert (Sampler(temperature=1.0).probs(logits) > 0).all()


def test_seeded_sampling_is_reproducible_and_stops_at_stop_token():
    m = HybridLM(get_config("tiny")).eval()
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=3)
    a, b = generate(m, [[1, 50, 60]], cfg), generate(m, [[1, 50, 60]], cfg)
    assert a == b and len(a[0]) == 20
    stop = a[0][4]
    cut = generate(m, [[1, 50, 60]], SamplingConfig(max_new_tokens=20, temperature=1.0, seed=3,
                                                   stop_tokens=(stop,)))[0]
    assert cut[-1] == stop and len(cut) == a[0].index(stop) + 1


def test_tokenizer_round_trip_and_chat_template():
    tok = ByteTokenizer()
    text = "héllo <think>x</think> wörld<eos>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.token_id("<think>") in ids and max(ids) < tok.vocab_size
    chat = tok.apply_chat_template([Message("user", "2+2=")])
    assert chat == "<bos><|user|>2+2=<eos><|assistant|><think>"
    off = tok.apply_chat_template([Message("system", "be brief /no_think"), Message("user", "hi")])
    assert off.endswith("<|assistant|><think></think>")
    assert tok.apply_chat_template([Message("user", "hi")], enable_thinking=False).endswith("<think></think>")
