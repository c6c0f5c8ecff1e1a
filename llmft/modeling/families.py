"""Model families llmft knows by `config.model_type`, and what the fast path may assume of each: the
one table behind the chunked loss, the fused ops, `llmft plan` and `llmft export`.

A family missing here trains on the plain path (the model's own loss and modules), and the run log
says why.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    #: The causal-LM head is a plain bias-free projection of the final hidden states (no logit
    #: soft-capping or scaling after it), so the chunked loss equals the model's own.
    plain_head: bool
    #: Its RMSNorm class, computing weight * (x / rms(x)) with the normalisation in fp32 (fused_ops).
    rms_norm: str | None = None
    #: Its MLP class, computing down(silu(gate(x)) * up(x)) with separate gate and up layers (fused_ops).
    gated_mlp: str | None = None
    #: The llama.cpp architecture `llmft export --to gguf` writes it as (`general.architecture`);
    #: None: not exported. Mistral is written as llama, as llama.cpp does.
    gguf: str | None = None

    @property
    def fuses_norm_and_mlp(self) -> bool:
        """Both the norms and the MLPs take the fused ops (what `llmft plan` models as fused)."""
        return self.rms_norm is not None and self.gated_mlp is not None


FAMILIES: dict[str, Family] = {
    "llama": Family(plain_head=True, rms_norm="LlamaRMSNorm", gated_mlp="LlamaMLP", gguf="llama"),
    "mistral": Family(plain_head=True, rms_norm="MistralRMSNorm", gated_mlp="MistralMLP", gguf="llama"),
    "qwen2": Family(plain_head=True, rms_norm="Qwen2RMSNorm", gated_mlp="Qwen2MLP", gguf="qwen2"),
    "qwen3": Family(plain_head=True, rms_norm="Qwen3RMSNorm", gated_mlp="Qwen3MLP", gguf="qwen3"),
    "phi3": Family(plain_head=True, rms_norm="Phi3RMSNorm"),  # its MLP fuses gate and up into one layer
    "gemma": Family(plain_head=True),  # its RMSNorm scales by (1 + weight), its MLP uses GELU
}
UNKNOWN = Family(plain_head=False)


def family(model_type: str | None) -> Family:
    """What the fast path may assume of `model_type` (nothing, for a type not in the table)."""
    return FAMILIES.get(model_type or "", UNKNOWN)
