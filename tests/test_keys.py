"""API keys from the keys file: hashed at rest, each with a tenant and permissions (learning on
or off, the strategies it may run); `ponder keys` writes the file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from ponder.cli import main
from ponder.config import Settings
from ponder.keys import (
    KeyEntry,
    Keyring,
    KeysFile,
    KeysFileError,
    digest,
    read_keys_file,
    write_keys_file,
)
from ponder.proxy import create_app
from ponder.spl_store import Store
from tests.conftest import MODEL, asgi_client, assert_error, scripted, user
from tests.test_auth_config import may_listen

KEY_A = "pk-team-a-0123456789abcdef"
KEY_B = "pk-team-b-fedcba9876543210"


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    write_keys_file(
        path,
        KeysFile(
            keys=[
                KeyEntry(
                    name="reader",
                    tenant="team-a",
                    sha256=digest(KEY_A),
                    learning=False,
                    strategies=["none", "re2", "spl", "mem", "self_consistency"],
                ),
                KeyEntry(name="writer", tenant="team-b", sha256=digest(KEY_B)),
            ]
        ),
    )
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = keys_file(tmp_path)
    text = path.read_text()
    assert KEY_A not in text and KEY_B not in text
    assert digest(KEY_A) in text
    assert path.stat().st_mode & 0o777 == 0o600
    ring = Keyring.from_settings(Settings(keys_file=path))
    reader = ring.authenticate(KEY_A)
    assert reader is not None and (reader.name, reader.tenant, reader.learning) == (
        "reader",
        "team-a",
        False,
    )
    assert ring.authenticate(KEY_A + "x") is None and ring.authenticate("") is None


def test_environment_keys_join_the_file_keys(tmp_path: Path) -> None:
    ring = Keyring.from_settings(
        Settings(keys_file=keys_file(tmp_path), api_keys="ops:pk-env-key-1234567890")
    )
    env = ring.authenticate("pk-env-key-1234567890")
    assert env is not None and (env.name, env.tenant, env.strategies) == ("env-1", "ops", None)
    assert len(ring) == 3


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("keys: [{name: a, sha256: abc}]", "64 hex digits"),
        ("keys: [{name: a, sha256: 'a" + "0" * 63 + "', colour: red}]", "keys.0.colour"),
        (
            "keys: [{name: a, sha256: 'a"
            + "0" * 63
            + "'}, {name: a, sha256: 'b"
            + "1" * 63
            + "'}]",
            "name must be unique: a",
        ),
        ("keys: [{name: 'no spaces', sha256: 'a" + "0" * 63 + "'}]", "keys.0.name"),
        ("keys: [{name: a, sha256: 'a" + "0" * 63 + "', rate_limit_per_minute: -1}]", "rate"),
        ("keys: {oops", "cannot read"),
    ],
)
def test_a_bad_keys_file_is_refused_with_its_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=problem):
        read_keys_file(path)


def test_a_key_allowing_an_unknown_strategy_stops_the_server_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    entry = KeyEntry(name="a", sha256=digest(KEY_A), strategies=["sc", "telepathy"])
    write_keys_file(path, KeysFile(keys=[entry]))
    with pytest.raises(KeysFileError, match="unknown strategies: telepathy"):
        create_app(Settings(keys_file=path), backend=scripted())


async def test_a_key_runs_only_its_strategies_and_aliases_count(tmp_path: Path) -> None:
    backend = scripted(lambda call, i: "4")
    app = create_app(Settings(keys_file=keys_file(tmp_path)), backend=backend)
    async with asgi_client(app) as c:

        async def ask(model: str, key: str) -> int:
            body = {"model": model, "messages": [user("2+2?")]}
            r = await c.post("/v1/chat/completions", json=body, headers=bearer(key))
            if r.status_code == 403:
                assert_error(r, 403, type="permission_error", param="model")
                assert "'bon'" in r.json()["error"]["message"]
            return r.status_code

        assert await ask(f"bon-{MODEL}", KEY_A) == 403
        assert len(backend.calls) == 0  # refused before any backend call
        assert await ask(f"re2-{MODEL}", KEY_A) == 200
        assert await ask(f"sc-{MODEL}", KEY_A) == 200  # allowed as self_consistency
        assert await ask(f"bon-{MODEL}", KEY_B) == 200  # no list: every strategy
        assert await ask(f"re2&bon-{MODEL}", KEY_A) == 403  # every stage must be allowed
        body = {"model": f"readurls&sc-{MODEL}", "messages": [user("2+2?")]}
        r = await c.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        assert_error(r, 403, type="permission_error", param="model")  # plugins count too
        assert "'readurls'" in r.json()["error"]["message"]


async def test_a_key_without_learning_changes_no_knowledge(tmp_path: Path, store: Store) -> None:
    backend = scripted(lambda call, i: "general" if "Classify" in call.prompt else "4")
    app = create_app(Settings(keys_file=keys_file(tmp_path)), backend=backend, store=store)
    async with asgi_client(app) as c:
        learn = await c.post(
            "/v1/chat/completions",
            json={
                "model": f"spl-{MODEL}",
                "messages": [user("2+2?")],
                "ponder": {"spl": {"learn": True}},
            },
            headers=bearer(KEY_A),
        )
        answer = await c.post(
            "/v1/chat/completions",
            json={
                "model": f"spl-{MODEL}",
                "messages": [user("2+2?")],
                "ponder": {"spl": {"answer": "4"}},
            },
            headers=bearer(KEY_A),
        )
        mem = await c.post(
            "/v1/chat/completions",
            json={"model": f"mem-{MODEL}", "messages": [user("my cat is Tom")]},
            headers=bearer(KEY_A),
        )
        feedback = await c.post(
            "/v1/ponder/feedback",
            json={"request_id": "whatever", "correct": True},
            headers=bearer(KEY_A),
        )
        mem_b = await c.post(
            "/v1/chat/completions",
            json={"model": f"mem-{MODEL}", "messages": [user("my dog is Rex")]},
            headers=bearer(KEY_B),
        )
    assert_error(learn, 403, type="permission_error", param="ponder.spl.learn")
    assert_error(answer, 403, type="permission_error", param="ponder.spl.answer")
    assert_error(feedback, 403, type="permission_error")
    assert mem.status_code == 200 and mem_b.status_code == 200
    assert store.episodes("team-a", None) == []
    assert [e.question for e in store.episodes("team-b", None)] == ["my dog is Rex"]


async def test_a_wrong_or_missing_key_is_401_and_no_key_is_echoed(tmp_path: Path) -> None:
    app = create_app(Settings(keys_file=keys_file(tmp_path)), backend=scripted())
    async with asgi_client(app) as c:
        body = {"model": MODEL, "messages": [user("hi")]}
        wrong = await c.post("/v1/chat/completions", json=body, headers=bearer(KEY_A[:-1]))
        missing = await c.post("/v1/chat/completions", json=body)
    for r in (wrong, missing):
        assert_error(r, 401, code="invalid_api_key")
        assert KEY_A[:-1] not in r.text


def test_keys_add_list_remove_and_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k" / "keys.yaml"
    args = ["keys", "add", "bot", "--file", str(path), "--tenant", "team-a", "--no-learning"]
    assert main([*args, "--strategies", "none,sc", "--rate-limit", "30"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("pk-") and len(key) > 40
    assert key not in path.read_text()
    entry = yaml.safe_load(path.read_text())["keys"][0]
    assert entry == {
        "name": "bot",
        "tenant": "team-a",
        "sha256": digest(key),
        "learning": False,
        "strategies": ["none", "sc"],
        "rate_limit_per_minute": 30,
    }

    monkeypatch.setattr("sys.stdin", io.StringIO("my-own-long-key-0001\n"))
    assert main(["keys", "hash", "own", "--file", str(path)]) == 0
    assert "my-own-long-key-0001" not in capsys.readouterr().out
    ring = Keyring.from_settings(Settings(keys_file=path))
    own = ring.authenticate("my-own-long-key-0001")
    assert own is not None and own.name == "own" and own.learning

    assert main(["keys", "add", "bot", "--file", str(path)]) == 1  # names are unique
    assert "unique" in capsys.readouterr().err

    assert main(["keys", "list", "--file", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "bot\ttenant=team-a\tlearning=off\tstrategies=none,sc\trate_limit=30" in listed
    assert key not in listed

    assert main(["keys", "remove", "bot", "--file", str(path)]) == 0
    assert [k.name for k in read_keys_file(path).keys] == ["own"]
    assert main(["keys", "remove", "bot", "--file", str(path)]) == 1


@pytest.mark.parametrize(("entries", "allowed"), [(1, True), (0, False)])
def test_a_keys_file_counts_for_listing_beyond_loopback(
    tmp_path: Path, entries: int, allowed: bool
) -> None:
    path = tmp_path / "keys.yaml"
    keys = [KeyEntry(name="a", sha256=digest(KEY_A))][:entries]
    write_keys_file(path, KeysFile(keys=keys))
    assert may_listen(Settings(host="0.0.0.0", keys_file=path)) is allowed
