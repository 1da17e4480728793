"""Findings parser: report text or Open-i MeSH tags -> :class:`Finding` list.

Text rules, sentence by sentence (no model, fully deterministic):

* Mentions come from a vocabulary per :class:`FindingKind` (``_VOCABULARY``). One phrase may name two kinds
  ("hydropneumothorax"); overlapping phrases keep the longest ("nodular opacity" is a nodule, not an opacity).
* A sentence is cut into clauses at words that end a negation's reach ("but", "however", ";", ", there is",
  ...). Within a clause a negation cue before a mention ("no", "without", "no evidence of", "negative for",
  "free of", "clear of") or after it ("is not seen", "has resolved") negates it, so every item of
  "no consolidation, effusion or pneumothorax" is negated. "No change in the effusion" is not a negation.
* Hedges ("possible", "may represent", "questionable", "suspicious for", "cannot be excluded", "versus")
  mark a mention uncertain; an uncertain mention is never also negated.
* Side, zone and severity come from the words just before a mention and the phrase just after it ("small
  right pleural effusion", "opacity in the left lower lobe"). A mention joined to the previous one by "and"
  or "or" alone shares its location ("bibasilar atelectasis and effusions"). The lingula implies the left
  lung and the middle lobe the right one. A mention naming several zones gives one finding per zone.
* "Heart size is normal" mentions no finding: cardiomegaly needs "cardiomegaly", "cardiac enlargement", an
  enlarged heart / cardiac silhouette, or a borderline heart size (MILD); a heart size "at the upper limits of
  normal" is normal, as the MeSH indexers read it too.

MeSH mapping (Open-i ``major`` tags, ``Term/qualifier/...``): the term maps to a kind only when it names that
pathology or a synonym of it, read as a radiologist would:

=================================================================  ===========================
MeSH term                                                          FindingKind
=================================================================  ===========================
Nodule; Opacity or Density qualified ``round``                     NODULE (a rounded opacity
                                                                   is a nodule, Fleischner)
Mass                                                               MASS
Opacity (not ``round``), Consolidation, Airspace Disease,          CONSOLIDATION
Infiltrate, Pneumonia
Pulmonary Atelectasis                                              ATELECTASIS
Pleural Effusion, Hemothorax                                       EFFUSION
Pneumothorax                                                       PNEUMOTHORAX
Hydropneumothorax, Hemopneumothorax                                PNEUMOTHORAX and EFFUSION
Cardiomegaly; Cardiac Shadow qualified ``enlarged``/``borderline``  CARDIOMEGALY
Pulmonary Edema, Pulmonary Congestion                              EDEMA
Calcified Granuloma, Granuloma                                     GRANULOMA
Emphysema, Pulmonary Emphysema, Bullous Emphysema, Pulmonary       EMPHYSEMA (hyperinflation
Disease Chronic Obstructive, Lung qualified ``hyperdistention``    is how it is drawn)
=================================================================  ===========================

Not mapped, on purpose: Density without ``round`` and Lucency (no pathology named), "Lung, Hyperlucent" (a
hyperlucent lung is not emphysema by itself), Calcinosis (calcification, wherever it is), Granulomatous
Disease (a diagnosis, not a lesion), Cicatrix (scar), Costophrenic Angle/blunted, Lung/hypoinflation, Heart
Failure, Pericardial Effusion, Subcutaneous / Mediastinal Emphysema, and any tag placed outside the lungs and
pleura (ribs, spine, breast, aorta, ...). Qualifiers: ``right`` / ``left`` / ``bilateral`` -> side (``lingula``
alone implies left, ``middle lobe`` right); ``upper lobe`` / ``apex`` -> UPPER, ``middle lobe`` / ``lingula``
/ ``hilum`` -> MIDDLE, ``lower lobe`` / ``base`` / ``retrocardiac`` / ``costophrenic angle`` -> LOWER;
``mild`` / ``small`` / ``borderline`` -> MILD, ``moderate`` -> MODERATE, ``severe`` / ``large`` -> SEVERE.
``normal`` and ``No Indexing`` give no finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medsign_forensics.errors import ReportError
from medsign_forensics.reports.corpus import clean_text
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

K = FindingKind

# --------------------------------------------------------------------------------------------------------------
# Vocabulary: (pattern, kinds). Patterns run on lower-cased text.
_VOCABULARY: tuple[tuple[str, tuple[FindingKind, ...]], ...] = (
    (
        r"\b(?:micro)?nodules?\b|\bnodularity\b|\bnoduli\b|\b(?:fibro|reticulo)-?nodular\b"
        r"|\bnodular(?:[\s-]+like)?\s+(?:\w+\s+)?(?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|foci|focus)\b"
        r"|\b(?:round|rounded|circular)\s+(?:\w+\s+){0,2}?(?:opacit(?:y|ies)|densit(?:y|ies))\b",
        (K.NODULE,),
    ),
    (r"\bmass(?:es)?\b|\bmass-?like\b", (K.MASS,)),
    (
        r"\bconsolidat\w*|\bopacit(?:y|ies)\b|\bopacifi\w*|\bair\s?-?space\s+(?:disease|opacit(?:y|ies)"
        r"|consolidation|process|densit(?:y|ies)|filling)\b|\binfiltrat\w*|\b(?:broncho)?pneumonias?\b|\bpneumonitis\b",
        (K.CONSOLIDATION,),
    ),
    (r"\batelecta\w*|\bcollapsed?\b", (K.ATELECTASIS,)),
    (r"\b(?:hydro|hemo|haemo)pneumothora(?:x|ces)\b", (K.PNEUMOTHORAX, K.EFFUSION)),
    (r"\bpneumothora(?:x|ces)\b", (K.PNEUMOTHORAX,)),
    (r"(?<!pericardial )\beffusions?\b|\bpleural fluid\b|\b(?:hemo|haemo)thorax\b", (K.EFFUSION,)),
    (
        r"\bcardiomegaly\b|\bcardiac enlargement\b|\benlarge(?:d|ment of)(?: the)? (?:heart|cardiac|cardiomediastinal)"
        r"|\b(?:heart|cardiac|cardiomediastinal|heart shadow|heart size)\b[^.;,]{0,40}?\benlarge\w*"
        r"|\b(?:heart|heart size|cardiac silhouette)\s+(?:is\s+|appears\s+|remains\s+)?(?:\w+ly\s+)?large\b"
        r"|\b(?:heart|cardiac silhouette|heart size)\b[^.;,]{0,30}?\bborderline\b"
        r"|\bborderline (?:heart|cardiac)\b",
        (K.CARDIOMEGALY,),
    ),
    (
        r"(?<!soft tissue )(?<!laryngeal )\bedema\b|\b(?:vascular|pulmonary|venous) congestion\b"
        r"|\bcongestive\b(?! heart failure| failure)"
        r"|\bcongestion\b|\bcephalization\b|\bengorge\w*|\bvascular (?:prominence|redistribution|engorgement)\b"
        r"|\b(?:prominen(?:t|ce)|increased)(?: of)?(?: the)?(?: central)?(?: pulmonary| lung)? vascula(?:r|rity|ture)\b"
        r"|\bvascula(?:rity|ture) (?:is |are |appears? |remains? )?(?:\w+ly )?(?:prominent|engorged|increased)\b",
        (K.EDEMA,),
    ),
    (r"\bgranulom(?:a|as|ata)\b", (K.GRANULOMA,)),
    (
        r"(?<!subcutaneous )(?<!mediastinal )(?<!soft tissue )\bemphysema\w*|\bcopd\b"
        r"|\bchronic obstructive (?:pulmonary|lung|airways?) disease\b|\bhyper-?inflat\w*|\bhyper-?expan\w*"
        r"|\bhyper-?aerat\w*|\bover-?inflat\w*|\bover-?expan\w*|\bhyperlucen\w*|\bbullae\b|\bbullous\b",
        (K.EMPHYSEMA,),
    ),
)
_MENTIONS = tuple((re.compile(pattern), kinds) for pattern, kinds in _VOCABULARY)

# --------------------------------------------------------------------------------------------------------------
# Scope, negation and hedging cues.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|\s(?=\d{1,2}\.\s)")
_CLAUSE_BREAK = re.compile(
    r";|\b(?:but|however|although|though|whereas|except|aside from|apart from|other than|which|otherwise)\b"
    r"|,\s*(?:and\s+)?(?=there (?:is|are)\b)|\band (?=there (?:is|are)\b)"
    # "no acute bony abnormality and mild cardiomegaly": a graded or followed-up finding after "and" is asserted.
    r"|\band (?=(?:mild|mildly|moderate|moderately|severe|marked|stable|persistent|new|unchanged)\b)"
)
_PSEUDO_NEGATION = re.compile(
    r"\bno (?:significant |appreciable |substantial |definite )?(?:interval )?(?:change|increase|progression)"
    r"|\bnot (?:significantly |substantially )?(?:changed|increased)\b"
    r"|\bwithout (?:significant |interval )?change\b|\bnot only\b"
)
_UNCERTAIN_BEFORE = re.compile(
    r"\b(?:possible|possibly|question(?: of)?|questionable|questioned|suggestion of|suspicious for|suspicion (?:of|for)"
    r"|suspect(?:ed)?|may|might|could|cannot (?:exclude|rule out)|can't (?:exclude|rule out)|concern(?:ing)? for"
    r"|differential|equivocal|suggest\w*|favou?r(?:s|ed|ing)?|rule[- ]out|r/o"
    r"|to (?:exclude|identify|evaluate|assess)|evaluat(?:e|ion) for)\b"
)
_UNCERTAIN_AFTER = re.compile(
    r"\b(?:can ?not|not) be (?:entirely |completely )?(?:excluded|ruled out)\b"
    r"|\bnot (?:entirely |completely )?(?:excluded|ruled out)\b"
    r"|\b(?:is|are) (?:possible|questionable|not excluded)\b|\bsuspected\b|\?"
)
# "atelectasis versus pneumonia": both neighbours of "versus" are hedged, the mentions further away are not.
_ALTERNATIVE = re.compile(r"\b(?:versus|vs)\b")
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|clear of|clearing of|resolution(?: of)?|resolved"
    r"|rather than|nor|never)\b"
)
_NEGATION_AFTER = re.compile(
    r"\b(?:not|no longer)\s+(?:been\s+)?(?:well[\s-]+|definitely\s+|clearly\s+)?"
    r"(?:seen|identified|visuali[sz]ed|present|evident|appreciated|demonstrated"
    r"|noted|apparent|detected|shown|visible|enlarged)\b|\b(?:has|have)?\s*(?:resolved|cleared)\b|\bresolution\b"
    r"|\b(?:is|are) (?:now )?(?:absent|gone|clear)\b"
    r"|\b(?:is|are|appears?) (?:within (?:the )?(?:normal )?limits|normal)\b"
)

# --------------------------------------------------------------------------------------------------------------
# Location and size words.
_SIDE_WORDS = (
    (re.compile(r"\b(?:bilateral(?:ly)?|both|bibasilar|bibasal|biapical|bilat)\b"), Side.BILATERAL),
    (re.compile(r"\bright\b"), Side.RIGHT),
    (re.compile(r"\bleft\b"), Side.LEFT),
)
_ZONE_WORDS = (
    (re.compile(r"\b(?:upper|apex|apices|apical|biapical|suprahilar)\b"), Zone.UPPER),
    (re.compile(r"\b(?:middle|mid|midlung|mid-lung|lingula|lingular|perihilar|hilar|hilum|hila)\b"), Zone.MIDDLE),
    (re.compile(r"\b(?:lower|base|bases|basilar|basal|bibasilar|bibasal|retrocardiac|costophrenic)\b"), Zone.LOWER),
)
_LEFT_ONLY = re.compile(r"\blingul(?:a|ar)\b")
_RIGHT_ONLY = re.compile(r"\bmiddle lobe\b")
_SEVERITY_WORDS = (
    (re.compile(r"\b(?:moderate|moderately)\b"), Severity.MODERATE),
    (re.compile(r"\b(?:large|severe|severely|marked|markedly|massive|extensive|significant|significantly)\b"),
     Severity.SEVERE),
    (re.compile(r"\b(?:small|mild|mildly|trace|minimal|minimally|tiny|slight|slightly|subtle|borderline"
                r"|minor)\b"), Severity.MILD),
)
_WORD = re.compile(r"[a-z0-9'/-]+|[^\sa-z0-9]")
# Words that end the noun phrase in front of a mention: location words before them belong to something else.
_PRE_STOP = {",", "is", "are", "was", "were", "with", "of", "in", "within", "at", "there", "has", "have", "and", "or",
             "without", "to", "from", "the", "by", "as", "for", "on", "(", ")", ":"}
_PRE_WORDS = 8
# Words that end the phrase after a mention: "opacity in the left base, and ..." stops at the comma.
_POST_STOP = {",", "and", "or", "with", "which", "is", "are", "was", "were", "that", "but", "consistent",
              "compatible", "likely", "may", "could", "as", "has", "have", "(", ")", ":"}
_POST_WORDS = 8
_JOINERS = {"and", "or", ",", "and/or", "/", "versus", "vs"}
# Location words that an "and" may join inside one phrase ("right and left", "upper and lower").
_PLACE_WORDS = {"right", "left", "upper", "middle", "mid", "lower", "base", "bases", "basilar", "apex", "apical",
                "apices", "lobe", "lobes", "lung", "lungs", "perihilar", "hilar", "lingula", "lingular", "zone"}


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    kinds: tuple[FindingKind, ...]


def _mentions(clause: str) -> list[_Mention]:
    """Every vocabulary phrase in ``clause``; where phrases overlap the longest (then earliest) one wins."""
    found = [
        _Mention(match.start(), match.end(), kinds)
        for pattern, kinds in _MENTIONS
        for match in pattern.finditer(clause)
    ]
    found.sort(key=lambda m: (-(m.end - m.start), m.start))
    kept: list[_Mention] = []
    for mention in found:
        if all(mention.end <= other.start or mention.start >= other.end for other in kept):
            kept.append(mention)
    return sorted(kept, key=lambda m: m.start)


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with every match of ``pattern`` blanked (same length), so later cues cannot fire inside it."""
    return pattern.sub(lambda match: " " * len(match.group(0)), text)


def _pre_phrase(text: str) -> str:
    """The modifier words at the end of ``text`` (just before a mention), back to the first word that ends the
    noun phrase; "and" / "or" between two location words does not end it ("right upper and lower lobe")."""
    words = _WORD.findall(text)[-_PRE_WORDS:]
    kept: list[str] = []
    for position in range(len(words) - 1, -1, -1):
        word = words[position]
        if word in _PRE_STOP and not (word in {"and", "or"} and position > 0 and words[position - 1] in _PLACE_WORDS):
            break
        kept.append(word)
    return " ".join(reversed(kept))


def _post_phrase(text: str) -> str:
    """The phrase at the start of ``text`` (right after a mention, "in the right lower lobe"), up to the first
    word that ends it; "and" / "or" between two location words does not end it."""
    words = _WORD.findall(text)[:_POST_WORDS]
    kept: list[str] = []
    for word in words:
        if word in _POST_STOP and not (word in {"and", "or"} and kept and kept[-1] in _PLACE_WORDS):
            break
        kept.append(word)
    return " ".join(kept)


def _side(words: str) -> Side:
    sides = {side for pattern, side in _SIDE_WORDS if pattern.search(words)}
    if Side.BILATERAL in sides or {Side.RIGHT, Side.LEFT} <= sides:
        return Side.BILATERAL
    if sides:
        return sides.pop()
    if _LEFT_ONLY.search(words):
        return Side.LEFT
    if _RIGHT_ONLY.search(words):
        return Side.RIGHT
    return Side.UNSPECIFIED


def _zones(words: str) -> list[Zone]:
    return [zone for pattern, zone in _ZONE_WORDS if pattern.search(words)]


def _severity(words: str) -> Severity:
    return next((severity for pattern, severity in _SEVERITY_WORDS if pattern.search(words)), Severity.UNSPECIFIED)


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]


def _clauses(sentence: str) -> list[str]:
    return [part for part in _CLAUSE_BREAK.split(sentence) if part and part.strip()]


@dataclass
class _Location:
    side: Side
    zones: list[Zone]
    from_post: bool  # found in the phrase after the mention ("atelectasis versus pneumonia at the right base")

    @property
    def empty(self) -> bool:
        return self.side is Side.UNSPECIFIED and not self.zones


def _clause_findings(clause: str) -> list[Finding]:
    mentions = _mentions(clause)
    if not mentions:
        return []
    masked = _mask(_mask(_mask(clause, _PSEUDO_NEGATION), _UNCERTAIN_AFTER), _UNCERTAIN_BEFORE)
    hedge_after = [m.start() for m in _UNCERTAIN_AFTER.finditer(clause)]
    hedge_before = [m.end() for m in _UNCERTAIN_BEFORE.finditer(clause)]
    alternatives = [m.start() for m in _ALTERNATIVE.finditer(clause)]
    negation_before = [m.end() for m in _NEGATION_BEFORE.finditer(masked)]
    negation_after = [m.start() for m in _NEGATION_AFTER.finditer(masked)]

    starts = [0] + [m.end for m in mentions[:-1]]  # where the text that belongs to each mention begins
    ends = [m.start for m in mentions[1:]] + [len(clause)]  # and where it stops
    locations: list[_Location] = []
    statuses: list[tuple[bool, bool, Severity]] = []
    for mention, begin, stop in zip(mentions, starts, ends):
        pre = _pre_phrase(clause[begin : mention.start])
        post = _post_phrase(clause[mention.end : stop])
        own = clause[mention.start : mention.end]
        near = f"{pre} {own}"
        side, zones = _side(near), _zones(near)
        from_post = False
        if side is Side.UNSPECIFIED and not zones:
            side, zones, from_post = _side(post), _zones(post), True
        else:
            side = side if side is not Side.UNSPECIFIED else _side(post)
            zones = zones or _zones(post)
        locations.append(_Location(side, zones, from_post))
        # A cue after the mention ("... is not seen") reaches back over the words up to the next comma only.
        comma = clause.find(",", mention.end)
        post_end = len(clause) if comma < 0 else comma
        uncertain = (
            any(pos <= mention.start for pos in hedge_before)
            or any(pos >= mention.end for pos in hedge_after)
            or any(begin <= pos <= mention.start or mention.end <= pos <= stop for pos in alternatives)
        )
        negated = not uncertain and (
            any(pos <= mention.end for pos in negation_before)
            or any(mention.end <= pos < post_end for pos in negation_after)
        )
        statuses.append((negated, uncertain, _severity(f"{near} {post}")))

    # Mentions joined only by "and", "or", "versus", "/" share a location: "bibasilar atelectasis and
    # effusions" (forwards), "atelectasis versus pneumonia at the right base" (backwards).
    for index in range(1, len(mentions)):
        joined = set(_WORD.findall(clause[mentions[index - 1].end : mentions[index].start])) <= _JOINERS
        before, after = locations[index - 1], locations[index]
        if joined and after.empty and not before.empty:
            locations[index] = _Location(before.side, before.zones, before.from_post)
    for index in range(len(mentions) - 2, -1, -1):
        joined = set(_WORD.findall(clause[mentions[index].end : mentions[index + 1].start])) <= _JOINERS
        before, after = locations[index], locations[index + 1]
        if joined and before.empty and after.from_post:
            locations[index] = _Location(after.side, after.zones, True)

    findings: list[Finding] = []
    for mention, location, (negated, uncertain, severity) in zip(mentions, locations, statuses):
        for kind in mention.kinds:
            for zone in location.zones or [Zone.UNSPECIFIED]:
                findings.append(
                    Finding(
                        kind=kind,
                        side=location.side if kind.lateralised else Side.UNSPECIFIED,
                        zone=zone if kind.lateralised else Zone.UNSPECIFIED,
                        severity=severity,
                        negated=negated,
                        uncertain=uncertain,
                    )
                )
    return findings


def _rank(finding: Finding) -> tuple[int, int]:
    """Which of two findings with the same (kind, side, zone) to keep: asserted over hedged over negated, then
    the one that says how severe."""
    status = 2 if finding.present else 1 if finding.uncertain else 0
    return status, int(finding.severity is not Severity.UNSPECIFIED)


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (kind, side, zone), in order of first mention, keeping the most assertive mention."""
    best: dict[tuple[FindingKind, Side, Zone], Finding] = {}
    for finding in findings:
        key = (finding.kind, finding.side, finding.zone)
        if key not in best or _rank(finding) > _rank(best[key]):
            best[key] = finding
    return list(best.values())


def parse_report(text: str) -> list[Finding]:
    """The findings a report mentions (present, negated or hedged), one per (kind, side, zone)."""
    if not isinstance(text, str) or not text.strip():
        raise ReportError("the report is empty; give the text of a radiology report.")
    findings: list[Finding] = []
    for sentence in _sentences(clean_text(text).lower()):
        for clause in _clauses(sentence):
            findings.extend(_clause_findings(clause))
    return merge_findings(findings)


# --------------------------------------------------------------------------------------------------------------
# MeSH tags.
_MESH_KINDS: dict[str, tuple[FindingKind, ...]] = {
    "nodule": (K.NODULE,),
    "mass": (K.MASS,),
    "opacity": (K.CONSOLIDATION,),
    "consolidation": (K.CONSOLIDATION,),
    "airspace disease": (K.CONSOLIDATION,),
    "infiltrate": (K.CONSOLIDATION,),
    "pneumonia": (K.CONSOLIDATION,),
    "pulmonary atelectasis": (K.ATELECTASIS,),
    "pleural effusion": (K.EFFUSION,),
    "hemothorax": (K.EFFUSION,),
    "pneumothorax": (K.PNEUMOTHORAX,),
    "hydropneumothorax": (K.PNEUMOTHORAX, K.EFFUSION),
    "hemopneumothorax": (K.PNEUMOTHORAX, K.EFFUSION),
    "cardiomegaly": (K.CARDIOMEGALY,),
    "pulmonary edema": (K.EDEMA,),
    "pulmonary congestion": (K.EDEMA,),
    "calcified granuloma": (K.GRANULOMA,),
    "granuloma": (K.GRANULOMA,),
    "emphysema": (K.EMPHYSEMA,),
    "pulmonary emphysema": (K.EMPHYSEMA,),
    "bullous emphysema": (K.EMPHYSEMA,),
    "pulmonary disease, chronic obstructive": (K.EMPHYSEMA,),
}
# Terms that name a pathology only with a given qualifier.
_MESH_QUALIFIED: dict[str, tuple[frozenset[str], tuple[FindingKind, ...]]] = {
    "cardiac shadow": (frozenset({"enlarged", "borderline"}), (K.CARDIOMEGALY,)),
    "lung": (frozenset({"hyperdistention"}), (K.EMPHYSEMA,)),
}
# A round opacity or density is a nodule (Fleischner glossary: "a rounded or irregular opacity ... up to 3 cm").
_MESH_ROUND_IS_NODULE = frozenset({"opacity", "density"})
_MESH_OUTSIDE_LUNG = frozenset(
    {"ribs", "thoracic vertebrae", "lumbar vertebrae", "cervical vertebrae", "spine", "clavicle", "humerus",
     "shoulder", "sternum", "breast", "breast implants", "abdomen", "aorta", "aorta, thoracic", "neck",
     "esophagus", "heart", "heart ventricles", "heart atria", "coronary vessels", "aortic valve", "mitral valve"}
)
_MESH_SIDES = {"right": Side.RIGHT, "left": Side.LEFT, "bilateral": Side.BILATERAL}
_MESH_ZONES = {
    "upper lobe": Zone.UPPER, "apex": Zone.UPPER,
    "middle lobe": Zone.MIDDLE, "lingula": Zone.MIDDLE, "hilum": Zone.MIDDLE,
    "lower lobe": Zone.LOWER, "base": Zone.LOWER, "retrocardiac": Zone.LOWER, "costophrenic angle": Zone.LOWER,
}
_MESH_SEVERITY_ORDER = ("severe", "large", "moderate", "mild", "small", "borderline")  # the strongest word wins
_MESH_SEVERITIES = {
    "mild": Severity.MILD, "small": Severity.MILD, "borderline": Severity.MILD,
    "moderate": Severity.MODERATE, "severe": Severity.SEVERE, "large": Severity.SEVERE,
}


def _mesh_tag_findings(tag: str) -> list[Finding]:
    parts = [" ".join(part.split()).lower() for part in tag.split("/")]
    term, qualifiers = parts[0], set(parts[1:])
    kinds = _MESH_KINDS.get(term, ())
    if term in _MESH_ROUND_IS_NODULE and "round" in qualifiers:
        kinds = (K.NODULE,)
    if term in _MESH_QUALIFIED:
        required, qualified_kinds = _MESH_QUALIFIED[term]
        kinds = qualified_kinds if qualifiers & required else ()
    if not kinds or qualifiers & _MESH_OUTSIDE_LUNG:
        return []
    sides = {_MESH_SIDES[q] for q in qualifiers if q in _MESH_SIDES}
    side = Side.BILATERAL if Side.BILATERAL in sides or len(sides) > 1 else sides.pop() if sides else Side.UNSPECIFIED
    if side is Side.UNSPECIFIED and "lingula" in qualifiers:
        side = Side.LEFT
    if side is Side.UNSPECIFIED and "middle lobe" in qualifiers:
        side = Side.RIGHT
    zones = [zone for zone in Zone if zone in {_MESH_ZONES[q] for q in qualifiers if q in _MESH_ZONES}]
    severity = next(
        (_MESH_SEVERITIES[q] for q in _MESH_SEVERITY_ORDER if q in qualifiers),
        Severity.UNSPECIFIED,
    )
    return [
        Finding(
            kind=kind,
            side=side if kind.lateralised else Side.UNSPECIFIED,
            zone=zone if kind.lateralised else Zone.UNSPECIFIED,
            severity=severity,
        )
        for kind in kinds
        for zone in zones or [Zone.UNSPECIFIED]
    ]


def parse_mesh(tags: Sequence[str]) -> list[Finding]:
    """The findings named by Open-i MeSH ``major`` tags (all asserted), one per (kind, side, zone)."""
    if isinstance(tags, str):
        tags = [tags]
    return merge_findings(finding for tag in tags for finding in _mesh_tag_findings(tag))
