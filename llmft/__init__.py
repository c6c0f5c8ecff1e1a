"""llmft: fine-tune large language models from one declarative recipe file."""

__version__ = "0.1.0"
