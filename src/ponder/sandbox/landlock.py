"""Landlock, the kernel's own file confinement, for the sandbox's child (`ponder.sandbox.child`):
`confine_files` restricts the calling process, and all it starts, to reading some paths and
writing others, and where the kernel can, to no TCP and no signals out of it. Standard library
only: the child's first stage loads this file by its path, before it confines itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Landlock (linux/landlock.h): the system calls (the same numbers on every architecture) and
# the access rights, by the ABI version that brought them.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
PR_SET_NO_NEW_PRIVS = 38
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
"""The rights a rule on a file (not a folder) may grant."""
NET_TCP = 3  # bind and connect (ABI 4)
SCOPE_ALL = 3  # abstract unix sockets and signals (ABI 6)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (too old, or turned off)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        ctypes.c_long(LANDLOCK_CREATE_RULESET),
        ctypes.c_void_p(None),
        ctypes.c_long(0),
        ctypes.c_long(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(0, int(version))


def confine_files(reads: Iterable[str], writes: Iterable[str]) -> None:
    """Restricts this process, and all it starts, to reading `reads` and reading and writing
    `writes` (files or folders, with what is beneath them), and where the kernel can, to no
    TCP and no signals out of it. Raises OSError where Landlock is missing or refuses."""
    import ctypes
    import os
    import stat

    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    handled = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1

    class RulesetAttr(ctypes.Structure):
        _fields_ = (
            ("handled_access_fs", ctypes.c_uint64),
            ("handled_access_net", ctypes.c_uint64),
            ("scoped", ctypes.c_uint64),
        )

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))

    def call(*args: int | Any) -> int:
        result = int(libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))
        if result < 0:
            number = ctypes.get_errno()
            raise OSError(number, "Landlock: " + os.strerror(number))
        return result

    attr = RulesetAttr(handled, NET_TCP if abi >= 4 else 0, SCOPE_ALL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = call(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    try:
        rules = [(path, FS_READ) for path in reads] + [(path, handled) for path in writes]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                folder = stat.S_ISDIR(os.fstat(fd).st_mode)
                allowed = rights & handled & (-1 if folder else FS_FILE_RIGHTS)
                rule = PathBeneathAttr(allowed, fd)
                call(LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        call(LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
