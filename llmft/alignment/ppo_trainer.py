"""PPO against a reward model or rule rewards (Ziegler et al. 2019; Ouyang et al. 2022), llmft's own trainer.

One iteration:
  1. take `rollout_batch_size` prompts; sample one reply each from the policy (stopping at the
     template's end-of-turn tokens);
  2. score each (prompt, reply) with the reward model or the rule rewards (`llmft.alignment.scorers`);
  3. with no gradient: log-probs of the reply tokens under the policy and the reference, and the
     value head's predictions;
  4. per-token rewards: -kl_coef * (logp - ref_logp) on every reply token, plus the score on the
     last one; GAE advantages (whitened) and returns;
  5. `ppo_epochs` passes over the rollouts in shuffled minibatches of `mini_batch_size` (each split
     into forward chunks of `training.micro_batch_size`), one optimizer step per minibatch on
     clipped policy loss + vf_coef * clipped value loss;
  6. update the KL coefficient (adaptive control) and log.

The reference is the policy with its LoRA adapter disabled (LoRA: no second model in memory) or a
frozen copy (full). The value model is a linear head on the policy's last hidden states. Dropout
is switched off in the policy: with dropout the rollout and training log-probs would differ and
the ratio would not start at 1.

Satisfies `llmft.builders.protocol.TrainerLike`; `state.global_step` counts PPO iterations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmft.alignment.gae import gae
from llmft.alignment.kl import kl_controller, kl_penalised_rewards
from llmft.alignment.losses import policy_loss, value_loss
from llmft.alignment.rollout import (
    Prompt,
    Rollout,
    Sampling,
    cat_padded,
    forward_replies,
    generate,
)
from llmft.alignment.scorers import Scorer
from llmft.alignment.stats import masked_mean, whiten
from llmft.alignment.value_head import ValueHead, hidden_size
from llmft.checkpoint import checkpoint_guard, drop_manifest
from llmft.modeling.precision import autocast_dtype

log = logging.getLogger("llmft")

#: log_history keys, in the order a log line shows them
LOG_KEYS = (
    "reward",
    "kl",
    "kl_coef",
    "entropy",
    "clipfrac",
    "policy_loss",
    "value_loss",
    "loss",
    "value_clipfrac",
    "approx_kl",
    "non_score_reward",
    "reward_std",
    "reply_length",
    "stopped",
    "rollout_tokens_per_s",
    "learning_rate",
)


def new_state(max_steps: int, logging_steps: int) -> Any:
    """What `run.train` and trainer_state.json need: a transformers TrainerState."""
    from transformers import TrainerState

    return TrainerState(max_steps=max_steps, logging_steps=logging_steps, global_step=0, epoch=0.0)


class PpoTrainer:
    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        scorer: Scorer,
        stage: Any,  # llmft.config.stage.PpoStage
        args: Any,  # transformers.TrainingArguments (optimizer, schedule, cadence, seed, output_dir)
        train_prompts: Sequence[Prompt],
        stop_ids: Sequence[int],
        eval_prompts: Sequence[Prompt] | None = None,
        ref_model: Any = None,
        precision: str = "fp32",
        callbacks: Sequence[Any] = (),
        lora_plus_ratio: float | None = None,  # LoRA+: the B matrices at learning_rate x this (`llmft.modeling.lora_plus`)
    ):
        from transformers import set_seed

        if not train_prompts:
            raise ValueError("PPO needs at least one training prompt")
        if ref_model is None and not hasattr(model, "disable_adapter"):
            raise ValueError("without a reference model the policy must be a peft model (its adapter disabled is the reference)")
        set_seed(args.seed)
        self.args = args
        self.stage = stage
        self.tokenizer = tokenizer
        self.precision = precision
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu")
        self.model = model.to(self.device)
        disabled = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
        for module in disabled:
            module.p = 0.0
        if disabled:
            log.info("ppo: dropout switched off in %d modules (log-prob ratios must start at exactly 1)", len(disabled))
        if args.gradient_checkpointing:  # active in training mode only; rollouts generate with the KV cache
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5 names it so
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = ref_model.to(self.device).eval().requires_grad_(False)
        self.value_head = ValueHead(hidden_size(model)).to(self.device)
        self.scorer = scorer
        self.train_prompts = list(train_prompts)
        self.eval_prompts = list(eval_prompts) if eval_prompts else None
        self.stop_ids = list(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.sampling = Sampling(stage.max_new_tokens, stage.temperature, stage.top_k, stage.top_p)
        self.kl_ctl = kl_controller(stage.kl_control, stage.kl_coef, stage.target_kl, stage.kl_horizon)
        self.callbacks = list(callbacks)

        self.generator = torch.Generator().manual_seed(args.seed)
        self._order: list[int] = []
        self._cursor = 0
        self._seen = 0
        if args.max_steps and args.max_steps > 0:
            self.iterations = int(args.max_steps)
        else:
            self.iterations = max(1, math.ceil(args.num_train_epochs * len(self.train_prompts) / stage.rollout_batch_size))
        self.optimizer_steps = self.iterations * stage.ppo_epochs * (stage.rollout_batch_size // stage.mini_batch_size)
        self.micro_batch_size = min(args.per_device_train_batch_size, stage.mini_batch_size)
        self.state = new_state(self.iterations, args.logging_steps)
        self._build_optimizer(lora_plus_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    # --- setup ---------------------------------------------------------------------------

    def _build_optimizer(self, lora_plus_ratio: float | None) -> None:
        from transformers import Trainer, get_scheduler

        from llmft.modeling.lora_plus import param_groups

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        named += [(f"value_head.{n}", p) for n, p in self.value_head.named_parameters()]
        self.params = [p for _, p in named]
        # weight decay on matrices, none on vectors; LoRA+ B matrices in groups of their own
        groups = param_groups(named, self.args.learning_rate, self.args.weight_decay, lora_plus_ratio)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = cls(groups, **kwargs)
        self.scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=self.args.get_warmup_steps(self.optimizer_steps),
            num_training_steps=self.optimizer_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs or {},
        )

    def _autocast(self) -> Any:
        dtype = autocast_dtype(self.precision)
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def _reference(self) -> tuple[Any, Any]:
        """(model, context) giving reference log-probs: the frozen copy, or (LoRA) the policy
        inside a context with its adapter disabled. A fresh context each call."""
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        return self.model, self.model.disable_adapter()

    def _next_prompts(self) -> list[Prompt]:
        """The next `rollout_batch_size` prompts of a seeded shuffle, reshuffled every epoch."""
        batch = []
        while len(batch) < self.stage.rollout_batch_size:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(len(self.train_prompts), generator=self.generator).tolist()
                self._cursor = 0
            batch.append(self.train_prompts[self._order[self._cursor]])
            self._cursor += 1
            self._seen += 1
        return batch

    @property
    def epoch(self) -> float:
        return self._seen / len(self.train_prompts)

    # --- rollouts -----------------------------------------------------------------------

    def _decode(self, reply: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[list[int]]]:
        """Each reply's text (without its stop token) and its tokens (with it)."""
        texts, ids = [], []
        for row, row_mask in zip(reply.tolist(), mask.tolist()):
            tokens = [t for t, m in zip(row, row_mask) if m]
            ids.append(tokens)
            text = self.tokenizer.decode([t for t in tokens if t not in self.stop_ids], skip_special_tokens=True)
            texts.append(text.strip())
        return texts, ids

    def _score(self, prompts: Sequence[Prompt], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
        texts, ids = self._decode(batch["reply"], batch["reply_mask"])
        return self.scorer(prompts, texts, ids).float().to(self.device), texts

    def _sample(self, prompts: Sequence[Prompt], sampling: Sampling) -> dict[str, torch.Tensor]:
        """Replies for `prompts`, generated in chunks of mini_batch_size, joined into one batch."""
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for start in range(0, len(prompts), self.stage.mini_batch_size):
            with self._autocast():
                out = generate(
                    self.model,
                    prompts[start : start + self.stage.mini_batch_size],
                    sampling,
                    self.stop_ids,
                    self.pad_id,
                    self.device,
                )
            for key, value in out.items():
                parts[key].append(value)
        return {
            "query": cat_padded(parts["query"], "left", self.pad_id),
            "query_mask": cat_padded(parts["query_mask"], "left"),
            "reply": cat_padded(parts["reply"], "right", self.pad_id),
            "reply_mask": cat_padded(parts["reply_mask"], "right"),
        }

    @torch.no_grad()
    def make_rollout(self, prompts: Sequence[Prompt]) -> tuple[Rollout, list[str]]:
        started = time.perf_counter()
        batch = self._sample(prompts, self.sampling)
        mask = batch["reply_mask"]
        self.generation_seconds = time.perf_counter() - started
        logprobs, ref_logprobs, values = [], [], []
        for start in range(0, len(prompts), self.stage.mini_batch_size):
            rows = slice(start, start + self.stage.mini_batch_size)
            inputs = (batch["query"][rows], batch["query_mask"][rows], batch["reply"][rows], mask[rows], self.stage.temperature)
            with self._autocast():
                _, lp, v = forward_replies(self.model, *inputs, value_head=self.value_head)
                ref_model, ref_context = self._reference()
                with ref_context:
                    _, ref_lp, _ = forward_replies(ref_model, *inputs)
            logprobs.append(lp.float())
            ref_logprobs.append(ref_lp.float())
            values.append(v.float())
        fmask = mask.float()
        logprobs, ref_logprobs = torch.cat(logprobs) * fmask, torch.cat(ref_logprobs) * fmask
        values = torch.cat(values) * fmask
        scores, texts = self._score(prompts, batch)
        rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value)
        if self.stage.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, self.stage.gamma, self.stage.lam)
        advantages = whiten(advantages, mask)
        rollout = Rollout(
            batch["query"],
            batch["query_mask"],
            batch["reply"],
            mask,
            logprobs,
            ref_logprobs,
            values,
            scores,
            rewards,
            kl,
            advantages,
            returns,
        )
        return rollout, texts

    # --- optimisation -------------------------------------------------------------------

    def optimise(self, rollout: Rollout) -> dict[str, float]:
        """ppo_epochs passes of shuffled minibatches; returns the mean of each statistic."""
        stage = self.stage
        self.model.train()
        totals: dict[str, list[float]] = defaultdict(list)
        size = rollout.reply.shape[0]
        for _ in range(stage.ppo_epochs):
            order = torch.randperm(size, generator=self.generator).to(self.device)
            for start in range(0, size, stage.mini_batch_size):
                rows = order[start : start + stage.mini_batch_size]
                tokens = rollout.reply_mask[rows].sum().clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                step: dict[str, float] = defaultdict(float)
                for micro in range(0, len(rows), self.micro_batch_size):
                    b = rollout.select(rows[micro : micro + self.micro_batch_size])
                    mask = b.reply_mask
                    with self._autocast():
                        entropy, logprobs, values = forward_replies(
                            self.model, b.query, b.query_mask, b.reply, mask, stage.temperature, self.value_head
                        )
                    pg, clipfrac = policy_loss(logprobs, b.logprobs, b.advantages, mask, stage.cliprange)
                    vl, vclipfrac = value_loss(values, b.values, b.returns, mask, stage.cliprange_value)
                    loss = pg + stage.vf_coef * vl
                    weight = mask.sum() / tokens  # token-weighted: the minibatch loss is a mean over its tokens
                    self.scaler.scale(loss * weight).backward()
                    with torch.no_grad():
                        w = float(weight)
                        step["policy_loss"] += w * float(pg)
                        step["value_loss"] += w * float(vl)
                        step["loss"] += w * float(loss)
                        step["clipfrac"] += w * float(clipfrac)
                        step["value_clipfrac"] += w * float(vclipfrac)
                        step["entropy"] += w * float(masked_mean(entropy, mask))
                        step["approx_kl"] += w * float(0.5 * masked_mean((logprobs - b.logprobs) ** 2, mask))
                self.scaler.unscale_(self.optimizer)
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                for key, value in step.items():
                    totals[key].append(value)
        self.model.eval()
        return {key: sum(values) / len(values) for key, values in totals.items()}

    def step(self) -> dict[str, float]:
        """One PPO iteration: rollout, optimisation, KL control. Returns its statistics."""
        prompts = self._next_prompts()
        kl_coef = self.kl_ctl.value
        rollout, _ = self.make_rollout(prompts)
        stats = self.optimise(rollout)
        mask = rollout.reply_mask
        lengths = mask.sum(1)
        last = rollout.reply.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        kl_per_reply = rollout.kl.sum(1)
        stats.update(
            reward=float(rollout.scores.mean()),
            reward_std=float(rollout.scores.std()) if len(rollout.scores) > 1 else 0.0,
            kl=float(kl_per_reply.mean()),
            non_score_reward=float((-kl_coef * kl_per_reply).mean()),
            reply_length=float(lengths.float().mean()),
            # generated reply tokens per second of sampling (batched, KV cache, each row stopping at its end of turn)
            rollout_tokens_per_s=float(mask.sum()) / max(self.generation_seconds, 1e-9),
            stopped=float(torch.isin(last, torch.as_tensor(self.stop_ids, device=last.device)).float().mean()),
            kl_coef=kl_coef,
            **self.scorer.metrics(),
        )
        self.kl_ctl.update(stats["kl"], len(prompts))
        # prompt and reply tokens of the rollout: what the progress bar's tokens/s counts
        self.state.num_input_tokens_seen += int(rollout.query_mask.sum() + mask.sum())
        return stats

    # --- the TrainerLike protocol ---------------------------------------------------------

    def train(self, resume_from_checkpoint: Any = None) -> Any:
        from transformers import TrainerControl
        from transformers.trainer_utils import TrainOutput

        if resume_from_checkpoint:
            raise ValueError("llmft's PPO trainer cannot resume from a checkpoint yet")
        self.control = TrainerControl()
        self._event("on_train_begin")
        log.info(
            "ppo: %d iterations x %d prompts (%d train prompts), %d optimizer steps, kl %s (coef %.4g)",
            self.iterations,
            self.stage.rollout_batch_size,
            len(self.train_prompts),
            self.optimizer_steps,
            self.stage.kl_control,
            self.kl_ctl.value,
        )
        started = time.perf_counter()
        if self.eval_prompts and self.args.eval_on_start:
            self.evaluate()
        window: list[dict[str, float]] = []
        losses = []
        for iteration in range(1, self.iterations + 1):
            epoch_before = int(self.epoch)
            stats = self.step()
            losses.append(stats["loss"])
            self.state.global_step = iteration
            self.state.epoch = self.epoch
            self._event("on_step_end")
            window.append(stats)
            if iteration == 1 or iteration % self.args.logging_steps == 0 or iteration == self.iterations:
                self._log(self._summarise(window))
                window = []
            epoch_ended = int(self.epoch) > epoch_before
            if self.eval_prompts and self._due(self.args.eval_strategy, self.args.eval_steps, iteration, epoch_ended):
                self.evaluate()
            if self._due(self.args.save_strategy, self.args.save_steps, iteration, epoch_ended):
                self._save_checkpoint(iteration)
        runtime = time.perf_counter() - started
        last = next((h for h in reversed(self.state.log_history) if "reward" in h), {})
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(self._seen / runtime, 3) if runtime else 0.0,
            "train_loss": sum(losses) / len(losses),
            "train_reward": last.get("reward"),
            "train_kl": last.get("kl"),
            "epoch": self.epoch,
        }
        self._event("on_train_end")
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def _summarise(self, window: list[dict[str, float]]) -> dict[str, float]:
        keys = [k for k in LOG_KEYS if k in window[-1]] + sorted(k for k in window[-1] if k.startswith("rewards/"))
        out = {k: sum(s[k] for s in window) / len(window) for k in keys}
        out["kl_coef"] = window[-1]["kl_coef"]  # the coefficient of the latest rollout
        out["learning_rate"] = self.scheduler.get_last_lr()[0]
        out["epoch"] = round(self.epoch, 4)
        return out

    @staticmethod
    def _due(strategy: Any, every: int | None, iteration: int, epoch_ended: bool) -> bool:
        strategy = getattr(strategy, "value", strategy)
        if strategy == "steps":
            return bool(every) and iteration % int(every) == 0
        return strategy == "epoch" and epoch_ended

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._event("on_log", logs=logs)

    def _event(self, name: str, **kwargs: Any) -> None:
        control = getattr(self, "control", None)
        for callback in self.callbacks:
            getattr(callback, name)(self.args, self.state, control, **kwargs)

    def _save_checkpoint(self, iteration: int) -> None:
        """The model, tokenizer, value head and state into checkpoint-N/; then the callbacks' on_save
        (`llmft.callbacks.CompleteCheckpoints`) writes its manifest and rotates older ones, as for
        the Trainer's checkpoints. A failed write is a UserError naming the directory."""
        directory = Path(self.args.output_dir) / f"checkpoint-{iteration}"
        drop_manifest(directory)  # a checkpoint-N/ left by an earlier run: not complete while rewritten
        with checkpoint_guard(directory):
            self.save_model(str(directory))
            self.state.save_to_json(str(directory / "trainer_state.json"))
        self._event("on_save")

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[Prompt] | None = None) -> dict[str, float]:
        """Mean score of greedy replies to the eval prompts (or `prompts`)."""
        prompts = list(prompts) if prompts is not None else self.eval_prompts
        if not prompts:
            raise ValueError("no eval prompts: set data.eval or data.eval_split")
        batch = self._sample(prompts, Sampling(self.stage.max_new_tokens, greedy=True))
        scores, _ = self._score(prompts, batch)
        metrics = {
            "eval_reward": float(scores.mean()),
            "eval_reply_length": float(batch["reply_mask"].sum(1).float().mean()),
            **{f"eval_{k}": v for k, v in self.scorer.metrics().items()},
        }
        self._log(metrics)
        return metrics

    def save_model(self, output_dir: str | None = None) -> None:
        """The adapter (LoRA) or the full model as safetensors, the tokenizer, and the value head."""
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        self.value_head.save(out)

    def save_state(self) -> None:
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        self.state.save_to_json(str(Path(self.args.output_dir) / "trainer_state.json"))

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        out = Path(self.args.output_dir)
        (out / f"{split}_results.json").write_text(json.dumps(metrics, indent=4, sort_keys=True))
        if combined:
            path = out / "all_results.json"
            merged = json.loads(path.read_text()) if path.exists() else {}
            merged.update(metrics)
            path.write_text(json.dumps(merged, indent=4, sort_keys=True))
