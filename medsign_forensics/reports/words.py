"""Which words of a report are *medical words* (MedSign 2.2.1), and which prompt tokens each one became.

A medical word is a word the findings parser (:func:`medsign_forensics.reports.parse_report`) relies on for a
finding the report asserts (present: neither negated nor hedged): its finding word ("effusion", "enlarged") or a
location word ("left", "base"). The parser does not say which words it matched, so this module asks it by
leaving one word out: each sentence is parsed as written and once per word with that word blanked; a word is
selected when blanking it loses a present (kind, side, zone). "No effusion. Small left nodule." thus yields
"left" and "nodule"; in "opacity at the left base, possibly pneumonia" the hedged "pneumonia" is not taken.
A word in the side/zone vocabulary below is a LOCATION word, any other a FINDING word. When two mentions in one
sentence assert the same (kind, side, zone), blanking either loses nothing; then every word of that kind's
finding vocabulary in the sentence is taken, so no asserted finding goes without a word.

Token positions are those of the prompt as the pipeline tokenises it (padded to the tokenizer's maximum
length, truncated there), so index 0 is the start token. A word split by BPE into several tokens keeps all of
them; CAS later chooses one. Start, end and padding tokens never belong to a word. Words that fall after the
truncation point were never seen by the model and are reported as dropped.

This lives with the reports, not with the localization map that reads it, because grounded training of mini-cxr
(:mod:`medsign_forensics.diffusion.grounding_data`) needs the same words, and the localization package imports
the diffusion package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from medsign_forensics.reports.findings import Finding, FindingKind, Side, Zone
from medsign_forensics.reports.parser import parse_report

ParseFn = Callable[[str], Sequence[Finding]]

FINDING_WORDS: dict[FindingKind, frozenset[str]] = {
    FindingKind.NODULE: frozenset({"nodule", "nodules", "micronodule", "micronodules", "nodular", "nodularity"}),
    FindingKind.MASS: frozenset({"mass", "masses", "masslike"}),
    FindingKind.CONSOLIDATION: frozenset(
        {"consolidation", "consolidations", "consolidative", "consolidated", "opacity", "opacities", "opacification",
         "opacified", "airspace", "infiltrate", "infiltrates", "infiltrative", "infiltration", "pneumonia",
         "pneumonias", "bronchopneumonia", "pneumonitis"}
    ),
    FindingKind.ATELECTASIS: frozenset({"atelectasis", "atelectatic", "atelectases", "collapse", "collapsed"}),
    FindingKind.EFFUSION: frozenset(
        {"effusion", "effusions", "fluid", "hemothorax", "haemothorax", "hydropneumothorax", "hemopneumothorax"}
    ),
    FindingKind.PNEUMOTHORAX: frozenset({"pneumothorax", "pneumothoraces", "hydropneumothorax", "hemopneumothorax"}),
    FindingKind.CARDIOMEGALY: frozenset(
        {"cardiomegaly", "heart", "cardiac", "silhouette", "enlarged", "enlargement", "large", "borderline"}
    ),
    FindingKind.EDEMA: frozenset(
        {"edema", "oedema", "congestion", "congestive", "cephalization", "engorgement", "engorged"}
    ),
    FindingKind.GRANULOMA: frozenset({"granuloma", "granulomas", "granulomata", "granulomatous"}),
    FindingKind.EMPHYSEMA: frozenset(
        {"emphysema", "emphysematous", "copd", "hyperinflation", "hyperinflated", "hyperexpanded", "hyperexpansion",
         "overinflation", "overinflated", "hyperlucent", "hyperlucency", "bullae", "bullous"}
    ),
}

SIDE_WORDS: dict[Side, frozenset[str]] = {
    Side.RIGHT: frozenset({"right"}),
    Side.LEFT: frozenset({"left", "lingula", "lingular"}),
    Side.BILATERAL: frozenset({"bilateral", "bilaterally", "bilat", "both", "bibasilar", "bibasal", "biapical"}),
    Side.UNSPECIFIED: frozenset(),
}

ZONE_WORDS: dict[Zone, frozenset[str]] = {
    Zone.UPPER: frozenset({"upper", "apex", "apices", "apical", "biapical", "suprahilar"}),
    Zone.MIDDLE: frozenset({"middle", "mid", "midlung", "lingula", "lingular", "perihilar", "hilar", "hilum", "hila"}),
    Zone.LOWER: frozenset(
        {"lower", "base", "bases", "basilar", "basal", "bibasilar", "bibasal", "retrocardiac", "costophrenic"}
    ),
    Zone.UNSPECIFIED: frozenset(),
}

_LOCATION_WORDS = frozenset().union(*SIDE_WORDS.values(), *ZONE_WORDS.values())
_SENTENCE_BREAK = re.compile(r"(?<!\d)[.;!?](?!\d)|\n")
_WORD = re.compile(r"[^\W\d_]+")


class WordRole(str, Enum):
    """Why a word was selected."""

    FINDING = "finding"
    LOCATION = "location"


@dataclass(frozen=True)
class MedicalWord:
    """One occurrence of a medical word: its text, character span in the report, role and the finding kinds it
    serves (a shared location word, as in "bibasilar atelectasis and effusions", serves several)."""

    text: str
    start: int
    end: int
    role: WordRole
    kinds: frozenset[FindingKind]


@dataclass(frozen=True)
class WordTokens:
    """A medical word and the prompt positions (start token = 0) of the tokens it was split into."""

    word: MedicalWord
    positions: tuple[int, ...]


def sentence_spans(report: str) -> list[tuple[int, int]]:
    """Character spans of the report's sentences (split at . ; ! ? and newlines, not inside decimals)."""
    spans, start = [], 0
    for match in _SENTENCE_BREAK.finditer(report):
        if report[start : match.start()].strip():
            spans.append((start, match.start()))
        start = match.end()
    if report[start:].strip():
        spans.append((start, len(report)))
    return spans


def _present(parse: ParseFn, text: str) -> set[tuple[FindingKind, Side, Zone]]:
    if not text.strip():
        return set()
    return {(f.kind, f.side, f.zone) for f in parse(text) if f.present}


def medical_words(report: str, *, parse: ParseFn | None = None, locations: bool = True) -> list[MedicalWord]:
    """The finding words (and, if ``locations``, side/zone words) of every finding the report asserts.

    ``parse`` defaults to the toolkit's findings parser.
    """
    parse = parse or parse_report
    selected: list[MedicalWord] = []
    for start, end in sentence_spans(report):
        sentence = report[start:end]
        present = _present(parse, sentence)
        if not present:
            continue
        words: list[MedicalWord] = []
        for match in _WORD.finditer(sentence):
            text = match.group().lower()
            blanked = sentence[: match.start()] + " " * len(text) + sentence[match.end() :]
            lost = present - _present(parse, blanked)
            if not lost:
                continue
            role = WordRole.LOCATION if text in _LOCATION_WORDS else WordRole.FINDING
            kinds = frozenset(key[0] for key in lost)
            words.append(MedicalWord(text, start + match.start(), start + match.end(), role, kinds))
        served = {kind for word in words if word.role is WordRole.FINDING for kind in word.kinds}
        for kind in sorted({key[0] for key in present} - served):
            words.extend(
                MedicalWord(text, start + match.start(), start + match.end(), WordRole.FINDING, frozenset({kind}))
                for match in _WORD.finditer(sentence)
                if (text := match.group().lower()) in FINDING_WORDS[kind]
            )
        words.sort(key=lambda word: word.start)
        selected.extend(word for word in words if locations or word.role is WordRole.FINDING)
    return selected


def prompt_encoding(tokenizer: Any, prompt: str) -> Any:
    """Tokenise exactly as the Stable Diffusion pipeline does, with character offsets."""
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_offsets_mapping=True,
    )


def word_tokens(
    tokenizer: Any, prompt: str, words: Sequence[MedicalWord]
) -> tuple[list[WordTokens], list[MedicalWord]]:
    """Map each word to the positions of the tokens covering its characters; also return the truncated words."""
    encoding = prompt_encoding(tokenizer, prompt)
    special = set(tokenizer.all_special_ids)
    spans = [
        (position, start, end)
        for position, ((start, end), token_id) in enumerate(zip(encoding["offset_mapping"], encoding["input_ids"]))
        if end > start and token_id not in special
    ]
    found, dropped = [], []
    for word in words:
        positions = tuple(position for position, start, end in spans if start < word.end and end > word.start)
        if positions:
            found.append(WordTokens(word, positions))
        else:
            dropped.append(word)
    return found, dropped
