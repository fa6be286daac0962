"""The code sandbox: runs model-written Python code (the react tool `python`, the z3 strategy's
programs) in a separate, confined process and returns what it printed. Off unless the operator
sets PONDER_ENABLE_CODE_EXECUTION.

Every run gets a fresh interpreter (`python -I -S -B`: no site-packages, no PYTHON* variables)
in a new empty temporary folder, deleted afterwards, with an environment of a few harmless
variables (none of the server's: no PONDER_* setting, no API key) and stdin on /dev/null.
The layers, from the kernel's to Python's:

- namespaces, where `unshare` can make them without privileges (probed once, then cached):
  a new user, network, PID, mount (with its own /proc), IPC and UTS namespace. The network
  namespace has no interface but a loopback that is down, so nothing can be reached; in the
  PID namespace the server's processes cannot be seen or signalled. Where only a network
  namespace can be made, that one; where none, the audit hook alone cuts the network;
- Landlock, where the kernel has it (required for z3, see `ponder.sandbox.child`): the child
  confines itself first, then starts its interpreter afresh, to reading the standard library
  (and z3), the interpreter, the shared libraries and a few devices, and writing in its
  folder; where the kernel can, no TCP and no signals out of it either. This holds whatever
  the code does to the interpreter;
- resource limits, set by the child before the code runs: CPU seconds (the timeout, rounded
  up, plus one), address space (`code_memory_mb`), file size (1 MB), open files, no new
  processes or threads (RLIMIT_NPROC 0, which binds all but root), no core files;
- an audit hook (`sys.addaudithook`, `ponder.sandbox.child`), installed before the code:
  it refuses sockets other than AF_UNIX pairs (and any connect, bind, send or name lookup),
  subprocesses, exec, fork, spawn, signals to other processes, ctypes, hand-made or
  unmarshalled code objects, sqlite (its files escape `open`), a few low-level modules,
  extension modules from outside the standard library, links, and writing, creating or
  changing files outside the temporary folder (at most MAX_CREATED_FILES created). Files are
  read only from the standard library and that folder; folders are opened or entered only
  inside it. CPython documents audit hooks as no sandbox: this layer narrows what the code
  can do, the kernel's layers above are what hold;
- the parent enforces the wall-clock timeout by killing the child's whole process group.

Output: stdout and stderr, each cut to MAX_OUTPUT_CHARS with a note; a failure comes back as
"Error: ..." with the last line of the traceback (or the reason it was killed). The tool never
raises: problems are the observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ponder.sandbox.child import CONFINE, SETUP_FAILED
from ponder.sandbox.landlock import landlock_abi
from ponder.types import Message

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 20_000
MAX_OUTPUT_CHARS = 4000
MAX_FILE_BYTES = 1_000_000
MAX_OPEN_FILES = 64
MAX_CREATED_FILES = 200
MAX_CONCURRENT_RUNS = 2
KILL_GRACE_S = 2.0
PROBE_TIMEOUT_S = 10.0
NO_OUTPUT = "(no output: print() what you want to see)"

ISOLATION_FLAGS = (
    *("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
    *("--mount", "--mount-proc", "--ipc", "--uts"),
)
NETWORK_FLAGS = ("--user", "--map-root-user", "--net")

CHILD = str(Path(__file__).with_name("child.py"))
"""The script the child runs (`ponder.sandbox.child`): limits, audit hook, then the code."""


# ---- running one piece of code ------------------------------------------------------------


@dataclass
class Output:
    """What one stream of the child wrote: its first and last bytes (at most `cap` each)."""

    cap: int = MAX_OUTPUT_CHARS * 4  # a character is at most four bytes of UTF-8
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.cap)]

    def first(self, chars: int) -> str:
        """The beginning of the output, at most `chars` characters, with a note when cut."""
        whole = self.total == len(self.head) + len(self.tail)
        text = (self.head + self.tail if whole else self.head).decode("utf-8", "replace")
        text = text.rstrip()
        if whole and len(text) <= chars:
            return text
        note = f"[... cut: {self.total} bytes in all, the first {chars} characters shown]"
        return f"{text[:chars]}\n{note}"

    def last(self, chars: int) -> str:
        """The end of the output, at most `chars` characters, with a note when cut."""
        whole = self.total == len(self.head) + len(self.tail)
        text = (self.head + self.tail if whole else self.tail).decode("utf-8", "replace")
        text = text.rstrip()
        if whole and len(text) <= chars:
            return text
        note = f"[... cut: {self.total} bytes in all, the last {chars} characters shown]"
        return f"{note}\n{text[-chars:]}"


@dataclass(frozen=True, slots=True)
class RunResult:
    returncode: int | None
    """The child's exit status (negative: the signal that killed it); None if unknown."""
    stdout: Output
    stderr: Output
    timed_out: bool = False


_probed: dict[str, tuple[str, ...]] = {}


async def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` command line that puts the child in new namespaces: all of them where
    possible, else the network one alone, else none (empty). Probed once per process."""
    if "prefix" not in _probed:
        _probed["prefix"] = await _probe_namespaces()
    return _probed["prefix"]


async def _probe_namespaces() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare is not None:
        for flags in (ISOLATION_FLAGS, NETWORK_FLAGS):
            prefix = (unshare, *flags, "--")
            if await _starts(prefix):
                return prefix
    log.warning("no namespaces for the python tool: only its audit hook cuts the network")
    return ()


async def _starts(prefix: tuple[str, ...]) -> bool:
    try:
        process = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-I", "-S", "-c", "pass",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=_environment("/"), start_new_session=True,
        )  # fmt: skip
    except OSError:
        return False
    try:
        return await asyncio.wait_for(process.wait(), PROBE_TIMEOUT_S) == 0
    except TimeoutError:
        _kill(process)
        await asyncio.wait({asyncio.ensure_future(process.wait())}, timeout=KILL_GRACE_S)
        return False


def _environment(folder: str) -> dict[str, str]:
    """The child's whole environment: nothing of the server's."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": folder,
        "TMPDIR": folder,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL to the child's process group (it leads a session of its own) and to itself."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:  # not reaped yet, so its pid is still its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)


def _prepare(code: str) -> str:
    folder = os.path.realpath(tempfile.mkdtemp(prefix="ponder-code-"))
    with open(os.path.join(folder, "main.py"), "wb") as file:
        file.write(code.encode("utf-8", "replace"))
    return folder


def _remove(folder: str) -> None:
    """Deletes the folder, even where the code took permissions away from what it made."""
    for root, dirs, _ in os.walk(folder):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
    shutil.rmtree(folder, ignore_errors=True)


async def _capture(stream: asyncio.StreamReader, output: Output) -> None:
    while chunk := await stream.read(65536):
        output.add(chunk)


async def run_code(
    code: str,
    timeout_s: float,
    memory_mb: int,
    *,
    namespaces: bool = True,
    z3_folder: str | None = None,
) -> RunResult:
    """Runs `code` in a fresh confined child (see the module's docstring) and waits for it, at
    most `timeout_s` seconds; with `z3_folder` (see `z3_location`), z3 is loaded for it first.
    Raises OSError only when the child cannot be started."""
    prefix = await namespace_prefix() if namespaces else ()
    folder = await asyncio.to_thread(_prepare, code)
    try:
        return await _supervise(prefix, folder, timeout_s, memory_mb, z3_folder)
    finally:
        await asyncio.to_thread(_remove, folder)


async def _supervise(
    prefix: tuple[str, ...], folder: str, timeout_s: float, memory_mb: int, z3_folder: str | None
) -> RunResult:
    limits = (math.ceil(timeout_s) + 1, memory_mb * 1024 * 1024, MAX_FILE_BYTES, MAX_OPEN_FILES)
    process = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-I", "-S", "-B", CHILD, CONFINE, folder,
        *(str(limit) for limit in (*limits, MAX_CREATED_FILES)),
        *([z3_folder] if z3_folder else []),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=folder, env=_environment(folder),
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = Output(), Output()
    tasks = {
        asyncio.create_task(process.wait()),
        asyncio.create_task(_capture(process.stdout, stdout)),
        asyncio.create_task(_capture(process.stderr, stderr)),
    }
    timed_out = False
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        timed_out = bool(pending) and process.returncode is None
    finally:
        # Timed out, cancelled, or something it left behind holds its pipes: kill, then let
        # the exit and the pipes' ends arrive (so the transport closes) before going on.
        if not all(task.done() for task in tasks):
            _kill(process)
            await asyncio.wait(tasks, timeout=KILL_GRACE_S)
        for task in tasks:
            task.cancel()
    return RunResult(process.returncode, stdout, stderr, timed_out)


# ---- the tool -----------------------------------------------------------------------------


def unfence(text: str) -> str:
    """The code in `text`, without the ``` fence (and its language) or `backticks` around it."""
    code = text.strip()
    if len(code) >= 6 and code.startswith("```") and code.endswith("```"):
        code = code[3:-3]
        first, newline, rest = code.partition("\n")
        if newline and first.strip().lower() in ("", "python", "py", "python3"):
            code = rest
    elif len(code) >= 2 and code[0] == code[-1] == "`" and "\n" not in code:
        code = code[1:-1]
    return textwrap.dedent(code).strip("\n")


def observation(result: RunResult, timeout_s: float, memory_mb: int) -> str:
    """What the model reads: the output, or "Error: ..." with the reason and the output."""
    stdout = result.stdout.first(MAX_OUTPUT_CHARS)
    stderr = result.stderr.last(MAX_OUTPUT_CHARS)
    failure = _failure(result, stderr, timeout_s, memory_mb)
    parts = [] if failure is None else [f"Error: {failure}"]
    if stdout:
        parts.append(stdout if failure is None else f"[stdout]\n{stdout}")
    if stderr:
        parts.append(f"[stderr]\n{stderr}")
    return "\n".join(parts) or NO_OUTPUT


def _failure(result: RunResult, stderr: str, timeout_s: float, memory_mb: int) -> str | None:
    if result.timed_out:
        return f"timed out after {timeout_s:g} s"
    code = result.returncode
    if code == 0:
        return None
    if code is None or code < 0:
        number = -code if code is not None else signal.SIGKILL
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        if number in (signal.SIGKILL, signal.SIGXCPU):
            return f"the code was killed ({name}): it went over its CPU time or memory limit"
        if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
            return f"the Python process crashed ({name})"
        return f"the code was killed by {name}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if code == SETUP_FAILED:
        return f"the sandbox could not be set up ({last})"
    if code == 1 and last.startswith("MemoryError"):
        return f"MemoryError: the code went over its memory limit of {memory_mb} MB"
    if code == 1 and last:
        return last
    return f"the code exited with status {code}" + (f" ({last})" if last else "")


def z3_location() -> str | None:
    """The folder that holds the installed z3 package (z3-solver), for `run_code`; None when
    it is not installed, or the kernel has no Landlock to confine a child that loads it (see
    `ponder.sandbox.child`)."""
    spec = importlib.util.find_spec("z3")  # finds it without running its __init__
    if spec is None or not spec.submodule_search_locations or landlock_abi() < 1:
        return None
    return os.path.dirname(os.path.realpath(next(iter(spec.submodule_search_locations))))


class PythonTool:
    """`python[code]`: runs the model's code in a confined child process (see above), at most
    `max_concurrent` at once on a server; more wait for a slot. With `z3_folder`, the child
    loads z3 (from that folder) before the code runs, and the tool is named `z3`."""

    name = "python"

    def __init__(
        self,
        timeout_s: float,
        memory_mb: int,
        *,
        max_concurrent: int = MAX_CONCURRENT_RUNS,
        namespaces: bool = True,
        z3_folder: str | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.namespaces = namespaces
        self.z3_folder = z3_folder
        if z3_folder is not None:
            self.name = "z3"
        self._slots = asyncio.Semaphore(max_concurrent)

    @property
    def description(self) -> str:
        return (
            "runs Python code and shows what it prints (and the value of a last bare "
            "expression), e.g. python[print(sum(i * i for i in range(10)))]. Standard library "
            "only; no network, no subprocesses; files only in its own empty folder. Every run "
            f"starts afresh, with at most {self.timeout_s:g} s and {self.memory_mb} MB."
        )

    async def run(self, text: str, context: Sequence[Message]) -> str:
        code = unfence(text)
        if not code.strip():
            return "Error: no code to run"
        if len(code) > MAX_CODE_CHARS:
            return f"Error: code too long (more than {MAX_CODE_CHARS} characters)"
        try:
            async with self._slots:
                result = await run_code(
                    code,
                    self.timeout_s,
                    self.memory_mb,
                    namespaces=self.namespaces,
                    z3_folder=self.z3_folder,
                )
        except OSError as exc:
            return f"Error: the code could not be started ({exc.strerror or exc})"
        return observation(result, self.timeout_s, self.memory_mb)
