"""Post-training of the hybrid LM with multi-environment RL: environments (``envs``), the GRPO-family
and ESPO objectives (``losses``), multi-turn token-in / token-out rollouts on the inference engine
(``rollout``), accuracy against the thinking budget (``budget``) and the training loop (``train``)."""
