"""``mujoco/Centipede-N``: a generated N-legged walker and its morphology graph.

The body is a chain of N/2 torso segments, each with a left and a right leg. A leg is a thigh
on a hip-yaw hinge and a shin on an ankle hinge; consecutive segments are joined by a yaw and a
pitch hinge. That is 2N leg actuators and N - 2 body actuators: 3N - 2 in all. The first
segment carries the free joint. Left and right joints turn about mirrored axes, so the same
angle means the same motion on both sides.

Reward per step: forward velocity of the head segment along x, minus ``ctrl_cost_weight`` times
the mean squared action (the mean, so that reward scales do not grow with N), plus
``healthy_reward`` while the head stays upright and between ``healthy_z``; the episode terminates
when it does not. Observation, like Ant's: qpos without the root's x and y, then qvel clipped
to +-10: 6N + 7 numbers.

``env.morphology`` is the graph a GNN policy reads: one node per body (types root, torso,
thigh, shin), parent-child edges typed by their end types, each node's observation indices and
actuator indices.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from chimera.envs.morphology import Morphology

LEG_SIDES = (("L", 1), ("R", -1))


def centipede_xml(n_legs: int) -> str:
    """MJCF for a centipede with ``n_legs`` legs (even, 4..40)."""
    check_legs(n_legs)
    seg_len, thigh, shin_y, shin_z = 0.6, 0.3, 0.2, 0.4

    def legs(k: int) -> str:
        out = []
        for side, s in LEG_SIDES:
            out.append(f"""
        <body name="thigh_{k}_{side}" pos="0 {0.2 * s:g} 0">
          <joint name="hip_{k}_{side}" type="hinge" axis="0 0 {s}" range="-40 40"/>
          <geom name="thigh_{k}_{side}" type="capsule" fromto="0 0 0 0 {thigh * s:g} 0" size="0.07"/>
          <body name="shin_{k}_{side}" pos="0 {thigh * s:g} 0">
            <joint name="ankle_{k}_{side}" type="hinge" axis="{-s} 0 0" range="-30 50"/>
            <geom name="shin_{k}_{side}" type="capsule" fromto="0 0 0 0 {shin_y * s:g} {-shin_z:g}" size="0.07"/>
          </body>
        </body>""")
        return "".join(out)

    def segment(k: int, n_seg: int) -> str:
        joints = "" if k == 0 else f"""
        <joint name="body_yaw_{k}" type="hinge" axis="0 0 1" range="-25 25"/>
        <joint name="body_pitch_{k}" type="hinge" axis="0 1 0" range="-20 20"/>
        <geom name="link_{k}" type="capsule" fromto="0 0 0 {seg_len:g} 0 0" size="0.07"/>"""
        root = """
        <camera name="track" mode="trackcom" pos="0 -5 3" xyaxes="1 0 0 0 0.5 0.86"/>
        <freejoint name="root"/>""" if k == 0 else ""
        inner = segment(k + 1, n_seg) if k + 1 < n_seg else ""
        pos = "0 0 0.6" if k == 0 else f"{-seg_len:g} 0 0"
        return f"""
      <body name="torso_{k}" pos="{pos}">{root}{joints}
        <geom name="torso_{k}" type="sphere" size="0.2"/>{legs(k)}{inner}
      </body>"""

    n_seg = n_legs // 2
    motors = []
    for k in range(n_seg):
        if k > 0:
            motors += [f'<motor joint="body_yaw_{k}" gear="40"/>', f'<motor joint="body_pitch_{k}" gear="40"/>']
        for side, _ in LEG_SIDES:
            motors += [f'<motor joint="hip_{k}_{side}" gear="40"/>', f'<motor joint="ankle_{k}_{side}" gear="40"/>']
    return f"""<mujoco model="centipede-{n_legs}">
  <compiler angle="degree" inertiafromgeom="true"/>
  <option timestep="0.01" integrator="implicitfast"/>
  <default>
    <joint limited="true" damping="1" armature="1"/>
    <geom contype="1" conaffinity="0" condim="3" density="5.0" friction="1 0.5 0.5" margin="0.01"
          rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.1 0.2 0.3" rgb2="0.2 0.3 0.4" width="300" height="300"/>
    <material name="grid" texture="grid" texrepeat="40 40"/>
  </asset>
  <worldbody>
    <light directional="true" pos="0 0 5" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="200 200 0.1" conaffinity="1" material="grid"/>{segment(0, n_seg)}
  </worldbody>
  <actuator>
    {chr(10).join('    ' + m for m in motors).strip()}
  </actuator>
</mujoco>
"""


def check_legs(n_legs: int) -> None:
    if not (isinstance(n_legs, int) and 4 <= n_legs <= 40 and n_legs % 2 == 0):
        raise ValueError(f"Centipede-{n_legs}: the number of legs must be even, from 4 to 40 (e.g. mujoco/Centipede-6)")


class CentipedeEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, n_legs: int = 6, frame_skip: int = 5, ctrl_cost_weight: float = 0.5,
                 healthy_reward: float = 1.0, healthy_z: tuple[float, float] = (0.22, 2.0),
                 reset_noise_scale: float = 0.1, render_mode: str | None = None, width: int = 480, height: int = 320):
        self.n_legs = n_legs
        self.model = mujoco.MjModel.from_xml_string(centipede_xml(n_legs))
        self.data = mujoco.MjData(self.model)
        self.frame_skip, self.ctrl_cost_weight, self.healthy_reward = frame_skip, ctrl_cost_weight, healthy_reward
        self.healthy_z, self.reset_noise_scale = healthy_z, reset_noise_scale
        self.dt = self.model.opt.timestep * frame_skip
        self.render_mode, self._size, self._renderer = render_mode, (height, width), None
        nq, nv, nu = self.model.nq, self.model.nv, self.model.nu
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (nq - 2 + nv,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (nu,), np.float32)
        self._head = self.model.body("torso_0").id
        self.morphology = self._morphology()

    def _morphology(self) -> Morphology:
        m = self.model
        names, types, obs, acts, edges = [], [], [], [], []
        actuator_of = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        body_node = {}
        for b in range(1, m.nbody):
            name = m.body(b).name
            kind = "root" if b == self._head else name.split("_")[0]
            body_node[b] = len(names)
            names.append(name)
            types.append(kind)
            o, a = [], []
            for j in range(m.body_jntnum[b]):
                jid = m.body_jntadr[b] + j
                qa, da = int(m.jnt_qposadr[jid]), int(m.jnt_dofadr[jid])
                if m.jnt_type[jid] == mujoco.mjtJoint.mjJNT_FREE:
                    o += list(range(0, 5)) + [m.nq - 2 + d for d in range(da, da + 6)]
                else:
                    o += [qa - 2, m.nq - 2 + da]
                    a.append(actuator_of[jid])
            obs.append(o)
            acts.append(a)
        for b in range(1, m.nbody):
            parent = int(m.body_parentid[b])
            if parent in body_node:
                p, c = body_node[parent], body_node[b]
                edges.append((p, c, f"{types[p]}-{types[c]}"))
        family = ["root-thigh", "root-torso", "thigh-shin", "torso-thigh", "torso-torso"]
        return Morphology(names, types, edges, obs, acts, self.observation_space.shape[0], m.nu, family,
                          {"n_legs": self.n_legs})

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[2:], np.clip(self.data.qvel, -10, 10)])

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        s = self.reset_noise_scale
        self.data.qpos[:] = self.model.qpos0 + self.np_random.uniform(-s, s, self.model.nq)
        self.data.qvel[:] = s * self.np_random.standard_normal(self.model.nv)
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        x0 = self.data.xpos[self._head, 0]
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        velocity = (self.data.xpos[self._head, 0] - x0) / self.dt
        z = self.data.xpos[self._head, 2]
        upright = self.data.xmat[self._head, 8] > 0  # the head's z axis points up: not on its back
        healthy = bool(self.healthy_z[0] <= z <= self.healthy_z[1] and upright and np.isfinite(self.data.qpos).all())
        ctrl_cost = self.ctrl_cost_weight * float(np.mean(np.square(action)))
        reward = velocity - ctrl_cost + (self.healthy_reward if healthy else 0.0)
        info = {"x_velocity": velocity, "reward_ctrl": -ctrl_cost, "x_position": float(self.data.xpos[self._head, 0])}
        return self._obs(), reward, not healthy, False, info

    def render(self):
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self._size)
        self._renderer.update_scene(self.data, camera="track")
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_centipede(name: str, **kwargs) -> gym.Env:
    """``Centipede-N`` -> the env under gymnasium's TimeLimit (1000 steps) and order checks."""
    try:
        n = int(name.split("-", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"mujoco/{name}: write the number of legs, e.g. mujoco/Centipede-6") from None
    check_legs(n)
    max_steps = kwargs.pop("max_episode_steps", 1000)
    env = CentipedeEnv(n, **kwargs)
    return gym.wrappers.TimeLimit(gym.wrappers.OrderEnforcing(env), max_steps)
