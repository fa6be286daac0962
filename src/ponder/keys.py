"""API keys: who is calling, for which tenant, and what the key may do.

Keys come from two places:

- the keys file (`PONDER_KEYS_FILE`, YAML), written by `ponder keys add`. It holds only the
  SHA-256 of each key, with the key's name, tenant and permissions:

      keys:
        - name: ci-bot
          tenant: team-a
          sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
          learning: false            # may not change the tenant's SPL strategies or memories
          strategies: [none, sc, spl] # the only strategies it may run (absent: all)
          rate_limit_per_minute: 60  # absent: the server's PONDER_RATE_LIMIT_PER_MINUTE

- `PONDER_API_KEYS` (`tenant:key` or a bare key, comma-separated), for a quick start: hashed
  when read, with every permission and the server's rate limit.

A presented key is hashed and looked up by its hash, so no key is kept or compared in the
clear. SHA-256 without salt is the right tool here: keys are long random strings (32 bytes
from `secrets`), not passwords, so nothing is gained from a slow hash, and the lookup stays
O(1) per request. The time a lookup takes does not depend on how much of a key is right.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ponder.config import DEFAULT_TENANT, Settings, split_key

KEY_PREFIX = "pk-"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # anchored: pydantic patterns search
_HEX64 = re.compile(r"[0-9a-f]{64}")


def digest(key: str) -> str:
    """The SHA-256 of a key, as stored in the keys file."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a key (or the anonymous caller of a server without keys)."""

    name: str
    """The key's name: safe to log and to put in metrics (the key itself never is)."""
    tenant: str = DEFAULT_TENANT
    learning: bool = True
    """Whether its requests may change the tenant's knowledge (SPL learning, memories,
    feedback)."""
    strategies: frozenset[str] | None = None
    """The strategies it may run; None: all."""
    rate_limit_per_minute: int | None = None
    """Its own rate limit; None: the server's."""

    def may_run(self, slug: str) -> bool:
        return self.strategies is None or slug in self.strategies


ANONYMOUS = Principal("anonymous")


class KeyEntry(BaseModel):
    """One key of the keys file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME.pattern)
    tenant: str = Field(DEFAULT_TENANT, pattern=_NAME.pattern)
    sha256: str
    learning: bool = True
    strategies: list[str] | None = None
    rate_limit_per_minute: int | None = Field(None, ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if not _HEX64.fullmatch(value):
            raise ValueError("must be the 64 hex digits of the key's SHA-256")
        return value

    def principal(self) -> Principal:
        strategies = frozenset(self.strategies) if self.strategies is not None else None
        return Principal(
            self.name, self.tenant, self.learning, strategies, self.rate_limit_per_minute
        )


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: list[KeyEntry]) -> list[KeyEntry]:
        for field in ("name", "sha256"):
            values = [getattr(k, field) for k in keys]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                shown = repeated if field == "name" else [v[:12] + "..." for v in repeated]
                raise ValueError(f"each key's {field} must be unique: {', '.join(shown)}")
        return keys


class KeysFileError(ValueError):
    """The keys file cannot be read or is not valid; the message says where."""


def read_keys_file(path: Path) -> KeysFile:
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise KeysFileError(f"cannot read the keys file {path}: {exc}") from exc
    try:
        return KeysFile.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'file'}: {e['msg']}"
            for e in exc.errors()
        )
        raise KeysFileError(f"the keys file {path} is not valid: {problems}") from exc


def write_keys_file(path: Path, keys: KeysFile) -> None:
    """Write atomically (a reader sees the old file or the new one), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(keys.model_dump(exclude_none=True), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Keyring:
    """The server's keys, by hash."""

    def __init__(self, principals: Iterable[tuple[str, Principal]] = ()) -> None:
        self._by_digest: dict[str, Principal] = {}
        for hashed, principal in principals:
            if hashed in self._by_digest:
                raise KeysFileError(f"the key of '{principal.name}' is configured twice")
            self._by_digest[hashed] = principal

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        entries: list[tuple[str, Principal]] = []
        if settings.keys_file is not None:
            keys = read_keys_file(settings.keys_file)
            entries += [(k.sha256, k.principal()) for k in keys.keys]
        for i, secret in enumerate(settings.api_keys, start=1):
            tenant, key = split_key(secret.get_secret_value())
            entries.append((digest(key), Principal(f"env-{i}", tenant)))
        return cls(entries)

    def with_canonical_strategies(self, canonical: Callable[[str], str | None]) -> Keyring:
        """The same keys with their allowed strategies as canonical slugs (aliases resolved);
        a name that is no strategy fails here, when the server starts."""
        entries = []
        for hashed, p in self._by_digest.items():
            if p.strategies is not None:
                slugs = {name: canonical(name) for name in p.strategies}
                unknown = sorted(name for name, slug in slugs.items() if slug is None)
                if unknown:
                    raise KeysFileError(
                        f"key '{p.name}' allows unknown strategies: {', '.join(unknown)}"
                    )
                p = replace(p, strategies=frozenset(s for s in slugs.values() if s))
            entries.append((hashed, p))
        return Keyring(entries)

    @property
    def open(self) -> bool:
        """No keys configured: every caller is the anonymous `default` tenant."""
        return not self._by_digest

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of a presented key; None when it matches no key. Without keys, the
        anonymous principal."""
        if self.open:
            return ANONYMOUS
        return self._by_digest.get(digest(presented))

    def __len__(self) -> int:
        return len(self._by_digest)
