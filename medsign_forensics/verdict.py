"""What verification concludes about one file: the verdict, the evidence it rests on, the JSON form.

Plain data (no I/O): :mod:`medsign_forensics.verify` computes verdicts, the CLI and scan render them. A verdict
may rest on two watermark layers, the decoder layer (the spectral mark the watermarked decoder writes) and the
latent layer (a key in the initial noise, read by inversion); ``match`` and ``latent`` hold each layer's best
key, and the layer that attributes decides ``provenance_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from medsign_forensics.dicom.reader import CheckStatus, StudyCheck
from medsign_forensics.errors import InputError, MedsignError
from medsign_forensics.provenance.entries import KeyStatus
from medsign_forensics.provenance.policy import Attribution, TamperEvent

DECODER_LAYER = "decoder"
LATENT_LAYER = "latent"
LAYERS = (DECODER_LAYER, LATENT_LAYER)


class VerdictKind(str, Enum):
    """What verification concludes about one file."""

    ATTRIBUTED = "attributed"
    NOT_DETECTED = "not detected"
    INCONCLUSIVE = "inconclusive"
    REVOKED = "revoked"
    TAMPERED = "tampered"
    MISMATCH = "mismatch"
    UNVERIFIABLE = "unverifiable"  # signed by an issuer this registry does not know; no registered watermark
    ERROR = "error"

    @property
    def is_alarm(self) -> bool:
        """Verdicts that should stop a workflow: the file's provenance is false, altered or withdrawn."""
        return self in (VerdictKind.REVOKED, VerdictKind.TAMPERED, VerdictKind.MISMATCH)


@dataclass(frozen=True)
class VerifyCheck:
    """One named check of a verification, as shown in reports and JSON."""

    name: str
    status: CheckStatus
    detail: str
    event: TamperEvent | None = None  # the policy event a failure stands for

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class KeyMatch:
    """The registered key that best matches the extracted message, and the evidence for it."""

    provenance_id: str
    key_status: KeyStatus
    matched_bits: int
    bits: int
    p_value: float  # per key: P(X >= matched_bits) under the extractor's null (Binomial(bits, 1/2) if uncalibrated)
    family_wise_p_value: float  # over all candidates (and readings), with the policy's correction
    candidates: int
    attribution: Attribution
    deployment: str | None = None  # from the verified record; None when the match was not attributed
    issuer: str | None = None
    model: str | None = None
    presence: float | None = None  # the spectral extractor's pilot score (None for a HiDDeN extractor)
    null: str = "binomial"  # "binomial" or "calibrated": which null gave the p-values
    layer: str = "decoder"  # which watermark layer the bits were read from: "decoder" or "latent"
    coherence: float | None = None  # content binding of an attributed spectral match (watermark.binding)
    coherence_threshold: float | None = None  # ... and the value it needed at the policy's false-positive rate

    @property
    def bit_accuracy(self) -> float:
        return self.matched_bits / self.bits

    def to_dict(self) -> dict[str, Any]:
        return {
            "provenance_id": self.provenance_id,
            "key_status": self.key_status.value,
            "matched_bits": self.matched_bits,
            "bits": self.bits,
            "bit_accuracy": self.bit_accuracy,
            "p_value": self.p_value,
            "family_wise_p_value": self.family_wise_p_value,
            "candidates": self.candidates,
            "attribution": self.attribution.value,
            "deployment": self.deployment,
            "issuer": self.issuer,
            "model": self.model,
            "presence": self.presence,
            "null": self.null,
            "layer": self.layer,
            "coherence": self.coherence,
            "coherence_threshold": self.coherence_threshold,
        }


@dataclass(frozen=True)
class Verdict:
    """Everything verification concluded about one file. ``match`` is None when no key could be compared."""

    file: str
    kind: VerdictKind
    format: str | None = None
    width: int | None = None
    height: int | None = None
    reading: str | None = None  # the size the extractor read, e.g. "256x256 (resized from 1024x1024)"
    match: KeyMatch | None = None  # the decoder layer's best key (the closest one when nothing attributes)
    checks: tuple[VerifyCheck, ...] = ()
    notes: tuple[str, ...] = ()
    latent: KeyMatch | None = None  # the latent layer's best key, when that layer was read
    sop_instance_uid: str | None = None
    claimed_provenance_id: str | None = None  # what DICOM tags claim (signed or not)
    policy: str | None = None
    error: str | None = None
    error_code: int | None = None
    seconds: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)  # e.g. PACS instance identifiers

    @property
    def attributing(self) -> KeyMatch | None:
        """The layer match that attributes the pixels (the decoder layer's first), else None."""
        return attributing_match(self.match, self.latent)

    @property
    def attributed(self) -> bool:
        """The statistics of some layer identify a registered key (whatever the final verdict)."""
        return self.attributing is not None

    @property
    def provenance_id(self) -> str | None:
        """The deployment the pixels are attributed to; None unless the statistics attribute them."""
        match = self.attributing
        return None if match is None else match.provenance_id

    @property
    def shown(self) -> KeyMatch | None:
        """The match a one-line summary shows: the one that decides the verdict (:func:`deciding_match`)."""
        return deciding_match(self.match, self.latent)

    @property
    def p_value(self) -> float | None:
        return None if self.shown is None else self.shown.p_value

    @property
    def bit_accuracy(self) -> float | None:
        return None if self.shown is None else self.shown.bit_accuracy

    @property
    def matched_bits(self) -> int | None:
        return None if self.shown is None else self.shown.matched_bits

    @property
    def evidence(self) -> str | None:
        """What the verdict rests on. "signature": the pixels carry a valid statement signed by an issuer the
        verifier trusts (proof of origin, unless that issuer's private key leaked). "watermark": only the
        pixels match a registered key, which anyone holding that key can imitate (evidence, not proof).
        None: neither."""
        passed = {check.name for check in self.checks if check.status is CheckStatus.PASS}
        if {"statement_signature", "pixel_hash"} <= passed:
            return "signature"
        return "watermark" if self.attributed else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (stable field names; see the module docstring of medsign_forensics.cli.verify)."""
        match = self.shown
        return {
            "file": self.file,
            "verdict": self.kind.value,
            "evidence": self.evidence,
            "provenance_id": self.provenance_id,
            "p_value": self.p_value,
            "family_wise_p_value": None if match is None else match.family_wise_p_value,
            "bit_accuracy": self.bit_accuracy,
            "matched_bits": self.matched_bits,
            "bits": None if match is None else match.bits,
            "key_status": None if match is None or not self.attributed else match.key_status.value,
            "deployment": None if match is None else match.deployment,
            "issuer": None if match is None else match.issuer,
            "model": None if match is None else match.model,
            "closest_key": None if match is None else match.to_dict(),
            "layers": {"decoder": None if self.match is None else self.match.to_dict(),
                       **({"latent": self.latent.to_dict()} if self.latent is not None else {})},
            "claimed_provenance_id": self.claimed_provenance_id,
            "sop_instance_uid": self.sop_instance_uid,
            "checks": [check.to_dict() for check in self.checks],
            "notes": list(self.notes),
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "reading": self.reading,
            "policy": self.policy,
            "error": self.error,
            "error_code": self.error_code,
            "seconds": round(self.seconds, 4),
            **({"source": self.source} if self.source else {}),
        }

    @classmethod
    def from_error(cls, file: str | Path, error: MedsignError, *, seconds: float = 0.0,
                   source: Mapping[str, Any] | None = None) -> Verdict:
        """The verdict recorded for a file that could not be analysed: the error's one-line message."""
        message = " ".join(str(error).split())  # one line, whatever the message held
        return cls(file=str(file), kind=VerdictKind.ERROR, error=message, error_code=error.exit_code,
                   seconds=seconds, source=dict(source or {}))


def check_layers(layers: Iterable[str]) -> tuple[str, ...]:
    """The layers to read, validated; the decoder layer is always read (it is fast and finds the geometry)."""
    wanted = tuple(dict.fromkeys(str(layer).strip().lower() for layer in layers if str(layer).strip()))
    unknown = [layer for layer in wanted if layer not in LAYERS]
    if unknown:
        raise InputError(f"unknown watermark layer(s) {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    if DECODER_LAYER not in wanted:
        raise InputError("the decoder layer is always read (it is fast and finds the image's geometry for the "
                         "latent layer); use --layers decoder or --layers decoder,latent")
    return wanted

def attributing_match(decoder: KeyMatch | None, latent: KeyMatch | None) -> KeyMatch | None:
    """The first layer match that attributes (decoder layer, then latent layer), else None."""
    for match in (decoder, latent):
        if match is not None and match.attribution is Attribution.ATTRIBUTED:
            return match
    return None


def deciding_match(decoder: KeyMatch | None, latent: KeyMatch | None) -> KeyMatch | None:
    """The layer match the verdict follows: an attributing one, else an inconclusive one (decoder layer first),
    else the decoder layer's closest key."""
    for wanted in (Attribution.ATTRIBUTED, Attribution.INCONCLUSIVE):
        for match in (decoder, latent):
            if match is not None and match.attribution is wanted:
                return match
    return decoder or latent


def layers_agree(decoder: KeyMatch | None, latent: KeyMatch | None) -> list[VerifyCheck]:
    """Both layers attributing to different deployments is a mismatch: one of them was put there."""
    if decoder is None or latent is None or Attribution.ATTRIBUTED not in (decoder.attribution,
                                                                             latent.attribution):
        return []
    if decoder.attribution is latent.attribution and decoder.provenance_id != latent.provenance_id:
        return [VerifyCheck("layers_agree", CheckStatus.FAIL,
                            f"the decoder layer carries {decoder.provenance_id} but the latent layer "
                            f"{latent.provenance_id}", TamperEvent.TAGS_DISAGREE_WITH_WATERMARK)]
    if decoder.attribution is latent.attribution:
        return [VerifyCheck("layers_agree", CheckStatus.PASS, f"both layers carry {decoder.provenance_id}")]
    return []


def corroborate_latent(decoder: KeyMatch | None, latent: KeyMatch | None
                       ) -> tuple[KeyMatch | None, list[VerifyCheck]]:
    """The latent layer attributes only beside a decoder-layer attribution of the same key: alone it is at most
    inconclusive, because imprinting with the public base model forges it onto a real image (README, threat
    model: 4 of 10 real radiographs attributed at 40 dB before this rule)."""
    if latent is None or latent.attribution is not Attribution.ATTRIBUTED:
        return latent, []
    if decoder is not None and decoder.attribution is Attribution.ATTRIBUTED and \
            decoder.provenance_id == latent.provenance_id:
        return latent, []
    return replace(latent, attribution=Attribution.INCONCLUSIVE), [VerifyCheck(
        "latent_corroborated", CheckStatus.FAIL,
        f"the latent layer matches {latent.provenance_id} but the decoder layer does not attribute it; the latent "
        "layer alone can be forged with the public base model (imprinting), so it is a lead, not an attribution")]


def tags_vs_watermark(study: StudyCheck, match: KeyMatch | None) -> VerifyCheck:
    """Do the DICOM provenance tags and the pixels name the same deployment?"""
    name = "tags_match_watermark"
    attributed = match is not None and match.attribution is Attribution.ATTRIBUTED
    if study.block is None:
        if attributed:
            assert match is not None
            return VerifyCheck(name, CheckStatus.FAIL,
                               f"the pixels carry the key of {match.provenance_id} but the file has no MedSign "
                               "provenance tags (stripped by a PACS or an anonymiser, or never written)",
                               TamperEvent.WATERMARK_WITHOUT_TAGS)
        return VerifyCheck(name, CheckStatus.SKIPPED, "no provenance tags and no registered watermark")
    if study.record is None:
        # an unknown issuer's tags on pixels that carry a registered key
        if (attributed and match is not None and study.unverifiable
                and study.block.provenance_id != match.provenance_id):
            return VerifyCheck(name, CheckStatus.FAIL,
                               f"the tags claim {study.block.provenance_id} (signed by an issuer unknown here) but "
                               f"the pixels carry the key of {match.provenance_id}",
                               TamperEvent.TAGS_DISAGREE_WITH_WATERMARK)
        return VerifyCheck(name, CheckStatus.SKIPPED, "the tags' provenance record did not verify")
    claimed = study.record.provenance_id
    if attributed:
        assert match is not None
        if match.provenance_id == claimed:
            return VerifyCheck(name, CheckStatus.PASS, f"tags and watermark both name {claimed}")
        return VerifyCheck(name, CheckStatus.FAIL,
                           f"the tags claim {claimed} but the pixels carry the key of {match.provenance_id}",
                           TamperEvent.TAGS_DISAGREE_WITH_WATERMARK)
    if match is not None and match.attribution is Attribution.INCONCLUSIVE:
        return VerifyCheck(name, CheckStatus.SKIPPED,
                           f"the tags claim {claimed}; the watermark evidence is inconclusive, so it neither "
                           "confirms nor contradicts them")
    return VerifyCheck(name, CheckStatus.FAIL,
                       f"the tags claim {claimed} but the pixels carry no registered key: the provenance "
                       "block does not belong to this image", TamperEvent.TAGS_WITHOUT_WATERMARK)

