"""The conversation log (PONDER_CONVERSATION_LOG): one JSON line per request, with every
backend call, the usage and the answer; keys masked, and the privacy plugin's originals never
written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ponder.cli import main
from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.proxy.conversation_log import ConversationLog
from ponder.testing import Call
from tests.conftest import MODEL, chat, scripted, sse_events, user

KEY = "tenant-a:sk-live-0123456789abcdef"


def written(directory: Path) -> str:
    """The log's one file (one day), as text."""
    (day,) = directory.glob("*.jsonl")
    return day.read_text(encoding="utf-8")


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in written(directory).splitlines()]


async def test_each_request_is_one_line_with_every_call_and_the_answer(tmp_path: Path) -> None:
    replies = ["It is 4.", "Four: 4.", "I say 5."]
    backend = scripted(list(replies))
    settings = Settings(conversation_log=tmp_path)
    response = await chat(
        backend,
        f"sc-{MODEL}",
        settings=settings,
        messages=[user("2+2?")],
        ponder={"sc": {"samples": 3}},
    )
    assert response.status_code == 200
    (line,) = lines(tmp_path)
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["model"], line["route"]) == (
        f"sc-{MODEL}",
        {"plugins": [], "strategies": ["sc"]},
    )
    assert len(line["calls"]) == len(backend.calls) == 3
    assert [c["messages"] for c in line["calls"]] == [[{"role": "user", "content": "2+2?"}]] * 3
    assert sorted(c["choices"][0]["content"] for c in line["calls"]) == sorted(replies)
    body = response.json()
    assert line["answer"] == [{"content": "It is 4.", "finish_reason": "stop"}]
    usage = body["usage"]
    assert line["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    assert line["usage"]["completion_tokens"] == usage["completion_tokens"]
    assert sum(c["usage"]["completion_tokens"] for c in line["calls"]) == usage["completion_tokens"]
    assert all(c["seconds"] >= 0 and not c["streamed"] for c in line["calls"])


async def test_a_streamed_request_and_a_failed_one_are_logged_too(tmp_path: Path) -> None:
    settings = Settings(conversation_log=tmp_path)
    response = await chat(scripted(["Hello there."]), MODEL, settings=settings, stream=True)
    assert sse_events(response.text)
    failing = scripted([BackendUnavailable("the upstream is down")])
    failed = await chat(failing, MODEL, settings=settings)
    assert failed.status_code == 503
    streamed, broken = lines(tmp_path)
    assert streamed["calls"][0]["streamed"] is True
    assert streamed["calls"][0]["choices"][0]["content"] == "Hello there."
    assert streamed["answer"][0]["content"] == "Hello there."
    assert "answer" not in broken
    assert broken["error"].endswith("the upstream is down")
    assert broken["calls"][0]["error"].endswith("the upstream is down")


async def test_keys_are_masked(tmp_path: Path) -> None:
    settings = Settings(conversation_log=tmp_path, api_keys=[SecretStr(KEY)])
    secret = KEY.split(":", 1)[1]
    text = f"my key is {secret} and another is sk-proj-ABCDEFGHIJKLMNOPQRST"
    response = await chat(
        scripted(lambda call, i: call.prompt),
        MODEL,
        settings=settings,
        messages=[user(text)],
        headers={"authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 200
    text = written(tmp_path)
    assert secret not in text and "sk-proj-ABCDEFGHIJKLMNOPQRST" not in text
    assert "my key is ***" in text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("sk-proj-ABCDEFGHIJKLMNOPQRST", "***"),
        ('{"k":"key-0123456789abcdefXYZ"}', '{"k":"***"}'),
        ("two: pk-0123456789abcdef0123, rk-0123456789abcdef0123.", "two: ***, ***."),
        ("ark-x-sk-0123456789abcdef0123", "ark-x-***"),  # a key inside a longer key-like run
        ("desk-0123456789abcdef0123", "desk-0123456789abcdef0123"),  # not where a word starts
        ("sk-short", "sk-short"),
        ("thirty-five back-end keys", "thirty-five back-end keys"),
    ],
)
def test_what_looks_like_a_key_is_masked_where_a_word_starts(text: str, masked: str) -> None:
    assert ConversationLog(Path("unused")).mask(text) == masked


async def test_the_privacy_plugins_originals_are_never_written(tmp_path: Path) -> None:
    email = "jane.doe@example.com"

    def echo(call: Call, index: int) -> str:
        return f"Write to {call.prompt.split()[-1]}"

    response = await chat(
        scripted(echo),
        f"privacy-{MODEL}",
        settings=Settings(conversation_log=tmp_path),
        messages=[user(f"Please write to {email}")],
    )
    assert response.status_code == 200
    assert email in response.json()["choices"][0]["message"]["content"]  # restored for the client
    assert email not in written(tmp_path)
    (line,) = lines(tmp_path)
    assert line["answer"].startswith("(withheld")
    assert line["calls"][0]["messages"][-1]["content"].startswith("Please write to ")


def test_a_full_days_file_is_rotated_and_old_days_are_removed(tmp_path: Path) -> None:
    old = tmp_path / "2000-01-01.jsonl"
    old.write_text("{}\n")
    old_rotated = tmp_path / "2000-01-01.1.jsonl"
    old_rotated.write_text("{}\n")
    keep = tmp_path / "notes.txt"  # not a log file: never touched
    keep.write_text("mine")
    log = ConversationLog(tmp_path, max_bytes=1024, keep_days=30)
    for i in range(25):  # about 100 bytes a line: rotated after every ~10
        log.write({"request_id": f"r{i}", "text": "x" * 80})
    assert not old.exists() and not old_rotated.exists() and keep.exists()
    files = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    day = files[0][:10]
    in_order = (f"{day}.1.jsonl", f"{day}.2.jsonl", f"{day}.jsonl")
    assert files == sorted(in_order)
    assert all(p.stat().st_size <= 1024 for p in tmp_path.glob("*.jsonl"))
    ids = [
        json.loads(line)["request_id"]
        for name in in_order
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert ids == [f"r{i}" for i in range(25)]  # nothing lost, in order


async def test_a_log_that_cannot_be_written_fails_no_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_the_way = tmp_path / "log"
    in_the_way.write_text("a file where the log's directory should be")
    response = await chat(
        scripted(["Hello there."]), MODEL, settings=Settings(conversation_log=in_the_way)
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello there."
    assert "the conversation log could not be written" in caplog.text
    assert in_the_way.read_text() == "a file where the log's directory should be"


async def test_tool_turns_are_logged_with_their_calls_and_ids(tmp_path: Path) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        user("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = await chat(
        scripted(["It is sunny."]),
        MODEL,
        settings=Settings(conversation_log=tmp_path),
        messages=messages,
    )
    assert response.status_code == 200
    (line,) = lines(tmp_path)
    sent = line["calls"][0]["messages"]
    assert sent[1]["tool_calls"] == [{"name": "weather", "arguments": '{"city": "Paris"}'}]
    assert (sent[2]["role"], sent[2]["tool_call_id"], sent[2]["content"]) == (
        "tool",
        "call_1",
        "sunny",
    )


async def test_ponder_log_show_prints_one_request_as_a_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = scripted(["It is 4.", "Four: 4.", "I say 5."])
    response = await chat(
        backend,
        f"sc-{MODEL}",
        settings=Settings(conversation_log=tmp_path),
        messages=[user("2+2?")],
        ponder={"sc": {"samples": 3}},
    )
    request_id = response.headers["x-request-id"]
    assert main(["log", "show", request_id, "--dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"request {request_id}  sc-{MODEL}  (route sc,")
    assert "3 backend calls" in shown
    assert shown.count("user: 2+2?") == 3
    for reply in ("It is 4.", "Four: 4.", "I say 5."):
        assert f"→ {reply}" in shown
    assert shown.rstrip().endswith("└─ answer: It is 4.")
    assert main(["log", "show", request_id, "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == request_id
    assert main(["log", "show", "no-such-id", "--dir", str(tmp_path)]) == 1
    assert "no request 'no-such-id'" in capsys.readouterr().err
