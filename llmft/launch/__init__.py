"""Launching llmft on several processes or machines, and DeepSpeed ZeRO."""
