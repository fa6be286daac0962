"""`ponder spl ...` and `ponder memory ...` against a real SQLite store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ponder.cli import main
from ponder.errors import Conflict
from ponder.intervals import difference_interval, z_for
from ponder.spl_store import Draft, ImportEntry, Lifecycle, Store

ARITH = "Write down every intermediate result.\nCheck the units at the end."
LOGIC = "List the known facts before deducing anything."


def cli(capsys: pytest.CaptureFixture[str], store: Store, *argv: str) -> tuple[int, str, str]:
    """Run `ponder argv... --database-url <store's>`; (exit code, stdout, stderr)."""
    code = main([*argv, "--database-url", store.url])
    out, err = capsys.readouterr()
    return code, out, err


def seed(store: Store) -> tuple[int, int, int]:
    """Tenant default: an arithmetic candidate (2/3), an active logic strategy; tenant other:
    one strategy that default must never see."""
    a = store.add_strategy(
        "default", Draft("arithmetic", ARITH, attempts=3, successes=2), origin="learned"
    )
    b = store.add_strategy("default", Draft("logic", LOGIC, status="active"), origin="starter")
    c = store.add_strategy("other", Draft("logic", "Other tenant's secret."), origin="learned")
    assert a and b and c
    return a.id, b.id, c.id


def snapshot(store: Store, tenant: str = "default") -> tuple[object, ...]:
    """Everything an import could change for `tenant`."""
    return (
        [
            (s.id, s.text, s.status, s.version, s.attempts, s.successes, s.origin)
            for s in store.strategies(tenant)
        ],
        [(e.id, e.kind) for e in store.events(tenant)],
    )


# ---- list and show ------------------------------------------------------------------------


def test_list_is_a_table_sorted_by_type(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    a, b, _ = seed(store)
    code, out, err = cli(capsys, store, "spl", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATUS", "SUCCESS", "VERSION", "TEXT"]
    assert lines[1].split() == [
        str(a),
        "arithmetic",
        "candidate",
        "67%",
        "(2/3)",
        "1",
        *ARITH.splitlines()[0].split(),
        "...",
    ]
    assert lines[2].split() == [str(b), "logic", "active", "-", "(0/0)", "1", *LOGIC.split()]
    assert len(lines) == 3  # the other tenant's strategy is not listed
    assert "secret" not in out


def test_list_filters_and_json(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    a, b, _ = seed(store)
    code, out, _ = cli(capsys, store, "spl", "list", "--status", "active", "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["id"] for d in data] == [b]
    assert data[0] | {"created_at": None, "updated_at": None} == {
        "id": b,
        "problem_type": "logic",
        "status": "active",
        "origin": "starter",
        "parent_id": None,
        "version": 1,
        "attempts": 0,
        "successes": 0,
        "success_rate": None,
        "text": LOGIC,
        "created_at": None,
        "updated_at": None,
    }
    code, out, _ = cli(capsys, store, "spl", "list", "--type", "arithmetic", "--json")
    assert [(d["id"], d["success_rate"]) for d in json.loads(out)] == [(a, 2 / 3)]
    code, out, _ = cli(capsys, store, "spl", "list", "--tenant", "nobody")
    assert (code, out) == (0, "no strategies\n")


def test_show_prints_every_field_the_text_and_history(
    capsys: pytest.CaptureFixture[str], store: Store
) -> None:
    a, _, _ = seed(store)
    store.set_status("default", a, "active", kind="approved")
    code, out, _ = cli(capsys, store, "spl", "show", str(a))
    assert code == 0
    assert f"id:           {a}\n" in out
    for line in (
        "problem_type: arithmetic",
        "status:       active",
        "origin:       learned",
        "version:      1",
        "attempts:     3",
        "successes:    2",
        "success_rate: 67% (2/3)",
    ):
        assert line in out.splitlines()
    assert "text:\n  Write down every intermediate result.\n  Check the units at the end.\n" in out
    history = out.split("history (2 events, newest first, UTC):\n")[1].splitlines()
    assert [h.split()[2] for h in history] == ["approved", "created"]
    assert "before=candidate" in history[0]

    code, out, _ = cli(capsys, store, "spl", "show", str(a), "--json")
    shown = json.loads(out)
    assert shown["text"] == ARITH
    assert [e["kind"] for e in shown["events"]] == ["approved", "created"]


def test_show_of_another_tenants_strategy_is_not_found(
    capsys: pytest.CaptureFixture[str], store: Store
) -> None:
    _, _, other = seed(store)
    code, out, err = cli(capsys, store, "spl", "show", str(other))
    assert (code, out) == (1, "")
    assert err == f"ponder: no strategy {other} for this tenant\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["spl", "approve", "seven"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["spl", "list", "--status", "sleeping"])
    assert exc.value.code == 2


# ---- export and import --------------------------------------------------------------------


def test_export_yaml_is_readable_and_editable(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    a, b, _ = seed(store)
    path = tmp_path / "s.yaml"
    code, out, _ = cli(capsys, store, "spl", "export", str(path))
    assert code == 0
    assert out == f"exported 2 strategies of tenant default to {path}\n"
    raw = path.read_text()
    assert "  text: |-\n    Write down every intermediate result.\n    Check the units" in raw
    doc = yaml.safe_load(raw)
    assert list(doc) == ["tenant", "exported_at", "strategies"]
    assert doc["tenant"] == "default"
    assert dt.datetime.fromisoformat(doc["exported_at"]).tzinfo is not None
    assert doc["strategies"] == [
        {
            "id": a,
            "problem_type": "arithmetic",
            "status": "candidate",
            "version": 1,
            "attempts": 3,
            "successes": 2,
            "text": ARITH,
        },
        {
            "id": b,
            "problem_type": "logic",
            "status": "active",
            "version": 1,
            "attempts": 0,
            "successes": 0,
            "text": LOGIC,
        },
    ]


def test_export_json_and_stdout(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    a, b, _ = seed(store)
    cli(capsys, store, "spl", "export", str(tmp_path / "s.json"))
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [s["id"] for s in doc["strategies"]] == [a, b]
    code, out, _ = cli(capsys, store, "spl", "export", "-")
    assert code == 0
    assert [s["text"] for s in yaml.safe_load(out)["strategies"]] == [ARITH, LOGIC]
    code, _, err = cli(capsys, store, "spl", "export", str(tmp_path / "s.txt"))
    assert code == 1
    assert "must end in .yaml, .yml or .json" in err


@pytest.mark.parametrize("name", ["s.yaml", "s.json"])
def test_export_then_import_unchanged_changes_nothing(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path, name: str
) -> None:
    seed(store)
    path = str(tmp_path / name)
    cli(capsys, store, "spl", "export", path)
    before = snapshot(store)
    code, out, err = cli(capsys, store, "spl", "import", path)
    assert (code, err) == (0, "")
    assert out == "tenant default: 0 added, 0 updated, 2 unchanged\n"
    assert snapshot(store) == before


def test_import_applies_an_edited_text_and_status(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    a, b, _ = seed(store)
    path = tmp_path / "s.yaml"
    cli(capsys, store, "spl", "export", str(path))
    doc = yaml.safe_load(path.read_text())
    doc["strategies"][0]["text"] = "Show each step.\nThen check it.\n"
    doc["strategies"][0]["attempts"] = 99  # live counters are not taken from the file
    doc["strategies"][1]["status"] = "retired"
    path.write_text(yaml.safe_dump(doc))

    code, out, _ = cli(capsys, store, "spl", "import", str(path))
    assert code == 0
    assert out == f"tenant default: 0 added, 2 updated, 0 unchanged\nupdated: {a}, {b}\n"
    edited = store.strategy("default", a)
    assert (edited.text, edited.version, edited.attempts) == (
        "Show each step.\nThen check it.",
        2,
        3,
    )
    latest = store.events("default", a)[0]
    assert (latest.kind, latest.detail) == ("edited", {"version": 2, "source": "import"})
    retired = store.strategy("default", b)
    assert (retired.status, retired.version) == ("retired", 1)
    assert store.events("default", b)[0].kind == "retired"

    # importing the same file again is now stale for the edited one, but unchanged: no error
    code, out, _ = cli(capsys, store, "spl", "import", str(path))
    assert (code, out) == (0, "tenant default: 0 added, 0 updated, 2 unchanged\n")


def test_import_with_a_stale_version_is_a_conflict_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    a, _, _ = seed(store)
    path = tmp_path / "s.yaml"
    cli(capsys, store, "spl", "export", str(path))
    store.edit_text("default", a, "Someone else's refinement.", expected_version=1)
    doc = yaml.safe_load(path.read_text())
    doc["strategies"].insert(0, {"problem_type": "logic", "text": "A new one."})
    doc["strategies"][1]["text"] = "My edit."
    path.write_text(yaml.safe_dump(doc))
    before = snapshot(store)

    code, out, err = cli(capsys, store, "spl", "import", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"ponder: strategy {a} is at version 2, but the file has version 1")
    assert snapshot(store) == before  # neither the edit nor the new entry was written
    assert store.strategy("default", a).text == "Someone else's refinement."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "sleeping"}, "field 'status': Input should be 'candidate', 'active' or"),
        ({"problem_type": "astrology"}, "field 'problem_type': unknown problem type 'astrology'"),
        ({"text": "   "}, "field 'text': must not be empty"),
        ({"colour": "red"}, "field 'colour': Extra inputs are not permitted"),
        ({"successes": 9}, "successes must not exceed attempts"),
    ],
)
def test_an_invalid_file_names_entry_and_field_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    store: Store,
    tmp_path: Path,
    change: dict[str, object],
    message: str,
) -> None:
    seed(store)
    path = tmp_path / "s.yaml"
    cli(capsys, store, "spl", "export", str(path))
    doc = yaml.safe_load(path.read_text())
    doc["strategies"][0]["text"] = "A valid edit that must not be applied."
    doc["strategies"].append({"problem_type": "logic", "text": "A valid new entry."})
    doc["strategies"][1] |= change
    path.write_text(yaml.safe_dump(doc))
    before = snapshot(store)

    code, out, err = cli(capsys, store, "spl", "import", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"ponder: {path}: strategies[1] (id ")
    assert message in err
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("strategies: [", "not valid YAML"),
        ("tenant: x\n", "field 'strategies': Field required"),
        ("- 1\n", "Input should be a valid dictionary"),
    ],
)
def test_an_unreadable_file_is_an_error(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(content)
    code, _, err = cli(capsys, store, "spl", "import", str(path))
    assert code == 1
    assert err.startswith(f"ponder: {path}: ")
    assert message in err
    code, _, err = cli(capsys, store, "spl", "import", str(tmp_path / "missing.yaml"))
    assert (code, err) == (1, f"ponder: {tmp_path / 'missing.yaml'}: No such file or directory\n")


def test_import_adds_new_entries_with_their_counters(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    _, _, other = seed(store)
    path = tmp_path / "new.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "strategies": [
                    {
                        "problem_type": "coding",
                        "status": "active",
                        "attempts": 4,
                        "successes": 3,
                        "text": "Write the tests first.",
                    },
                    # an id of another tenant: a new strategy here, the other row untouched
                    {"id": other, "version": 1, "problem_type": "logic", "text": "Copied."},
                ]
            }
        )
    )
    code, out, _ = cli(capsys, store, "spl", "import", str(path))
    assert code == 0
    assert out.startswith("tenant default: 2 added, 0 updated, 0 unchanged\nadded: ")
    added = [s for s in store.strategies("default") if s.origin == "imported"]
    assert [
        (s.problem_type, s.status, s.attempts, s.successes, s.version, s.text) for s in added
    ] == [
        ("coding", "active", 4, 3, 1, "Write the tests first."),
        ("logic", "candidate", 0, 0, 1, "Copied."),
    ]
    assert all(store.events("default", s.id)[0].kind == "imported" for s in added)
    assert store.strategy("other", other).text == "Other tenant's secret."


def test_import_cannot_move_a_strategy_to_another_type(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    a, _, _ = seed(store)
    path = tmp_path / "s.yaml"
    cli(capsys, store, "spl", "export", str(path))
    doc = yaml.safe_load(path.read_text())
    doc["strategies"][0]["problem_type"] = "algebra"
    path.write_text(yaml.safe_dump(doc))
    before = snapshot(store)
    code, _, err = cli(capsys, store, "spl", "import", str(path))
    assert code == 1
    assert err.startswith(f"ponder: strategy {a}: its problem type is 'arithmetic'")
    assert snapshot(store) == before


# ---- decisions and settings ---------------------------------------------------------------


def test_approve_and_retire(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    a, _, other = seed(store)
    code, out, _ = cli(capsys, store, "spl", "approve", str(a))
    assert (code, out) == (0, f"strategy {a}: candidate -> active\n")
    assert store.strategy("default", a).status == "active"
    assert store.events("default", a)[0].kind == "approved"
    code, out, _ = cli(capsys, store, "spl", "approve", str(a))
    assert (code, out) == (0, f"strategy {a} is already active\n")
    assert len(store.events("default", a)) == 2

    code, out, _ = cli(capsys, store, "spl", "retire", str(a))
    assert (code, out) == (0, f"strategy {a}: active -> retired\n")
    assert store.strategy("default", a).status == "retired"
    assert store.events("default", a)[0].kind == "retired"

    code, _, err = cli(capsys, store, "spl", "retire", str(other))
    assert (code, err) == (1, f"ponder: no strategy {other} for this tenant\n")
    assert store.strategy("other", other).status == "candidate"


def test_learn_on_off_and_listing(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    code, out, _ = cli(capsys, store, "spl", "learn")
    assert (code, out) == (0, "no tenants configured: learning is off for every tenant\n")

    code, out, _ = cli(capsys, store, "spl", "learn", "--tenant", "acme", "on", "--review")
    assert (code, out) == (0, "tenant acme: learning on, review on\n")
    assert (store.tenant("acme").learning, store.tenant("acme").review) == (True, True)

    code, out, _ = cli(capsys, store, "spl", "learn", "--tenant", "acme", "off")
    assert out == "tenant acme: learning off, review on\n"
    assert (store.tenant("acme").learning, store.tenant("acme").review) == (False, True)

    cli(capsys, store, "spl", "learn", "on", "--no-review")
    assert (store.tenant("default").learning, store.tenant("default").review) == (True, False)

    code, out, _ = cli(capsys, store, "spl", "learn")
    assert out == "tenant acme: learning off, review on\ntenant default: learning on, review off\n"


# ---- memory -------------------------------------------------------------------------------


def remember(store: Store, tenant: str, conversation: str, request_id: str, question: str) -> int:
    return store.add_episode(
        tenant,
        conversation,
        request_id,
        question,
        "an answer",
        b"",
        max_episodes=100,
        max_age=dt.timedelta(days=1),
    )


def test_memory_list_and_clear(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    first = remember(store, "default", "alice", "r1", "What is the capital of France?")
    second = remember(store, "default", "bob", "r2", "How tall is\nMont Blanc?")
    third = remember(store, "default", "alice", "r3", "x" * 100)
    remember(store, "other", "alice", "r4", "Other tenant's question")
    store.episode_outcome("default", "r1", True)

    code, out, _ = cli(capsys, store, "memory", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CONVERSATION", "CREATED", "(UTC)", "OUTCOME", "QUESTION"]
    assert [line.split()[0] for line in lines[1:]] == [str(third), str(second), str(first)]
    assert lines[1].endswith("x" * 57 + "...")
    assert lines[2].split()[4:] == ["-", "How", "tall", "is", "..."]
    assert lines[3].endswith("  correct  What is the capital of France?")

    code, out, _ = cli(capsys, store, "memory", "list", "--conversation", "alice", "--limit", "1")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(third)]
    code, out, _ = cli(capsys, store, "memory", "list", "--json", "--conversation", "bob")
    assert [(e["id"], e["question"], e["outcome"]) for e in json.loads(out)] == [
        (second, "How tall is\nMont Blanc?", None)
    ]

    code, out, _ = cli(capsys, store, "memory", "clear", "--conversation", "alice")
    assert (code, out) == (0, "deleted 2 episodes of tenant default (conversation alice)\n")
    assert [e.id for e in store.episodes("default")] == [second]
    code, out, _ = cli(capsys, store, "memory", "clear")
    assert out == "deleted 1 episode of tenant default (all conversations)\n"
    assert store.episodes("default") == []
    assert len(store.episodes("other")) == 1
    code, out, _ = cli(capsys, store, "memory", "list")
    assert out == "no episodes\n"


# ---- the Store methods behind import and the UI, on both databases ------------------------


@pytest.fixture
def db_store(database_url: str) -> Iterator[Store]:
    s = Store(database_url, Lifecycle(max_per_type=2))
    yield s
    s.close()


def test_import_strategies_is_one_transaction(db_store: Store) -> None:
    a, b, _ = seed(db_store)
    before = snapshot(db_store)
    entries = [
        ImportEntry("coding", "New one."),
        ImportEntry("arithmetic", "Edited.", "candidate", id=a, version=1),
        ImportEntry("logic", "Edited too.", "active", id=b, version=7),  # stale
    ]
    with pytest.raises(Conflict, match=f"strategy {b} is at version 1"):
        db_store.import_strategies("default", entries)
    assert snapshot(db_store) == before

    result = db_store.import_strategies("default", entries[:2])
    assert (len(result.added), result.updated, result.unchanged) == (1, (a,), ())
    assert db_store.strategy("default", a).version == 2


def test_import_keeps_the_active_cap(db_store: Store) -> None:
    _, b, _ = seed(db_store)  # one active logic strategy; max_per_type is 2
    result = db_store.import_strategies(
        "default",
        [
            ImportEntry("logic", "Strong.", "active", attempts=10, successes=9),
            ImportEntry("logic", "Weak.", "active", attempts=10, successes=4),
        ],
    )
    weak = [s.id for s in db_store.strategies("default") if s.text == "Weak."]
    assert result.capped == tuple(weak)
    assert db_store.strategy("default", b).status == "active"
    assert [s.text for s in db_store.strategies("default", "logic", ["active"])] == [
        LOGIC,
        "Strong.",
    ]


def test_history_is_per_strategy_newest_first_and_per_tenant(db_store: Store) -> None:
    a, b, other = seed(db_store)
    for version in (1, 2, 3):
        db_store.edit_text("default", a, f"Text {version}", expected_version=version)
    history = db_store.history("default", [a, b, other], per_strategy=2)
    assert [(e.kind, e.detail.get("version")) for e in history[a]] == [
        ("refined", 4),
        ("refined", 3),
    ]
    assert [e.kind for e in history[b]] == ["created"]
    assert history[other] == []  # another tenant's strategy: no events shown
    assert db_store.history("default", []) == {}


def test_an_unusable_database_is_an_error_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["spl", "list", "--database-url", "nonsense://u:secret@host/db"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("ponder: the database failed: ")
    assert "secret" not in err


def test_show_compares_the_strategy_with_its_types_baseline(
    capsys: pytest.CaptureFixture[str], store: Store
) -> None:
    a, _, _ = seed(store)  # 2 of 3
    code, out, _ = cli(capsys, store, "spl", "show", str(a))
    assert "baseline:     none yet with no strategies (the control arm of its type)" in out
    assert "vs baseline:  no baseline (too few control outcomes or attempts to compare)" in out
    for i in range(10):
        store.record_request("default", f"c{i}", "arithmetic", "q", "a", [], control=True)
        store.record_outcome("default", f"c{i}", i < 4, "ground_truth")
    code, out, _ = cli(capsys, store, "spl", "show", str(a))
    assert code == 0
    assert "baseline:     40% (4/10) with no strategies (the control arm of its type)" in out
    # 2/3 against 4/10: +26.7 points, with Newcombe's 80% interval
    low, high = difference_interval(4, 10, 2, 3, z_for(0.8))
    shown = f"+26.7 points, 80% interval [{low * 100:+.1f}, {high * 100:+.1f}]: unclear"
    assert f"vs baseline:  {shown}" in out.splitlines()
    code, out, _ = cli(capsys, store, "spl", "show", str(a), "--json")
    against = json.loads(out)["against_baseline"]
    assert against["baseline"] == {"attempts": 10, "successes": 4, "rate": 0.4}
    assert (against["verdict"], against["confidence"]) == ("unclear", 0.8)
    assert against["interval"] == pytest.approx([low, high])
