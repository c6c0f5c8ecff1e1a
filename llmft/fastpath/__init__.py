"""The fast path for the next-token stages (those whose traits say `fast_path`: pt, sft): what llmft
does by default, and why, when it can. Its decision (`decide`), its kernels and its trainer pieces
live here; `llmft plan` sizes its passes (`llmft.plan.passes`).

Its parts, each on by default where it computes the same loss as the plain path, each with its
recipe switch, and each reported in the run log (and by `llmft plan`) with the reason it was or
was not taken:

- padding-free batches (`data.padding_free`): a micro-batch's examples are concatenated into one
  row, positions restarting per example; no pad token is computed and no example sees another.
- per-example attention: with SDPA, `llmft_sdpa_varlen` runs one causal kernel per example
  (`llmft.fastpath.varlen_attention`); eager builds the block-diagonal mask from the positions,
  flash-attention 2 uses its variable-length kernel.
- chunked cross-entropy (`training.chunked_loss`): the output projection runs only on supervised
  positions, a chunk at a time, and no [tokens, vocabulary] logits are kept (`llmft.fastpath.chunked_loss`).
- fused RMSNorm and SwiGLU (`training.fused_ops`) that keep less for backward (`llmft.fastpath.fused_ops`),
  their outputs rebuilt in backward rather than kept as the next layers' inputs (`llmft.fastpath.recompute`).
- micro-batches cut into passes of at most `training.max_tokens_per_forward` tokens at example
  boundaries (`llmft.fastpath.passes`): the same gradient with one pass's activations alive at a time.
  `auto` cuts only when the memory plan says whole micro-batches do not fit the machine: each pass
  streams every weight from memory again (~0.15 s for SmolLM2-135M on 2 CPU cores).
- kto's KL replies scored after their prompts' keys and values kept from the reply pass, not with
  the prompt again (`llmft.fastpath.kl_replies`, `llmft.fastpath.prompt_cache`).
- rollout sampling (grpo, ppo; `training.fused_ops`): LoRA layers merged into a copy for each
  `generate` call, a prompt repeated across rows prefilled once (`llmft.fastpath.sampling`).
"""
