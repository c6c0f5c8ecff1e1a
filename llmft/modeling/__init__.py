"""Loading models and tokenizers, the load guard, and adapters."""
