"""The sandbox's kernel layer (Landlock) and its z3 mode: z3 loaded before the model's code, in
a child whose files the kernel confines whatever the code does (real subprocesses)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

from ponder.sandbox.code import CHILD, PythonTool, z3_location
from ponder.sandbox.landlock import landlock_abi

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="no Landlock in this kernel")

Z3 = z3_location()


def exists(path: str) -> bool:
    return os.path.exists(path)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


async def run_z3(code: str) -> str:
    assert Z3 is not None
    return await PythonTool(10, 256, z3_folder=Z3).run(code, [])


async def plain(code: str, tmp_path: Path) -> tuple[int, str]:
    """`code` in a plain interpreter (no audit hook) after `confine_files`: reads of the
    standard library, writes in `tmp_path`. The kernel's layer alone."""
    stdlib = str(Path(socket.__file__).parent)
    script = (
        f"import sys; sys.path.insert(0, {str(Path(CHILD).parent)!r})\n"
        "from landlock import confine_files\n"
        f"confine_files([{stdlib!r}, sys.executable], [{str(tmp_path)!r}])\n"
        f"{code}\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", script,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (stdout + stderr).decode()


async def test_the_kernel_layer_alone_confines_reads_and_writes(tmp_path: Path) -> None:
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    secret.write_text("the server's secret")
    try:
        code, text = await plain(f"print(open({str(secret)!r}).read())", tmp_path)
        assert code != 0 and "PermissionError" in text and "secret" not in text.split("\n")[-1]
        outside = tmp_path.parent / f"{tmp_path.name}-written.txt"
        code, text = await plain(f"open({str(outside)!r}, 'w').write('x')", tmp_path)
        assert code != 0 and "PermissionError" in text
        assert not outside.exists()
        code, text = await plain("open('inside.txt', 'w').write('x'); print('ok')", tmp_path)
        assert (code, text.strip()) == (0, "ok")
        assert (tmp_path / "inside.txt").read_text() == "x"
    finally:
        secret.unlink()


async def test_the_kernel_layer_alone_refuses_tcp_where_the_kernel_can(tmp_path: Path) -> None:
    if landlock_abi() < 4:
        pytest.skip("Landlock has no network rules in this kernel")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    try:
        port = listener.getsockname()[1]
        code, text = await plain(
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)", tmp_path
        )
        assert code != 0 and "PermissionError" in text
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


async def test_under_landlock_the_standard_library_still_loads_its_shared_libraries() -> None:
    code = "import zlib, bz2, lzma, decimal\nprint(zlib.crc32(b'ponder'), decimal.Decimal(1) / 4)"
    assert await PythonTool(10, 256).run(code, []) == "2468618432 0.25"


async def test_the_code_finds_no_ctypes_left_by_setting_up_landlock() -> None:
    code = "print([c.__name__ for c in object.__subclasses__() if 'ctypes' in c.__module__])"
    assert await PythonTool(10, 256).run(code, []) == "[]"


@pytest.mark.skipif(Z3 is None, reason="z3-solver is not installed")
async def test_z3_solves_in_the_sandbox() -> None:
    code = (
        "x, y = Ints('x y')\n"
        "s = Solver()\n"
        "s.add(x + y == 10, x - y == 2)\n"
        "print(s.check())\n"
        "m = s.model()\n"
        "print('x =', m[x], 'y =', m[y])"
    )
    assert await run_z3("from z3 import *\n" + code) == "sat\nx = 6 y = 4"


@pytest.mark.skipif(Z3 is None, reason="z3-solver is not installed")
@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("print(open('/etc/hostname').read())", "reading /etc/hostname"),
        ("open('/tmp/ponder-z3-escape', 'w')", "writing to /tmp/ponder-z3-escape"),
        ("import ctypes", "importing ctypes"),
        ("import z3; z3.z3core.ctypes.CDLL(None)", "ctypes.dlopen"),
        ("import subprocess; subprocess.run(['true'])", "subprocess.Popen"),
        ("import socket; socket.socket().connect(('127.0.0.1', 9))", "a network socket"),
        ("import numpy", "No module named 'numpy'"),
    ],
)
async def test_z3_mode_keeps_the_sandbox(code: str, refused: str) -> None:
    text = await run_z3(code)
    assert text.startswith("Error: "), text
    assert refused in text
    assert not exists("/tmp/ponder-z3-escape")


@pytest.mark.skipif(Z3 is None, reason="z3-solver is not installed")
async def test_the_kernel_holds_the_files_where_z3_writes_past_the_audit_hook() -> None:
    """z3's C library opens files itself (its log), which no audit event sees: Landlock is what
    stops it."""
    escape = "/tmp/ponder-z3-log-escape"
    remove(escape)
    code = (
        f"import z3\nz3.open_log({escape!r})\n"
        "s = z3.Solver(); s.add(z3.Int('x') > 1); print(s.check())"
    )
    assert await run_z3(code) == "sat"  # outside the sandbox, this writes the log file
    assert not exists(escape)
