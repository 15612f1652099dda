"""Reinforcement learning: agents with a recurrent hybrid core, GAE, PPO-clip and ESPO, and the
multi-environment learner."""
