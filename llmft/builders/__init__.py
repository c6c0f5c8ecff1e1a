"""One module per stage; importing this package registers every builder."""

from llmft.builders import pt, sft  # noqa: F401
from llmft.builders import rm  # noqa: F401
from llmft.builders import dpo  # noqa: F401
from llmft.builders import ppo  # noqa: F401
from llmft.builders import kto  # noqa: F401
from llmft.builders import orpo  # noqa: F401
from llmft.builders import grpo  # noqa: F401
