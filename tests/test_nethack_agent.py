"""The symbolic NetHack agent on scripted MiniHack levels, and the Challenge evaluation's summary."""

import statistics

import numpy as np
import pytest

pytest.importorskip("nle")
pytest.importorskip("minihack")

from minihack import LevelGenerator
from nle import nethack as nh

from chimera.envs import make
from chimera.nethack.agent import SymbolicAgent
from chimera.nethack.evaluate import evaluate, summary
from chimera.nethack.prompts import ENTER, ESC
from chimera.nethack.state import OBS_KEYS
from chimera.nethack.strategies import PRAY_KEY
from chimera.nethack.watchdog import Watchdog


def level(rows: str, start, stairs=None, monsters=(), objects=(), **kwargs):
    lg = LevelGenerator(map=rows, lit=True)
    lg.set_start_pos(start)
    if stairs:
        lg.add_stair_down(stairs)
    for name, pos in monsters:
        lg.add_monster(name, place=pos)
    for name, pos in objects:
        lg.add_object(name, place=pos)
    env = make("minihack/Custom", des_file=lg.get_des(), observation_keys=OBS_KEYS, actions=nh.ACTIONS,
               allow_all_modes=True, allow_all_yn_questions=True,  # menus and --More-- as in the Challenge
               max_episode_steps=5000, **kwargs)
    return env


def play(env, agent, steps, seed=0):
    """Run the agent; returns (keys pressed, messages seen, end status or None)."""
    obs, _ = env.reset(seed=seed)
    keys, msgs = [], []
    for _ in range(steps):
        k = agent.act_key(obs)
        keys.append(k)
        obs, _, term, trunc, info = env.step(agent.keys(k))
        msgs.append(bytes(obs["message"]).split(b"\0")[0].decode())
        if term or trunc:
            return keys, msgs, int(info["end_status"])
        if agent.stop_reason():
            break
    return keys, msgs, None


def test_hidden_passage_at_a_dead_end_is_found_by_searching():
    rows = """
-----       -----
|...|       |...|
|...+###H###+...|
|...|       |...|
-----       -----
"""  # H: a secret corridor square between the dead end and the room with the stairs
    env = level(rows, start=(1, 2), stairs=(14, 2))
    agent = SymbolicAgent(env.unwrapped.actions)
    _, _, end = play(env, agent, 600)
    assert end == 2, agent.stats  # MiniHack's task: reach the down stairs
    assert agent.used["search"] >= 1 and agent.used["descend"] >= 1


def test_takes_the_stairs_in_a_room():
    rows = """
---------
|.......|
|.......|
|.......|
---------
"""
    env = level(rows, start=(1, 1), stairs=(7, 3))
    agent = SymbolicAgent(env.unwrapped.actions)
    keys, _, end = play(env, agent, 200)
    assert end == 2 and len(keys) <= 12, (len(keys), agent.stats)  # 6 diagonal/straight steps away
    assert agent.used["descend"] >= 1


def test_fights_an_adjacent_monster():
    rows = """
-------
|.....|
|.....|
-------
"""
    env = level(rows, start=(1, 1), monsters=[("jackal", (2, 1))])
    agent = SymbolicAgent(env.unwrapped.actions)
    keys, msgs, _ = play(env, agent, 150)
    first = keys.index("F")
    assert keys[first + 1] == "l" and keys[first - 3:first] == [";", "l", "."]  # looked, then attacked east
    assert any("kill" in m for m in msgs), msgs[-10:]


def screen(obs):
    return "\n".join(bytes(r).decode("latin-1") for r in obs["tty_chars"])


def waiting(obs):
    return "--More--" in screen(obs) or "(end)" in screen(obs)


def _low_hp(obs, turn):
    obs = dict(obs)
    b = obs["blstats"].copy()
    b[nh.NLE_BL_HP], b[nh.NLE_BL_HPMAX], b[nh.NLE_BL_TIME] = 2, 20, turn
    obs["blstats"] = b
    return obs


def test_prays_once_at_low_hp_and_not_again_inside_the_timeout():
    rows = """
-----
|...|
-----
"""
    env = level(rows, start=(1, 1))
    agent = SymbolicAgent(env.unwrapped.actions)
    obs, _ = env.reset(seed=0)
    keys, msgs, turn = [], [], 400  # past the first prayer's timeout (the blstats say so: HP 2 of 20)
    for _ in range(40):
        k = agent.act_key(_low_hp(obs, turn))
        keys.append(k)
        obs, *_ = env.step(agent.keys(k))
        msgs.append(bytes(obs["message"]).split(b"\0")[0].decode())
        turn += 5
    i = keys.index(PRAY_KEY)
    assert keys.count(PRAY_KEY) == 1 and keys[i + 1] == "y"  # confirmed "Are you sure you want to pray?"
    assert any(m.startswith(("You begin praying", "You feel that")) for m in msgs[i + 1:]), msgs  # the game prayed
    assert agent.prayers == [400]
    for _ in range(20):  # 1,000 turns later the prayer timeout has surely run out: it prays again
        k = agent.act_key(_low_hp(obs, 1500))
        obs, *_ = env.step(agent.keys(k))
        keys.append(k)
    assert keys.count(PRAY_KEY) == 2


def test_clears_a_more_chain_and_a_menu():
    rows = """
-----
|...|
-----
"""
    env = level(rows, start=(1, 1), objects=[(o, (1, 1)) for o in ("apple", "orange", "carrot", "banana", "melon")],
                autopickup=False)
    agent = SymbolicAgent(env.unwrapped.actions)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(agent.keys(":"))  # "Things that are here:" window, then --More--
    answers = []
    while (waiting(obs) or not answers) and len(answers) < 10:
        answers.append(agent.act_key(obs))
        obs, *_ = env.step(agent.keys(answers[-1]))
    assert not waiting(obs) and answers[0] in (ENTER, ESC) and len(answers) <= 3, answers
    obs, *_ = env.step(agent.keys("i"))  # the inventory menu
    assert "(end)" in screen(obs)
    key = agent.act_key(obs)
    obs, *_ = env.step(agent.keys(key))
    assert key == ESC and not waiting(obs)


def test_watchdog_ends_a_game_walled_in_without_progress():
    rows = """
-----
|...|
-----
"""  # no exit, no stairs: exploring and searching find nothing
    env = level(rows, start=(1, 1))
    agent = SymbolicAgent(env.unwrapped.actions, watchdog=Watchdog(turn_patience=100, patience=300))
    keys, _, end = play(env, agent, 2000)
    assert end is None and agent.stop_reason().startswith("watchdog: no new score"), agent.stop_reason()
    assert 300 <= len(keys) <= 400, len(keys)  # the room is seen within a few steps; then 300 without news


def test_watchdog_fires_when_the_turn_counter_stands_still():
    dog = Watchdog(turn_patience=50, patience=10_000)
    rows = """
---
|.|
---
"""
    env = level(rows, start=(1, 1))
    agent = SymbolicAgent(env.unwrapped.actions, watchdog=dog)
    obs, _ = env.reset(seed=0)
    for i in range(60):  # noqa: B007  (i is read after the loop)
        agent.act_key(obs)  # the same observation: the game does not move on
        if agent.stop_reason():
            break
    assert i == 50 and "turn counter stayed" in agent.stop_reason()  # first step sets the turn, 50 more


def test_eval_summary_matches_a_hand_computation(tmp_path):
    res = evaluate("symbolic", 3, workers=1, env_id="nethack/NetHackScore", seed=5, out=str(tmp_path / "e.json"),
                   log=lambda *a, **k: None)
    recs = res["episodes"]
    assert [r["game"] for r in recs] == [0, 1, 2]
    scores = sorted(r["score"] for r in recs)
    s = res["summary"]
    assert s["games"] == 3 and s["median_score"] == scores[1]
    assert s["mean_score"] == pytest.approx(sum(scores) / 3)
    assert s["quantiles"]["q25"] == pytest.approx(scores[0] + 0.5 * (scores[1] - scores[0]))
    assert s["median_max_depth"] == statistics.median(r["max_depth"] for r in recs)
    assert all(set(r) >= {"score", "turns", "steps", "max_depth", "xl", "role", "end"} for r in recs)
    assert summary(recs) == {**s, "mean_cpu_seconds": pytest.approx(s["mean_cpu_seconds"])}
    assert np.isfinite(s["mean_cpu_seconds"])


def test_cli_nethack_eval_writes_records_and_summary(tmp_path, capsys):
    import json

    from chimera.cli import main

    out = tmp_path / "r.json"
    assert main(["nethack", "eval", "--agent", "random", "--episodes", "2", "--env", "nethack/NetHackScore",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["seedable"] and len(res["episodes"]) == 2 and res["summary"]["games"] == 2
    assert main(["nethack", "eval", "--agent", "neural", "--episodes", "1"]) == 2
    assert "unknown agent 'neural'" in capsys.readouterr().err
