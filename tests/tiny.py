"""A tiny tokenizer and Llama built in code, so tests need no network and no downloads."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is wide and blue.",
    "system user assistant Who are you? I am a helpful assistant.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.",
    "Translate to French: good morning -> bonjour.",
    "Once upon a time there was a small model that learned to talk.",
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A ChatML template with a default system prompt, like many chat models ship.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(extra_special: list[str] | None = None, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL + list(extra_special or [])
    core = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


#: The tiny models' shape (causal LM, reward model, other families): 2 layers, hidden 32, 4 heads.
TINY_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def build_model(vocab_size: int, seed: int = 0, **config_overrides):
    """The tiny Llama; another `seed` gives the same architecture with other weights, and
    `config_overrides` (e.g. hidden_size) another architecture."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = dict(
        vocab_size=vocab_size,
        **TINY_SIZES,
        tie_word_embeddings=False,
        eos_token_id=None,
        bos_token_id=None,
        initializer_range=0.2,  # larger than usual, so predictions depend visibly on the context
    )
    return LlamaForCausalLM(LlamaConfig(**{**config, **config_overrides}))


def save_tiny_model(directory: Path, seed: int = 0, **config_overrides) -> Path:
    """Write tokenizer + model to `directory` (a model dir llmft can load by path)."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=seed, **config_overrides)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
