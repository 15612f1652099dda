"""Reasoning-budget control and tokenizer loading."""

import json

import pytest
import torch

from chimera.inference import SamplingConfig, ThinkingBudget, generate
from chimera.models import HybridLM, get_config
from chimera.tokenizer import ByteTokenizer, HFTokenizer, Message, load_tokenizer

TOK = ByteTokenizer()
THINK, END, NL = TOK.token_id("<think>"), TOK.token_id("</think>"), TOK.newline_ids[0]


def _run(budget, stream, prompt=(THINK,)):
    """Feed a scripted stream of would-be samples through the controller; return what is emitted."""
    tracker = budget.track(list(prompt))
    out = []
    for t in stream:
        forced = tracker.forced()
        tok = t if forced is None else forced
        out.append(tok)
        tracker.observe(tok)
        if tracker.done():
            break
    return out


def test_budget_closes_at_first_newline_within_grace():
    b = ThinkingBudget(10, THINK, END, (NL,), grace=5)
    stream = [50] * 8 + [NL] + [50] * 3 + [NL] + [50] * 30
    out = _run(b, stream)
    # the newline at 9 comes before the budget; the one at 13 closes thinking right after it
    assert out.index(END) == 13 and out[12] == NL


def test_budget_forces_close_when_grace_runs_out():
    b = ThinkingBudget(10, THINK, END, (NL,), grace=3)
    out = _run(b, [50] * 40)
    assert out.index(END) == 13 and out.count(END) == 1


def test_answer_runs_under_its_own_limit():
    b = ThinkingBudget(4, THINK, END, (NL,), grace=0, max_answer_tokens=6)
    out = _run(b, [50] * 40)
    assert out == [50] * 4 + [END] + [50] * 6


def test_prompt_without_open_think_is_not_budgeted():
    b = ThinkingBudget(2, THINK, END, (NL,), grace=0)
    assert END not in _run(b, [50] * 10, prompt=(THINK, 60, END))


def test_room_never_reaches_past_a_forced_token():
    """Emitting ``room()`` tokens freely never skips a point where a token is forced."""
    b = ThinkingBudget(10, THINK, END, (NL,), grace=3)
    for stream in ([50] * 40, [50] * 8 + [NL] * 3 + [50] * 30, [NL] * 40):
        tracker, i = b.track([THINK]), 0
        while not tracker.closed:
            room = tracker.room()
            if room == 0:
                tracker.observe(tracker.forced())
                continue
            for t in stream[i:i + room]:
                assert tracker.forced() is None
                tracker.observe(t)
            i += room
        assert _run(b, stream)[:tracker.n_think + 1][-1] == END


@pytest.mark.parametrize("n", [0, 5, 20])
def test_generate_never_thinks_past_budget_plus_grace(n):
    torch.manual_seed(0)
    m = HybridLM(get_config("tiny")).eval()
    prompts = [TOK.encode(TOK.apply_chat_template([Message("user", q)])) for q in ("hi", "2+2=", "sort 3 1")]
    b = ThinkingBudget(n, THINK, END, TOK.newline_ids, max_answer_tokens=7)
    outs = generate(m, prompts, SamplingConfig(max_new_tokens=60, temperature=1.0, seed=1), budget=b)
    for out in outs:
        assert out.count(END) == 1 and THINK not in out[out.index(END):]  # once closed, both are masked
        thinking = out.index(END)
        assert thinking <= n + b.grace
        assert len(out) - thinking - 1 <= 7


def test_tokenizer_json_is_loaded_when_the_checkpoint_ships_one(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<s>": 0, "</s>": 1, "<think>": 2, "</think>": 3, "hello": 4, "world": 5, "[UNK]": 6, "\n": 7}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<s>", "</s>", "<think>", "</think>"])
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello world", add_bos=True) == [0, 4, 5]
    assert (tok.eos_id, tok.token_id("<think>"), tok.newline_ids) == (1, 2, (7,))
    assert isinstance(load_tokenizer(tmp_path / "missing"), ByteTokenizer)
