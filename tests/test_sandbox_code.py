"""The react tool `python`: model-written code in a confined child process (real subprocesses),
and the tool through the API, on only where the operator turns it on."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ponder.config import Settings
from ponder.sandbox import code as sandbox
from ponder.sandbox.code import (
    MAX_CODE_CHARS,
    MAX_OUTPUT_CHARS,
    NO_OUTPUT,
    PythonTool,
    namespace_prefix,
    unfence,
)
from ponder.strategies.react import CONTINUE
from tests.conftest import MODEL, assert_error, chat, scripted, user

REACT = f"react-{MODEL}"
STDLIB = os.path.dirname(os.path.realpath(os.__file__))


async def run(code: str, *, timeout_s: float = 5.0, memory_mb: int = 256, **kw: bool) -> str:
    return await PythonTool(timeout_s, memory_mb, **kw).run(code, [])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 that no test connection should reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    yield server
    server.close()


def assert_never_connected(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


def exists(path: str) -> bool:
    return Path(path).exists()


# ---- running code -------------------------------------------------------------------------


async def test_prints_and_arithmetic() -> None:
    assert await run("print(6*7)") == "42"
    assert await run("x = 6\nx * 7") == "42"  # a last bare expression is shown
    assert await run("```python\nfor i in range(3):\n    print(i)\n```") == "0\n1\n2"
    assert await run("`sum(range(10))`") == "45"
    assert await run("x = 1") == NO_OUTPUT


async def test_a_traceback_comes_back_as_an_error() -> None:
    text = await run("print('before')\n1/0")
    assert text == (
        "Error: ZeroDivisionError: division by zero\n"
        "[stdout]\n"
        "before\n"
        "[stderr]\n"
        "Traceback (most recent call last):\n"
        '  File "main.py", line 2, in <module>\n'
        "    1/0\n"
        "    ~^~\n"
        "ZeroDivisionError: division by zero"
    )
    syntax = await run("print(1")
    assert syntax.startswith("Error: SyntaxError: '(' was never closed\n[stderr]\n")
    assert "<string>" not in syntax
    assert await run("import sys; sys.exit(3)") == "Error: the code exited with status 3"


async def test_unfence() -> None:
    assert unfence("```py\n  x = 1\n  print(x)\n```") == "x = 1\nprint(x)"
    assert unfence("```\nprint(1)\n```") == "print(1)"
    assert unfence("```print(1)```") == "print(1)"
    assert unfence("  print('`')  ") == "print('`')"


async def test_empty_or_too_long_code_is_refused_without_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("no process should start")

    monkeypatch.setattr(sandbox, "run_code", no_run)
    assert await run("") == "Error: no code to run"
    assert await run("```python\n```") == "Error: no code to run"
    too_long = "x = 1\n" * (MAX_CODE_CHARS // 6 + 1)
    assert await run(too_long) == (f"Error: code too long (more than {MAX_CODE_CHARS} characters)")


async def test_output_is_cut() -> None:
    text = await run("print('a' * 100_000)\nimport sys; print('b' * 100_000, file=sys.stderr)")
    head, stderr = text.split("\n[stderr]\n")
    assert head == "a" * MAX_OUTPUT_CHARS + (
        f"\n[... cut: 100001 bytes in all, the first {MAX_OUTPUT_CHARS} characters shown]"
    )
    assert stderr == (
        f"[... cut: 100001 bytes in all, the last {MAX_OUTPUT_CHARS} characters shown]\n"
        + "b" * MAX_OUTPUT_CHARS
    )


# ---- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(100)"])
async def test_time_limit_kills_the_code(code: str) -> None:
    started = time.monotonic()
    text = await run(f"print('started')\n{code}", timeout_s=1)
    elapsed = time.monotonic() - started
    assert text == "Error: timed out after 1 s\n[stdout]\nstarted"
    assert 1 <= elapsed < 2.5


async def test_memory_limit() -> None:
    code = "print('before')\nx = bytearray(1024 * 1024 * 1024)"
    text = await run(code, memory_mb=128)
    assert text.startswith(
        "Error: MemoryError: the code went over its memory limit of 128 MB\n"
        "[stdout]\nbefore\n[stderr]\n"
    )
    grow = await run("parts = []\nwhile True: parts.append(' ' * 10**6)", memory_mb=128)
    assert grow.startswith("Error: MemoryError: the code went over its memory limit of 128 MB")
    assert await run("print('still fine')") == "still fine"


@pytest.mark.parametrize(
    "code",
    [
        "open({target!r}, 'w').write('x')",
        "import os; os.open({target!r}, os.O_WRONLY | os.O_CREAT)",
        "import os; os.mkdir({target!r})",
        "open('inside', 'w').write('x'); import os; os.rename('inside', {target!r})",
        "import os, shutil; shutil.copy('main.py', {target!r})",
    ],
)
async def test_writing_outside_the_folder_is_refused(code: str, tmp_path: Path) -> None:
    target = tmp_path / "escape"
    text = await run(code.format(target=str(target)))
    assert text.startswith(f"Error: PermissionError: sandbox: writing to {target} is not allowed")
    assert not target.exists()


async def test_reading_outside_the_standard_library_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("canary-secret-text")
    text = await run(f"print(open({str(secret)!r}).read())")
    assert text.startswith(f"Error: PermissionError: sandbox: reading {secret} is not allowed")
    assert "canary-secret-text" not in text.split("\n", 1)[1]
    listing = await run(f"import os; os.listdir({str(tmp_path)!r})")
    assert listing.startswith(f"Error: PermissionError: sandbox: reading {tmp_path} is not")


async def test_files_in_the_folder_then_the_folder_is_gone() -> None:
    code = (
        "import os, json\n"
        "os.mkdir('d')\n"
        "with open('d/data.json', 'w') as f: json.dump({'n': 42}, f)\n"
        "print(json.load(open('d/data.json'))['n'], sorted(os.listdir('.')))\n"
        "print(os.getcwd())"
    )
    first, folder = (await run(code)).split("\n")
    assert first == "42 ['d', 'main.py']"
    assert Path(folder).name.startswith("ponder-code-")
    assert not exists(folder)


async def test_a_huge_file_is_stopped_by_the_file_size_limit() -> None:
    text = await run("f = open('big', 'wb')\nf.write(b'x' * 2_000_000)")
    assert text.startswith("Error: OSError: [Errno 27] File too large")


# ---- network, processes, environment --------------------------------------------------------


@pytest.mark.parametrize("namespaces", [True, False])
async def test_no_network(listener: socket.socket, namespaces: bool) -> None:
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(1)\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "print('connected')"
    )
    text = await run(code, namespaces=namespaces)
    assert text.startswith("Error: PermissionError: sandbox: a network socket is not allowed")
    assert "connected" not in text
    assert_never_connected(listener)


async def test_the_network_namespace_alone_has_no_route(listener: socket.socket) -> None:
    """The kernel's layer without the audit hook: a plain interpreter in the namespaces."""
    prefix = await namespace_prefix()
    if not prefix:
        pytest.skip("no user namespaces here")
    port = listener.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    process = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-I", "-S", "-c", code, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode != 0
    assert b"Network is unreachable" in stderr
    assert_never_connected(listener)


@pytest.mark.parametrize("namespaces", [True, False])
@pytest.mark.parametrize(
    ("code", "event"),
    [
        ("import os; os.system('echo hi')", "os.system"),
        ("import subprocess; subprocess.run(['echo', 'hi'])", "subprocess.Popen"),
        ("import os; os.fork()", "os.fork"),
        ("import os; os.execv('/bin/echo', ['echo', 'hi'])", "os.exec"),
        ("import os; os.posix_spawn('/bin/echo', ['echo', 'hi'], {})", "os.posix_spawn"),
        ("import os; os.kill(os.getppid(), 9)", "os.kill"),
    ],
)
async def test_no_subprocess(code: str, event: str, namespaces: bool) -> None:
    text = await run(code, namespaces=namespaces)
    assert text.startswith(f"Error: PermissionError: sandbox: {event} is not allowed\n")
    assert "hi" not in text.split("\n")


async def test_low_level_doors_are_closed() -> None:
    refused = {
        "import ctypes": "importing ctypes",
        "import sqlite3": "importing _sqlite3",
        "import _posixsubprocess as p; p.fork_exec()": "starting a process",
        "import marshal; marshal.loads(marshal.dumps(1))": "marshal.loads",
        "compile('1', 'x', 'eval').replace(co_consts=(2,))": "building code objects",
        "import gc; gc.get_objects()": "gc.get_objects",
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))": ("resource.setrlimit"),
        "import os; os.symlink('/etc', 'etc')": "os.symlink",
        "import os; os.link('main.py', 'copy.py')": "os.link",
        "import os; os.chdir('/')": "changing to the folder /",
        "open('../escape', 'w')": "a relative path out of its folder",
        "import os; os.open(os.path.dirname(os.__file__), os.O_RDONLY)": (
            f"opening the folder {STDLIB}"
        ),
    }
    for code, what in refused.items():
        text = await run(code)
        assert text.startswith(f"Error: PermissionError: sandbox: {what} is not allowed"), code


async def test_the_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_API_KEYS", "canary-key-5f3a")
    monkeypatch.setenv("OPENAI_API_KEY", "canary-openai-9b1c")
    code = (
        f"import os\nprint(sorted(os.environ))\nprint(open('/proc/{os.getpid()}/environ').read())"
    )
    text = await run(code)
    assert "canary" not in text
    assert text.startswith(
        "Error: PermissionError: sandbox: reading /proc/"
        f"{os.getpid()}/environ is not allowed\n"
        "[stdout]\n['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']\n"
    )


# ---- the process's life -------------------------------------------------------------------


def sandbox_processes() -> list[int]:
    """The processes whose command line names a sandbox folder."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ponder-code-" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_a_cancelled_run_kills_its_process() -> None:
    task = asyncio.create_task(run("import time; time.sleep(30)"))
    for _ in range(50):
        await asyncio.sleep(0.05)
        if sandbox_processes():
            break
    assert sandbox_processes()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(40):
        if not sandbox_processes():
            break
        await asyncio.sleep(0.05)
    assert sandbox_processes() == []


async def test_runs_wait_for_a_slot() -> None:
    tool = PythonTool(5, 256, max_concurrent=1)
    code = "import time; time.sleep(0.3); print('done')"
    started = time.monotonic()
    texts = await asyncio.gather(*(tool.run(code, []) for _ in range(3)))
    assert texts == ["done"] * 3
    assert time.monotonic() - started >= 0.9


# ---- through the API ----------------------------------------------------------------------


async def test_react_runs_python_when_the_server_turns_it_on() -> None:
    replies = [
        "Thought: I will compute it.\nAction: python[print(6*7)]",
        "Thought: done.\nFinal Answer: 42",
    ]
    backend = scripted(replies)
    settings = Settings(enable_code_execution=True, code_timeout_s=5, code_memory_mb=128)
    response = await chat(
        backend,
        REACT,
        settings=settings,
        messages=[user("What is 6 times 7?")],
        ponder={"react": {"tools": ["python"]}},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "42"
    assert len(backend.calls) == 2
    first, second = backend.calls
    tool = PythonTool(5, 128)
    assert f"- python: {tool.description}" in first.messages[0].text
    assert "python[" in tool.description
    assert second.messages[2].text == "Thought: I will compute it.\nAction: python[print(6*7)]"
    assert second.prompt == f"Observation: 42\n\n{CONTINUE}"


async def test_react_refuses_python_on_a_default_server() -> None:
    backend = scripted(["Final Answer: never"])
    response = await chat(
        backend,
        REACT,
        messages=[user("What is 6 times 7?")],
        ponder={"react": {"tools": ["python"]}},
    )
    assert_error(
        response,
        403,
        type="permission_error",
        code="permission_denied",
        param="ponder.react.tools",
    )
    assert "PONDER_ENABLE_CODE_EXECUTION" in response.json()["error"]["message"]
    assert backend.calls == []
