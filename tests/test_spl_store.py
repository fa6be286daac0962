"""The SPL and memory store on real SQLite and PostgreSQL: schema, transactions, counters,
versioned edits, the strategy lifecycle and tenant isolation."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, select, text, update

from ponder.errors import Conflict, InvalidRequest, NotFound
from ponder.spl_store import PROBLEM_TYPES, Draft, Lifecycle, Store
from ponder.spl_store import models as m


@pytest.fixture
def any_store(database_url: str) -> Iterator[Store]:
    """A fresh store on each real database, deciding by the fixed rates (no control arm)."""
    rules = Lifecycle(promote_after=2, retire_after=4, retire_rate=0.3, max_per_type=2, explore=0)
    s = Store(database_url, rules)
    yield s
    s.close()


def active(store: Store, tenant: str, text: str, problem_type: str = "arithmetic") -> int:
    record = store.add_strategy(tenant, Draft(problem_type, text, status="active"))
    assert record is not None
    return record.id


def outcome(store: Store, tenant: str, request_id: str, ids: list[int], correct: bool) -> None:
    store.record_request(tenant, request_id, "arithmetic", "2+2?", "4", ids)
    store.record_outcome(tenant, request_id, correct, "ground_truth")


# ---- schema --------------------------------------------------------------------------------


def test_migrations_build_exactly_the_models_and_seed_the_problem_types(any_store: Store) -> None:
    with any_store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), m.Base.metadata)
        seeded = dict(conn.execute(text("SELECT name, description FROM problem_types")).all())
    assert diff == []
    assert seeded == PROBLEM_TYPES
    assert len(PROBLEM_TYPES) == 16


def test_opening_twice_migrates_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    first = Store(url)
    first_id = active(first, "t", "Estimate first.")
    first.close()
    again = Store(url)
    assert [s.id for s in again.strategies("t")] == [first_id]
    again.close()


def test_sqlite_runs_in_wal_mode_and_writes_begin_immediate(store: Store) -> None:
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    statements.clear()
    active(store, "t", "Check units.")
    assert statements[0] == "BEGIN IMMEDIATE"
    statements.clear()
    store.strategies("t")
    assert statements[0] == "BEGIN"


def test_default_location_is_the_user_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert Store().url == "sqlite:////srv/data/ponder/ponder.db"


# ---- outcomes and counters -----------------------------------------------------------------


def test_outcome_counts_one_attempt_and_feedback_corrects_a_judgement(any_store: Store) -> None:
    sid = active(any_store, "t", "Work right to left.")
    any_store.record_request("t", "r1", "arithmetic", "12*3?", "36", [sid])
    assert any_store.record_outcome("t", "r1", False, "judge").applied
    fixed = any_store.record_outcome("t", "r1", True, "feedback")
    assert (fixed.applied, fixed.outcome, fixed.source) == (True, True, "feedback")
    # the same feedback again, and a judgement after feedback, change nothing
    assert not any_store.record_outcome("t", "r1", True, "feedback").applied
    assert not any_store.record_outcome("t", "r1", False, "judge").applied
    record = any_store.strategy("t", sid)
    assert (record.attempts, record.successes) == (1, 1)
    kinds = [e.kind for e in any_store.events("t", sid)]
    assert kinds == ["success", "failure", "created"]
    (example,) = any_store.examples("t", sid)
    assert (example.query, example.answer, example.correct) == ("12*3?", "36", True)


def test_ground_truth_is_never_overridden(any_store: Store) -> None:
    sid = active(any_store, "t", "Work right to left.")
    outcome(any_store, "t", "r1", [sid], True)
    assert not any_store.record_outcome("t", "r1", False, "feedback").applied
    assert any_store.strategy("t", sid).successes == 1


def test_outcome_for_an_unknown_or_foreign_request_is_not_found(any_store: Store) -> None:
    sid = active(any_store, "a", "Work right to left.")
    any_store.record_request("a", "r1", "arithmetic", "q", "a", [sid])
    with pytest.raises(NotFound):
        any_store.record_outcome("b", "r1", True, "feedback")
    with pytest.raises(NotFound):
        any_store.record_outcome("a", "nope", True, "feedback")
    assert any_store.strategy("a", sid).attempts == 0


# ---- lifecycle -----------------------------------------------------------------------------


def test_candidate_is_promoted_after_enough_successes(any_store: Store) -> None:
    cand = any_store.add_strategy("t", Draft("arithmetic", "Estimate, then compute."))
    assert cand is not None and cand.status == "candidate"
    outcome(any_store, "t", "r1", [cand.id], True)
    assert any_store.strategy("t", cand.id).status == "candidate"
    outcome(any_store, "t", "r2", [cand.id], True)
    assert any_store.strategy("t", cand.id).status == "active"
    assert any_store.events("t", cand.id)[0].kind == "promoted"


def test_review_mode_holds_promotion_for_an_operator(any_store: Store) -> None:
    any_store.configure_tenant("t", review=True)
    cand = any_store.add_strategy("t", Draft("arithmetic", "Estimate, then compute."))
    assert cand is not None
    for i in range(3):
        outcome(any_store, "t", f"r{i}", [cand.id], True)
    assert any_store.strategy("t", cand.id).status == "candidate"
    approved = any_store.set_status("t", cand.id, "active", kind="approved")
    assert approved.status == "active"
    assert any_store.events("t", cand.id)[0].kind == "approved"


def test_weak_strategy_is_retired_and_the_cap_keeps_the_best(any_store: Store) -> None:
    weak = active(any_store, "t", "Guess.")
    for i in range(4):
        outcome(any_store, "t", f"w{i}", [weak], i == 0)  # 1 of 4: below 0.3
    assert any_store.strategy("t", weak).status == "retired"
    good, fair = active(any_store, "t", "Write it down."), active(any_store, "t", "Draw it.")
    outcome(any_store, "t", "g", [good], True)
    third = active(any_store, "t", "Say it aloud.")  # a third active one, over max_per_type=2
    statuses = {s.id: s.status for s in any_store.strategies("t")}
    assert statuses[good] == "active"
    assert sorted([statuses[fair], statuses[third]]) == ["active", "retired"]
    assert [s.status for s in any_store.strategies("t", statuses=["active"])].count("active") == 2


def test_candidates_per_type_are_capped(store: Store) -> None:
    made = [store.add_strategy("t", Draft("logic", f"Idea number {i}.")) for i in range(4)]
    assert [r is not None for r in made] == [True, True, True, False]
    assert store.add_strategy("t", Draft("algebra", "Isolate x.")) is not None


def test_bad_input_is_an_invalid_request(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="unknown problem type"):
        store.add_strategy("t", Draft("astrology", "Look up."))
    with pytest.raises(InvalidRequest, match="must not be empty"):
        store.add_strategy("t", Draft("logic", "   "))
    with pytest.raises(InvalidRequest, match="status"):
        store.set_status("t", active(store, "t", "x" * 30, "logic"), "deleted", kind="x")  # type: ignore[arg-type]


# ---- versioned edits -----------------------------------------------------------------------


def test_edit_with_a_stale_version_is_a_conflict_and_keeps_the_other_edit(any_store: Store) -> None:
    sid = active(any_store, "t", "Version one.")
    assert any_store.edit_text("t", sid, "Version two.", expected_version=1).version == 2
    with pytest.raises(Conflict, match="version 2, not 1"):
        any_store.edit_text("t", sid, "Lost update.", expected_version=1)
    assert any_store.strategy("t", sid).text == "Version two."


def test_concurrent_edits_of_one_version_exactly_one_wins(any_store: Store) -> None:
    sid = active(any_store, "t", "Version one.")
    start = threading.Barrier(8)

    def edit(i: int) -> bool:
        start.wait()
        try:
            any_store.edit_text("t", sid, f"Edit {i}.", expected_version=1)
        except Conflict:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(edit, range(8)))
    assert wins.count(True) == 1
    record = any_store.strategy("t", sid)
    assert record.version == 2 and record.text == f"Edit {wins.index(True)}."


# ---- tenants -------------------------------------------------------------------------------


def test_a_tenant_never_reads_or_changes_another_tenants_rows(any_store: Store) -> None:
    sid = active(any_store, "a", "Tenant A's secret method.")
    assert any_store.strategies("b") == []
    for attempt in (
        lambda: any_store.strategy("b", sid),
        lambda: any_store.edit_text("b", sid, "hijacked", expected_version=1),
        lambda: any_store.set_status("b", sid, "retired", kind="retired"),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert any_store.strategy("a", sid).text == "Tenant A's secret method."
    assert any_store.events("b") == []


def test_starter_set_is_seeded_once_per_tenant(any_store: Store) -> None:
    drafts = [Draft("logic", "Write down what is known.", status="active")]
    assert any_store.seed("a", drafts) == 1
    assert any_store.seed("a", drafts) == 0
    assert any_store.seed("b", drafts) == 1
    assert any_store.tenant("a").seeded
    assert [s.origin for s in any_store.strategies("a")] == ["starter"]


# ---- memory episodes -----------------------------------------------------------------------


def test_episodes_are_capped_and_aged_per_tenant(any_store: Store) -> None:
    def add(tenant: str, i: int) -> int:
        return any_store.add_episode(
            tenant, "c", f"r{i}", f"q{i}", f"a{i}", b"\0" * 8,
            max_episodes=3, max_age=dt.timedelta(days=1),
        )  # fmt: skip

    ids = [add("a", i) for i in range(5)]
    add("b", 0)
    assert [e.id for e in any_store.episodes("a")] == ids[:1:-1]
    with any_store.engine.begin() as conn:
        conn.execute(
            update(m.Episode)
            .where(m.Episode.id == ids[2])
            .values(created_at=m.utcnow() - dt.timedelta(days=2))
        )
    newest = add("a", 5)
    assert [e.id for e in any_store.episodes("a")] == [newest, ids[4], ids[3]]
    assert len(any_store.episodes("b")) == 1
    assert any_store.clear_episodes("a") == 3 and any_store.episodes("b")


# ---- concurrency ---------------------------------------------------------------------------


def test_concurrent_outcomes_lose_no_counter_update(any_store: Store) -> None:
    """32 threads x 20 rounds of learning outcomes against one strategy: every attempt and
    every success is counted, every id is distinct, and no call fails."""
    sid = active(any_store, "t", "Write each step.")
    workers, rounds = 32, 20
    start = threading.Barrier(workers)

    def learner(w: int) -> int:
        start.wait()
        wins = 0
        for r in range(rounds):
            correct = (w + r) % 3 != 0
            any_store.record_request("t", f"{w}-{r}", "arithmetic", "q", "a", [sid])
            any_store.record_outcome("t", f"{w}-{r}", correct, "ground_truth")
            wins += correct
        return wins

    with ThreadPoolExecutor(workers) as pool:
        successes = sum(pool.map(learner, range(workers)))
    record = any_store.strategy("t", sid)
    assert (record.attempts, record.successes) == (workers * rounds, successes)
    with any_store.engine.connect() as conn:
        request_ids = conn.execute(select(m.SplRequest.id)).scalars().all()
        outcome_events = conn.execute(
            select(m.LearningEvent.id).where(m.LearningEvent.kind.in_(["success", "failure"]))
        )
        event_ids = outcome_events.scalars().all()
    assert len(request_ids) == len(set(request_ids)) == workers * rounds
    assert len(event_ids) == len(set(event_ids)) == workers * rounds


def test_a_superseded_strategy_passes_on_nothing_but_its_link(store: Store) -> None:
    parent = active(store, "t", "1. Add the parts.\n2. Check the sum.")
    outcome(store, "t", "r1", [parent], False)
    child = store.supersede(
        "t", parent, "1. Add the parts twice.", expected_version=1, kind="refined"
    )
    assert (child.status, child.parent_id, child.attempts, child.origin) == (
        "active",
        parent,
        0,
        "refined",
    )
    old = store.strategy("t", parent)
    assert (old.status, old.attempts, old.version) == ("retired", 1, 2)
    # a retired strategy is not superseded again, even at its current version
    with pytest.raises(Conflict, match=r"at version 2 \(retired\)"):
        store.supersede("t", parent, "1. Something else.", expected_version=2, kind="merged")
    assert [s.id for s in store.strategies("t", statuses=["active"])] == [child.id]
