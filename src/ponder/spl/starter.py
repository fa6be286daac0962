"""The starter set: general strategies every tenant begins with, so that selection has
something to offer before anything has been learned. Loaded from `starter.yaml`, which ships
with the package."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

from ponder.spl_store import PROBLEM_TYPES, Draft

STARTER_FILE = "starter.yaml"


@functools.cache
def starter_drafts() -> tuple[Draft, ...]:
    """The starter strategies as active drafts, in file order (read once per process)."""
    text = resources.files("ponder.spl").joinpath(STARTER_FILE).read_text(encoding="utf-8")
    return parse_starter(text)


def parse_starter(text: str) -> tuple[Draft, ...]:
    """`problem_type: [strategy text, ...]` YAML as drafts. A malformed file is a packaging
    bug, so it fails loudly rather than seeding a tenant with half a set."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{STARTER_FILE}: expected a mapping of problem type to strategies")
    drafts: list[Draft] = []
    for problem_type, texts in data.items():
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"{STARTER_FILE}: unknown problem type {problem_type!r}")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{STARTER_FILE}: {problem_type} must be a list of texts")
        drafts.extend(Draft(problem_type, t.strip(), status="active") for t in texts)
    return tuple(drafts)
