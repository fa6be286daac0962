"""`ponder bench`'s runner and CLI against Ponder over ScriptedBackend, served over HTTP, and
against a plain OpenAI-compatible upstream (FakeUpstream)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ponder.bench.results import JsonLines, read_results
from ponder.bench.runner import BenchConfig, run, source_code
from ponder.bench.suites import ArithSuite
from ponder.bench.types import Item
from ponder.cli import main
from ponder.config import Settings
from ponder.errors import BackendError, InvalidRequest
from ponder.proxy import create_app
from ponder.spl_store import Store
from ponder.spl_store import models as m
from ponder.testing import Call, FakeUpstream, ScriptedBackend, running_server
from ponder.tokens import count_prompt_tokens, count_tokens
from tests.conftest import MODEL, scripted

SUITE = ArithSuite()
ITEMS = SUITE.load(None, 12, 0)
BY_ID = {item.id: item for item in ITEMS}
RESULT_KEYS = {
    "approach",
    "item_id",
    "question",
    "expected",
    "answer",
    "extracted",
    "correct",
    "prompt_tokens",
    "completion_tokens",
    "backend_calls",
    "latency_s",
    "error",
    "phase",
    "code",
}


def user_text(item: Item) -> str:
    """What the suite asks for `item`: the last (user) message's text."""
    text: str = SUITE.messages(item)[-1]["content"]
    return text


def item_in(prompt: str) -> Item:
    """The item whose question `prompt` asks (re2 asks it twice)."""
    found = [item for item in ITEMS if item.question in prompt]
    assert len(found) == 1, prompt
    return found[0]


def solution(item: Item) -> str:
    """Right for the items with an even index, one too many for the others."""
    right = int(item.id.rsplit("-", 1)[1]) % 2 == 0
    value = int(item.expected) + (0 if right else 1)
    return f"Let me add it up step by step. The answer is {value}."


def solve(call: Call, index: int) -> str:
    return solution(item_in(call.prompt))


def solve_body(body: dict[str, Any], index: int) -> str:
    return solution(item_in(body["messages"][-1]["content"]))


def correct(item: Item) -> bool:
    return int(item.id.rsplit("-", 1)[1]) % 2 == 0


@contextmanager
def ponder(backend: ScriptedBackend) -> Iterator[str]:
    with running_server(create_app(Settings(), backend=backend)) as url:
        yield url


def bench(out: Path, base_url: str | None, **fields: Any) -> BenchConfig:
    fields.setdefault("limit", 4)
    return BenchConfig(suite="arith", base_url=base_url, out=out, **fields)


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - another thread's progress: nothing to await
            await asyncio.sleep(0.01)


REPORT_FILES = {"summary.md", "summary.json", "accuracy_vs_tokens.png", "latency.png"}


async def test_each_item_is_one_line_with_its_answer_tokens_and_backend_calls(
    tmp_path: Path,
) -> None:
    backend = scripted(solve)
    out = tmp_path / "run"
    with ponder(backend) as url:
        summaries = await run(
            bench(out, url, approaches=["none", "re2"], concurrency=2, model=MODEL),
            progress=False,
        )

    assert len(backend.calls) == 8  # one call per item for each approach
    results = lines(out)
    assert sorted((r["approach"], r["item_id"]) for r in results) == sorted(
        (a, item.id) for a in ("none", "re2") for item in ITEMS[:4]
    )
    for result in results:
        item = BY_ID[result["item_id"]]
        calls = [c for c in backend.calls if item.question in c.prompt]
        plain = [c for c in calls if c.prompt == user_text(item)]
        call = (
            plain[0] if result["approach"] == "none" else next(c for c in calls if c not in plain)
        )
        if result["approach"] == "none":  # the suite's messages, as they are
            assert [(msg.role, msg.text) for msg in call.messages] == [
                (msg["role"], msg["content"]) for msg in SUITE.messages(item)
            ]
        assert call.model == MODEL
        assert call.sampling.max_tokens == 256
        assert call.sampling.temperature == 0
        reply = solution(item)
        assert set(result) == RESULT_KEYS
        assert result == {
            "approach": result["approach"],
            "item_id": item.id,
            "question": item.question,
            "expected": item.expected,
            "answer": reply,
            "extracted": str(int(item.expected) + (0 if correct(item) else 1)),
            "correct": correct(item),
            "prompt_tokens": count_prompt_tokens(call.messages),
            "completion_tokens": count_tokens(reply),
            "backend_calls": 1,
            "latency_s": result["latency_s"],
            "error": None,
            "phase": "eval",
            "code": None,  # another server answered: its code is not this process's
        }
        assert 0 < result["latency_s"] < 10

    assert [(s.approach, s.items, s.correct, s.mean_backend_calls) for s in summaries] == [
        ("none", 4, 2, 1.0),
        ("re2", 4, 2, 1.0),
    ]
    assert {p.name for p in out.iterdir()} == REPORT_FILES | {"items.jsonl", "meta.json"}
    meta = json.loads((out / "meta.json").read_text())
    assert {k: v for k, v in meta.items() if k != "started"} == {
        "suite": "arith",
        "path": None,
        "limit": 4,
        "seed": 0,
        "model": MODEL,
        "approaches": ["none", "re2"],
        "base_url": url,
        "max_tokens": 256,
        "temperature": 0.0,
        "spl_train": 0,
        "ponder": None,
    }


async def hang() -> str:
    await asyncio.sleep(60)
    return "too late"


async def test_an_interrupted_run_resumes_with_the_missing_items_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = bench(out, None, limit=5, concurrency=1, model=MODEL)

    def first_reply(call: Call, index: int) -> Any:
        return hang() if len(first.calls) > 2 else solve(call, index)

    first = scripted(first_reply)
    with ponder(first) as url:
        config.base_url = url
        task = asyncio.create_task(run(config, progress=False))
        await wait_until(
            lambda: len(first.calls) == 3 and len(read_results(out / "items.jsonl")) == 2
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r["item_id"] for r in lines(out)] == [item.id for item in ITEMS[:2]]
    with (out / "items.jsonl").open("a") as handle:  # a write cut short by the interruption
        handle.write('{"approach": "none", "item_id": "arit')

    second = scripted(solve)
    with ponder(second) as url:
        config.base_url = url
        summaries = await run(config, progress=False)

    assert [item_in(c.prompt).id for c in second.calls] == [item.id for item in ITEMS[2:5]]
    results = lines(out)  # the cut line is gone: every line parses
    assert [r["item_id"] for r in results] == [item.id for item in ITEMS[:5]]
    assert all(r["answer"] == solution(BY_ID[r["item_id"]]) for r in results)
    assert [(s.approach, s.items, s.correct) for s in summaries] == [("none", 5, 3)]


async def test_a_resumed_run_may_add_approaches_but_not_change_the_run(tmp_path: Path) -> None:
    backend = scripted(solve)
    out = tmp_path / "run"
    with ponder(backend) as url:
        await run(bench(out, url, limit=2), progress=False)
        assert len(backend.calls) == 2
        before = (out / "items.jsonl").read_text()

        for change, named in [({"seed": 1}, "seed"), ({"max_tokens": 64}, "max_tokens")]:
            with pytest.raises(InvalidRequest) as refused:
                await run(bench(out, url, limit=2, **change), progress=False)
            assert refused.value.param == "--out"
            assert named in refused.value.message
            assert "Choose another --out" in refused.value.message
        with pytest.raises(InvalidRequest, match="model: 'smollm2-135m' there, 'other' now"):
            await run(bench(out, url, limit=2, model="other"), progress=False)
        assert len(backend.calls) == 2
        assert (out / "items.jsonl").read_text() == before

        summaries = await run(bench(out, url, limit=2, approaches=["re2", "none"]), progress=False)

    assert len(backend.calls) == 4  # re2 on both items; none was done
    assert [REREAD in c.prompt for c in backend.calls[2:]] == [True, True]
    assert [(s.approach, s.items) for s in summaries] == [("none", 2), ("re2", 2)]
    assert json.loads((out / "meta.json").read_text())["approaches"] == ["none", "re2"]


REREAD = "Read the question again: "


async def test_a_failed_request_is_the_items_error_and_the_run_goes_on(tmp_path: Path) -> None:
    def reply(call: Call, index: int) -> str | BackendError:
        item = item_in(call.prompt)
        return BackendError("the upstream broke") if item.id == ITEMS[1].id else solution(item)

    backend = scripted(reply)
    out = tmp_path / "run"
    with ponder(backend) as url:
        summaries = await run(bench(out, url, limit=3, retries=0), progress=False)

    assert len(backend.calls) == 3
    failed = [r for r in lines(out) if r["item_id"] == ITEMS[1].id]
    assert failed == [
        {
            "approach": "none",
            "item_id": ITEMS[1].id,
            "question": ITEMS[1].question,
            "expected": ITEMS[1].expected,
            "answer": "",
            "extracted": None,
            "correct": False,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "backend_calls": None,
            "latency_s": failed[0]["latency_s"],
            "error": "502: the upstream broke",
            "phase": "eval",
            "code": None,
        }
    ]
    assert [(s.items, s.correct, s.errors) for s in summaries] == [(3, 2, 1)]


async def test_no_more_requests_than_the_concurrency_are_in_flight(tmp_path: Path) -> None:
    backend = scripted(solve, latency_s=0.1)
    with ponder(backend) as url:
        await run(bench(tmp_path / "run", url, limit=7, concurrency=3), progress=False)
    assert len(backend.calls) == 7
    assert backend.max_in_flight == 3


async def test_a_plain_openai_compatible_upstream_has_no_backend_calls(tmp_path: Path) -> None:
    upstream = FakeUpstream(solve_body)
    out = tmp_path / "run"
    with running_server(upstream.app) as url:
        summaries = await run(bench(out, url, limit=2), progress=False)

    assert [body["messages"] for body in upstream.requests] == [
        SUITE.messages(item) for item in ITEMS[:2]
    ]
    assert {
        (body["model"], body["max_tokens"], body["temperature"], body["seed"], "ponder" in body)
        for body in upstream.requests
    } == {("fake-model", 256, 0, 0, False)}  # the model is the endpoint's first
    for result, item in zip(lines(out), ITEMS[:2], strict=True):
        prompt = sum(count_tokens(msg["content"]) for msg in SUITE.messages(item))
        assert (result["item_id"], result["backend_calls"], result["correct"]) == (
            item.id,
            None,
            correct(item),
        )
        assert (result["prompt_tokens"], result["completion_tokens"]) == (
            prompt,
            count_tokens(solution(item)),
        )
    assert [(s.items, s.correct, s.mean_backend_calls) for s in summaries] == [(2, 1, None)]
    assert json.loads((out / "meta.json").read_text())["model"] == "fake-model"


async def test_spl_train_sends_the_truth_on_the_training_split_only(tmp_path: Path) -> None:
    upstream = FakeUpstream(solve_body, model_ids=("fake-model", "spl-fake-model"))
    out = tmp_path / "run"
    with running_server(upstream.app) as url:
        summaries = await run(bench(out, url, limit=3, spl_train=2), progress=False)

    train, test = ITEMS[:2], ITEMS[2:5]
    asked = [
        (b["model"], item_in(b["messages"][-1]["content"]), b.get("ponder"))
        for b in upstream.requests
    ]
    assert asked[:2] == [
        ("spl-fake-model", item, {"spl": {"learn": True, "answer": item.expected}})
        for item in train
    ]
    assert sorted((model, item.id, str(p)) for model, item, p in asked[2:]) == sorted(
        [("fake-model", item.id, "None") for item in test]
        + [("spl-fake-model", item.id, str({"spl": {"learn": False}})) for item in test]
    )
    assert [(r["phase"], r["approach"]) for r in lines(out)][:2] == [("train", "spl")] * 2
    assert [(s.approach, s.items, s.correct) for s in summaries] == [("none", 3, 2), ("spl", 3, 2)]
    curve = json.loads((out / "summary.json").read_text())["spl_curve"]
    assert (curve["train_items"], curve["test_items"], curve["difference"]) == (2, 3, 0.0)
    assert json.loads((out / "meta.json").read_text())["approaches"] == ["none", "spl"]


async def test_spl_train_in_process_learns_from_the_training_split_in_the_run_database(
    tmp_path: Path,
) -> None:
    def reply(call: Call, index: int) -> str:
        if any(call.prompt == user_text(item) for item in ITEMS):
            return solve(call, index)
        if call.prompt.startswith("Classify"):
            return "arithmetic"
        return "Write each quantity down, then combine them one operation at a time."

    backend = scripted(reply)
    out = tmp_path / "run"
    summaries = await run(
        bench(out, None, limit=2, spl_train=2, model=MODEL), progress=False, backend=backend
    )

    store = Store(f"sqlite:///{out / 'ponder.db'}")
    try:
        with store.engine.connect() as db:
            learned = db.execute(
                select(
                    m.SplRequest.request_id,
                    m.SplRequest.query,
                    m.SplRequest.outcome,
                    m.SplRequest.outcome_source,
                )
            ).all()
    finally:
        store.close()
    # each under a stable id, from which SPL's control arm is drawn the same way on a rerun
    assert sorted(learned) == sorted(
        (f"bench-train-spl-{item.id}", user_text(item), correct(item), "ground_truth")
        for item in ITEMS[:2]
    )
    assert [(s.approach, s.items) for s in summaries] == [("none", 2), ("spl", 2)]
    assert {(r["phase"], r["approach"], r["item_id"]) for r in lines(out)} == {
        ("train", "spl", ITEMS[0].id),
        ("train", "spl", ITEMS[1].id),
        *(("eval", a, item.id) for a in ("none", "spl") for item in ITEMS[2:4]),
    }


async def test_an_in_process_run_stamps_each_result_with_the_commit_that_answered(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    await run(bench(out, None, limit=2, model=MODEL), progress=False, backend=scripted(solve))
    code = source_code()
    assert [r["code"] for r in lines(out)] == [code, code]
    if code is not None:  # run from a git checkout, as the tests are
        assert f"\n- Code (commit, items): {code} (2)\n" in (out / "summary.md").read_text()


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_code_is_the_checkouts_commit_and_says_when_its_source_changed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ponder"
    (root / "src" / "ponder").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "src" / "ponder" / "x.py").write_text("A = 1\n")
    (root / "README.md").write_text("Ponder\n")
    assert source_code(root) is None  # not a checkout yet
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = git(root, "rev-parse", "--short=7", "HEAD")
    assert source_code(root) == head
    (root / "README.md").write_text("Ponder, changed\n")  # outside src: the code is the same
    (root / "src" / "ponder" / "new.py").write_text("B = 2\n")  # untracked: not the code run
    assert source_code(root) == head
    (root / "src" / "ponder" / "x.py").write_text("A = 2\n")
    assert source_code(root) == f"{head}+changes"
    assert source_code(root / "src") is None  # not the top of the checkout


async def test_spl_train_needs_items_left_to_test_on(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="--spl-train takes 100") as refused:
        await run(bench(tmp_path / "run", "http://127.0.0.1:9/v1", limit=None, spl_train=100))
    assert refused.value.param == "--spl-train"
    assert not (tmp_path / "run").exists()


def test_read_results_refuses_a_corrupt_line_before_the_last(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"approach": "none"}\nnot json\n{"approach"')
    with pytest.raises(InvalidRequest, match="line 1 is not an item result"):
        read_results(path)


def test_cli_runs_a_bench_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = scripted(solve)
    out = tmp_path / "run"
    with ponder(backend) as url:
        code = main(
            ["bench", "--limit", "3", "--approaches", "none, re2", "--base-url", url,
             "--out", str(out), "--no-progress", "--max-tokens", "64", "--concurrency", "2"]
        )  # fmt: skip

    assert code == 0
    assert len(backend.calls) == 6
    assert {c.sampling.max_tokens for c in backend.calls} == {64}
    printed = capsys.readouterr().out
    assert "| none | 66.7% [" in printed
    assert "| re2 | 66.7% [" in printed
    assert printed.rstrip().endswith(f"Results: {out}")
    assert {p.name for p in out.iterdir()} >= REPORT_FILES
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert len(lines(out)) == 6


def test_report_only_draws_a_runs_report_again_from_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with ponder(scripted(solve)) as url:
        assert main(["bench", "--limit", "4", "--approaches", "none,re2", "--base-url", url,
                     "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    for name in ("summary.md", "summary.json", "latency.png"):
        (out / name).unlink()
    # a run stopped half-way through its second approach: the report has what it has
    kept = [line for line in (out / "items.jsonl").read_text().splitlines()
            if '"re2"' not in line or f'"{ITEMS[0].id}"' in line]  # fmt: skip
    (out / "items.jsonl").write_text("\n".join(kept) + "\n")

    assert main(["bench", "--report-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| none | 50.0% [" in printed
    assert correct(ITEMS[0]) and "| re2 | 100.0% [" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["approach"], s["items"]) for s in summary["summaries"]] == [("none", 4), ("re2", 1)]
    assert summary != json.loads(first)
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_report_only_needs_a_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--report-only", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"ponder: {tmp_path} holds no run: it has no meta.json.\n"


def test_cli_reports_a_suite_without_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["bench", "--suite", "gsm8k", "--out", str(out), "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err == "ponder: The gsm8k suite reads a JSONL file: give --path.\n"
    assert not out.exists()


async def test_an_spl_run_without_spl_skips_the_training_split(tmp_path: Path) -> None:
    """A baseline measured on an SPL run's test split, before SPL has learnt: no training."""
    upstream = FakeUpstream(solve_body, model_ids=("fake-model", "spl-fake-model"))
    out = tmp_path / "run"
    with running_server(upstream.app) as url:
        await run(bench(out, url, limit=2, spl_train=2, approaches=["none"]), progress=False)
        assert [b["model"] for b in upstream.requests] == ["fake-model"] * 2
        assert {item_in(b["messages"][-1]["content"]) for b in upstream.requests} == set(ITEMS[2:4])
        # spl added later trains first, then is tested on the same items
        await run(bench(out, url, limit=2, spl_train=2, approaches=["spl"]), progress=False)
    later = [(b["model"], item_in(b["messages"][-1]["content"])) for b in upstream.requests[2:]]
    assert later[:2] == [("spl-fake-model", item) for item in ITEMS[:2]]
    assert sorted(item.id for _, item in later[2:]) == [item.id for item in ITEMS[2:4]]
    assert json.loads((out / "meta.json").read_text())["approaches"] == ["none", "spl"]


async def test_a_run_resumes_with_another_limit_over_the_same_items(tmp_path: Path) -> None:
    """Items come in a fixed order: an approach measured on fewer items shares their prefix."""
    upstream = FakeUpstream(solve_body, model_ids=("fake-model", "re2-fake-model"))
    out = tmp_path / "run"
    with running_server(upstream.app) as url:
        await run(bench(out, url, limit=4, approaches=["none"]), progress=False)
        summaries = await run(bench(out, url, limit=2, approaches=["re2"]), progress=False)
    re2 = [item_in(b["messages"][-1]["content"]) for b in upstream.requests[4:]]
    assert sorted(item.id for item in re2) == [item.id for item in ITEMS[:2]]
    assert [(s.approach, s.items) for s in summaries] == [("none", 4), ("re2", 2)]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["limit"], meta["approaches"]) == (4, ["none", "re2"])


async def test_trace_keeps_each_requests_trace_beside_its_result(tmp_path: Path) -> None:
    backend = scripted(solve)
    out = tmp_path / "run"
    with ponder(backend) as url:
        await run(
            bench(out, url, limit=2, approaches=["none", "re2"], model=MODEL, trace=True),
            progress=False,
        )

    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert sorted((t["approach"], t["item_id"], t["phase"]) for t in traces) == sorted(
        (a, item.id, "eval") for a in ("none", "re2") for item in ITEMS[:2]
    )
    for t in traces:
        assert t["question"] == BY_ID[t["item_id"]].question
        steps = [step["step"] for step in t["trace"]]
        assert ("reread" in steps) == (t["approach"] == "re2")
    # asking for the trace changes no answer
    assert sorted((r["approach"], r["item_id"], r["correct"]) for r in lines(out)) == sorted(
        (a, item.id, correct(item)) for a in ("none", "re2") for item in ITEMS[:2]
    )


def test_a_line_cut_by_an_interruption_is_ended_before_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text('{"item_id": "a"}\n{"item_id": "b", "tra')
    writer = JsonLines(path)
    writer.write_row({"item_id": "c"})
    writer.close()
    assert path.read_text().splitlines() == [
        '{"item_id": "a"}',
        '{"item_id": "b", "tra',
        '{"item_id": "c"}',
    ]
    writer = JsonLines(path)  # a file that ends a line gets no blank line
    writer.write_row({"item_id": "d"})
    writer.close()
    assert path.read_text().endswith('"c"}\n{"item_id": "d"}\n')


async def test_the_in_process_server_ends_a_request_before_the_client_gives_up(
    tmp_path: Path,
) -> None:
    backend = scripted(solve)
    backend.hold()  # no call ever finishes
    out = tmp_path / "run"
    await run(
        bench(out, None, limit=1, timeout=1.0, retries=0, model=MODEL),
        progress=False,
        backend=backend,
    )
    (result,) = lines(out)
    # Ponder's 504 at 0.9 s, not the client's own timeout at 1 s
    assert result["error"].startswith("504: ")
    assert "deadline of 0.9 s" in result["error"]
    assert result["correct"] is False


async def test_the_runs_ponder_options_go_with_every_request_and_bind_a_resume(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(solve_body, model_ids=("fake-model", "sc-fake-model"))
    out = tmp_path / "run"
    options = {"sc": {"samples": 8, "adaptive": True}}
    with running_server(upstream.app) as url:
        await run(bench(out, url, limit=2, approaches=["sc"], ponder=options), progress=False)
        assert [b.get("ponder") for b in upstream.requests] == [options, options]
        assert json.loads((out / "meta.json").read_text())["ponder"] == options
        with pytest.raises(InvalidRequest, match=r"ponder: .* there, None now"):
            await run(bench(out, url, limit=2, approaches=["sc"]), progress=False)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("text", "message"), [("{bad", "not valid JSON"), ("[1]", "must be a JSON object")]
)
def test_cli_refuses_ponder_options_that_are_no_json_object(
    text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--ponder", text, "--no-progress"]) == 1
    assert message in capsys.readouterr().err


async def test_an_item_that_failed_is_asked_again_when_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = bench(out, None, limit=4, concurrency=1, model=MODEL, retries=0)
    failing = ITEMS[1]

    def flaky(call: Call, index: int) -> Any:
        if item_in(call.prompt).id == failing.id:
            return BackendError("the upstream broke")
        return solve(call, index)

    with ponder(scripted(flaky)) as url:
        config.base_url = url
        first = await run(config, progress=False)
    assert [(s.items, s.errors) for s in first] == [(4, 1)]

    second = scripted(solve)
    with ponder(second) as url:
        config.base_url = url
        summaries = await run(config, progress=False)
    assert [item_in(c.prompt).id for c in second.calls] == [failing.id]  # that one alone
    assert [(s.items, s.errors) for s in summaries] == [(4, 0)]
    results = lines(out)  # the failure stays in the file; the report takes the answer
    assert len(results) == 5 and results[-1]["item_id"] == failing.id
    assert not results[-1]["error"] and results[-1]["answer"] == solution(failing)
