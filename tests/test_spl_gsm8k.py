"""A learning run: GSM8K problems with their answers, through the running server on the real
embedded model, leaves readable strategies in the database that `ponder spl list` shows, and
keeps what the model proposed but could not be used as "rejected" learning events."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.cli import main
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Store
from ponder.testing import running_server
from tests.conftest import MODEL as DEFAULT_MODEL_ID
from tests.services import require

pytestmark = pytest.mark.integration

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
PROBLEMS = 6


def problems(count: int) -> list[tuple[str, str]]:
    if not GSM8K.exists():
        require(f"the GSM8K data at {GSM8K}")
    with GSM8K.open() as f:
        rows = [json.loads(line) for _, line in zip(range(count), f, strict=False)]
    return [(r["question"], r["answer"].split("####")[-1].strip()) for r in rows]


def readable(text: str) -> bool:
    """Prose a person can read: long enough, printable, mostly letters."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    printable = all(c.isprintable() or c in "\n\t" for c in text)
    return len(text) >= 20 and printable and letters / len(text) > 0.6


def test_learning_run_on_gsm8k_leaves_readable_strategies(
    embedded: EmbeddedBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/learn.db"
    store = Store(url)
    store.configure_tenant("default", learning=True)
    with running_server(create_app(Settings(), backend=embedded, store=store)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
        for question, answer in problems(PROBLEMS):
            completion = client.chat.completions.create(
                model=f"spl-{DEFAULT_MODEL_ID}",
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": question},
                ],
                max_tokens=128,
                temperature=0,
                extra_body={"ponder": {"spl": {"answer": answer}}},
            )
            assert completion.choices[0].message.content
            assert completion.usage is not None and completion.usage.completion_tokens > 0

    strategies = store.strategies("default")
    tried = [s for s in strategies if s.attempts]
    assert tried, "no strategy was applied"
    # every outcome came from the ground truth, and every attempt is counted
    events = store.events("default")
    outcomes = [e for e in events if e.kind in ("success", "failure")]
    assert {e.detail["source"] for e in outcomes} == {"ground_truth"}
    assert sum(s.attempts for s in strategies) == len(outcomes)
    # the learner acted on what it saw: it wrote, merged or refined strategies, or refused
    # the model's proposals for a stated reason (a 135M model mostly writes this problem's
    # numbers or its answer, which must never become a strategy)
    learned = [e for e in events if e.kind in ("refined", "merged", "rejected")] + [
        e for e in events if e.kind == "created" and e.detail.get("origin") == "learned"
    ]
    assert learned, [e.kind for e in events]
    assert all(e.detail["reason"] for e in events if e.kind == "rejected")
    for s in strategies:
        assert readable(s.text), s.text

    assert main(["spl", "list", "--database-url", url]) == 0
    listed = capsys.readouterr().out
    for s in tried:
        assert s.text.splitlines()[0][:30] in listed
    store.close()
