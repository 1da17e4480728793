"""Which words of a report are *medical words* (MedSign 2.2.1), and which prompt tokens each one became.

A medical word is a finding word or a location word of a finding the report asserts. The findings parser
(:func:`medsign_forensics.reports.parse_report`) decides what the report asserts but does not say which words
it matched, so the selection works per sentence: each sentence is parsed on its own, and in it only the
trigger words of the finding kinds it asserts (present: neither negated nor hedged) and the side and zone words
of those findings are taken. "No effusion. Small left nodule." thus yields "left" and "nodule", never
"effusion". The vocabularies below mirror the Finding enums; they are the words whose attention is read.

Token positions are those of the prompt as the pipeline tokenises it (padded to the tokenizer's maximum
length, truncated there), so index 0 is the start token. A word split by BPE into several tokens keeps all of
them; CAS later chooses one. Start, end and padding tokens never belong to a word. Words that fall after the
truncation point were never seen by the model and are reported as dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from medsign_forensics.reports.findings import Finding, FindingKind, Side, Zone

ParseFn = Callable[[str], Sequence[Finding]]

FINDING_WORDS: dict[FindingKind, frozenset[str]] = {
    FindingKind.NODULE: frozenset({"nodule", "nodules", "nodular"}),
    FindingKind.MASS: frozenset({"mass", "masses"}),
    FindingKind.CONSOLIDATION: frozenset(
        {"consolidation", "consolidations", "consolidative", "opacity", "opacities", "opacification", "airspace",
         "infiltrate", "infiltrates", "pneumonia"}
    ),
    FindingKind.ATELECTASIS: frozenset({"atelectasis", "atelectatic", "atelectases"}),
    FindingKind.EFFUSION: frozenset({"effusion", "effusions"}),
    FindingKind.PNEUMOTHORAX: frozenset({"pneumothorax", "pneumothoraces"}),
    FindingKind.CARDIOMEGALY: frozenset({"cardiomegaly", "heart", "cardiac", "enlarged", "enlargement"}),
    FindingKind.EDEMA: frozenset({"edema", "oedema", "congestion"}),
    FindingKind.GRANULOMA: frozenset({"granuloma", "granulomas", "granulomata", "granulomatous"}),
    FindingKind.EMPHYSEMA: frozenset({"emphysema", "emphysematous", "hyperinflation", "hyperinflated"}),
}

SIDE_WORDS: dict[Side, frozenset[str]] = {
    Side.RIGHT: frozenset({"right"}),
    Side.LEFT: frozenset({"left", "lingula", "lingular"}),
    Side.BILATERAL: frozenset({"bilateral", "bilaterally", "both", "bibasilar", "bibasal", "biapical"}),
    Side.UNSPECIFIED: frozenset(),
}

ZONE_WORDS: dict[Zone, frozenset[str]] = {
    Zone.UPPER: frozenset({"upper", "apex", "apices", "apical", "biapical"}),
    Zone.MIDDLE: frozenset({"middle", "mid", "lingula", "lingular"}),
    Zone.LOWER: frozenset({"lower", "base", "bases", "basilar", "basal", "bibasilar", "bibasal"}),
    Zone.UNSPECIFIED: frozenset(),
}

_SENTENCE_BREAK = re.compile(r"(?<!\d)[.;!?](?!\d)|\n")
_WORD = re.compile(r"[^\W\d_]+")


class WordRole(str, Enum):
    """Why a word was selected."""

    FINDING = "finding"
    LOCATION = "location"


@dataclass(frozen=True)
class MedicalWord:
    """One occurrence of a medical word: its text, character span in the report, role and finding kind."""

    text: str
    start: int
    end: int
    role: WordRole
    kind: FindingKind


@dataclass(frozen=True)
class WordTokens:
    """A medical word and the prompt positions (start token = 0) of the tokens it was split into."""

    word: MedicalWord
    positions: tuple[int, ...]


def default_parser() -> ParseFn:
    """The toolkit's findings parser (imported late: the reports package is heavier than this module)."""
    from medsign_forensics.reports import parse_report

    return parse_report


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


def medical_words(report: str, *, parse: ParseFn | None = None, locations: bool = True) -> list[MedicalWord]:
    """The finding words (and, if ``locations``, side/zone words) of every finding the report asserts."""
    parse = parse or default_parser()
    words: list[MedicalWord] = []
    for start, end in sentence_spans(report):
        sentence = report[start:end]
        present = [finding for finding in parse(sentence) if finding.present]
        if not present:
            continue
        for match in _WORD.finditer(sentence):
            text = match.group().lower()
            selected = _classify(text, present, locations)
            if selected is not None:
                role, kind = selected
                words.append(MedicalWord(text, start + match.start(), start + match.end(), role, kind))
    return words


def _classify(text: str, present: Sequence[Finding], locations: bool) -> tuple[WordRole, FindingKind] | None:
    for finding in present:
        if text in FINDING_WORDS[finding.kind]:
            return WordRole.FINDING, finding.kind
    if locations:
        for finding in present:
            if text in SIDE_WORDS[finding.side] or text in ZONE_WORDS[finding.zone]:
                return WordRole.LOCATION, finding.kind
    return None


def prompt_encoding(tokenizer: Any, prompt: str) -> Any:
    """Tokenise exactly as the Stable Diffusion pipeline does, with character offsets."""
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_offsets_mapping=True,
    )


def word_tokens(tokenizer: Any, prompt: str, words: Sequence[MedicalWord]) -> tuple[list[WordTokens], list[MedicalWord]]:
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
