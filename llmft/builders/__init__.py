"""One module per stage; importing this package registers every builder."""

from llmft.builders import pt, sft  # noqa: F401
