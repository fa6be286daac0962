"""Text vectors for relevance ranking: hashed term frequencies, weighted by IDF at query time.

A text's vector is its words hashed into `DIM` buckets (log-scaled counts), so it can be stored
with a row and compared later without a shared vocabulary. `similarities()` weights the
buckets by their inverse document frequency over the texts being ranked (TF-IDF) and returns
cosines. Pure numpy; no model download.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DIM = 1024
Vector = npt.NDArray[np.float32]

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "do",
        "does",
        "did",
        "can",
    ]
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def vector(text: str) -> Vector:
    """The hashed, log-scaled term frequencies of `text`."""
    out = np.zeros(DIM, dtype=np.float32)
    for word, count in Counter(words(text)).items():
        out[zlib.crc32(word.encode()) % DIM] += 1.0 + np.log(count)
    return out


def similarities(query: Vector, documents: Sequence[Vector]) -> npt.NDArray[np.float64]:
    """Cosine similarity of `query` to each document, in TF-IDF space over these documents."""
    if not documents:
        return np.zeros(0)
    matrix = np.vstack(documents).astype(np.float64)
    df = np.count_nonzero(matrix, axis=0)
    idf = np.log((1 + len(documents)) / (1 + df)) + 1.0
    weighted = matrix * idf
    q = query.astype(np.float64) * idf
    norms = np.linalg.norm(weighted, axis=1) * np.linalg.norm(q)
    dots: npt.NDArray[np.float64] = weighted @ q
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, dots / safe, 0.0)


def to_bytes(v: Vector) -> bytes:
    return v.astype(np.float32).tobytes()


def from_bytes(data: bytes) -> Vector:
    return np.frombuffer(data, dtype=np.float32)
