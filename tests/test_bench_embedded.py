"""`ponder bench` end to end: a small arith bench on the real embedded model behind the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ponder.bench.runner import BenchConfig, run
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import running_server

if TYPE_CHECKING:
    from ponder.backends.llamacpp import EmbeddedBackend

pytestmark = pytest.mark.integration


async def test_arith_bench_on_the_embedded_model(embedded: EmbeddedBackend, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with running_server(create_app(Settings(), backend=embedded)) as url:
        config = BenchConfig(
            suite="arith",
            limit=10,
            approaches=["none", "re2"],
            base_url=url,
            out=out,
            max_tokens=64,
            concurrency=4,
        )
        summaries = await run(config, progress=False)

    assert [(s.approach, s.items, s.errors) for s in summaries] == [("none", 10, 0), ("re2", 10, 0)]
    assert all(s.mean_backend_calls == 1.0 for s in summaries)
    results = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(results) == 20
    assert len({(r["approach"], r["item_id"]) for r in results}) == 20
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in results)
    assert all(r["answer"] and r["error"] is None for r in results)

    body = json.loads((out / "summary.json").read_text())
    assert [s["approach"] for s in body["summaries"]] == ["none", "re2"]
    assert body["meta"]["model"] == "smollm2-135m"  # the endpoint's first model
    table = (out / "summary.md").read_text()
    assert "| none |" in table and "| re2 |" in table
    for plot in ("accuracy_vs_tokens.png", "latency.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
