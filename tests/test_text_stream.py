"""TextStream: token bytes to streamable text, with stop strings and characters cut in half."""

from __future__ import annotations

import pytest

from ponder.backends.llamacpp.text import TextStream


def run(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    stream = TextStream(stop)
    sent = [stream.push(p) for p in pieces]
    return sent, stream.flush(), stream.stopped


def test_plain_text_passes_through_at_once() -> None:
    sent, rest, stopped = run([b"Hello", b" world"])
    assert sent == ["Hello", " world"] and rest == "" and not stopped


def test_a_character_cut_between_tokens_waits_for_its_other_half() -> None:
    emoji = "🙂".encode()
    sent, rest, _ = run([b"ok " + emoji[:2], emoji[2:] + b"!"])
    assert sent == ["ok ", "🙂!"]
    assert rest == ""


def test_half_a_character_at_the_end_is_dropped_not_garbled() -> None:
    emoji = "🙂".encode()
    sent, rest, _ = run([b"cut ", emoji[:3]])
    assert "".join(sent) + rest == "cut "


def test_a_stop_string_ends_the_text_and_is_not_returned() -> None:
    sent, rest, stopped = run([b"one two", b" STOP three"], stop=("STOP",))
    assert "".join(sent) + rest == "one two "
    assert stopped


def test_a_stop_string_split_across_tokens_is_caught() -> None:
    sent, rest, stopped = run([b"answer: 4", b"2\n#", b"#", b"# more"], stop=("###",))
    assert "".join(sent) + rest == "answer: 42\n"
    assert stopped


def test_a_possible_stop_prefix_is_held_back_then_released() -> None:
    stream = TextStream(("###",))
    assert stream.push(b"a #") == "a "
    assert stream.push(b"#") == ""
    assert stream.push(b" b") == "## b"
    assert stream.flush() == ""
    assert not stream.stopped


def test_held_text_comes_out_when_the_sequence_ends() -> None:
    stream = TextStream(("END",))
    assert stream.push(b"x E") == "x "
    assert stream.flush() == "E"


@pytest.mark.parametrize("split", range(1, 12))
def test_any_split_gives_the_same_text(split: int) -> None:
    data = "née <stop> after".encode()
    sent, rest, stopped = run([data[:split], data[split:]], stop=("<stop>",))
    assert "".join(sent) + rest == "née "
    assert stopped


def test_the_earliest_of_several_stop_strings_wins() -> None:
    sent, rest, _ = run([b"a B c A d"], stop=("A", "B"))
    assert "".join(sent) + rest == "a "


def test_the_stop_string_that_ended_the_text_is_known() -> None:
    stream = TextStream(("A", "B"))
    stream.push(b"a B c A d")
    assert stream.matched == "B"  # the earliest, not the first listed
    quiet = TextStream(("A",))
    quiet.push(b"no stop here")
    assert quiet.flush() == "" and quiet.matched is None
