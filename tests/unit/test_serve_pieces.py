"""`llmft serve`'s pure pieces: stop strings cut answers, streamed pieces add up to the final text
(held back while they could still become a stop string or end inside a character), and request
errors read `field: problem (got value)`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmft.evaluation.generation import cut_at_stop, sampling_options
from llmft.serve.protocol import ChatRequest, CompletionRequest, validation_message
from llmft.serve.worker import TextDeltas


class CharTokenizer:
    """One token per character (ids are code points); `\ufffd` stands for a half-decoded character."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def test_cut_at_the_earliest_stop_string():
    assert cut_at_stop("abc END def STOP", ["STOP", "END"]) == ("abc ", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)
    assert cut_at_stop("abc", []) == ("abc", False)


def test_greedy_at_temperature_zero():
    assert sampling_options(0.0) == {"do_sample": False}
    assert sampling_options(0.7, 0.9) == {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 0.9}


@pytest.mark.parametrize("stop", [(), ("END",), ("lo w",)])
def test_streamed_pieces_add_up_to_the_final_text(stop):
    text = "hello world END more"
    deltas, pieces = TextDeltas(CharTokenizer(), stop), []
    ids = [ord(c) for c in text]
    for n in range(1, len(ids) + 1):
        pieces.append(deltas.update(ids[:n]))
    final = cut_at_stop(text, stop)[0]
    pieces.append(deltas.final(final))
    assert "".join(pieces) == final


def test_a_possible_stop_string_is_held_back():
    deltas = TextDeltas(CharTokenizer(), ["END"])
    assert deltas.update([ord(c) for c in "ab E"]) == "ab "  # "E" may begin END
    assert deltas.update([ord(c) for c in "ab EX"]) == "EX"  # it did not
    assert deltas.update([ord(c) for c in "ab EX\ufffd"]) == ""  # half a character: wait


def test_request_errors_name_the_field_and_the_value():
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate({"model": "m", "messages": [], "temperature": 3, "colour": 1})
    message, param = validation_message(caught.value)
    assert param == "temperature" and "messages: List should have at least 1 item" in message
    assert "temperature: Input should be less than or equal to 2 (got 3)" in message
    assert "colour: unknown field" in message
    with pytest.raises(ValidationError, match="give one prompt"):
        CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]})
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["a"]}).text == "a"
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]}],
            "stop": "x",
        }
    )
    assert request.messages[0].as_dict() == {"role": "user", "content": "hi you"} and request.stop_strings == ("x",)
