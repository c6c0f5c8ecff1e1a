"""llmft's own RLHF machinery: the PPO math as small pure functions (`stats`, `gae`, `kl`,
`losses`), rollouts (`rollout`), the value head (`value_head`) and the PPO trainer
(`ppo_trainer`). Importing this package imports nothing heavy."""
