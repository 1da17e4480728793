"""Provenance: issuer keys, the key registry, signed records and statements, and decision policies.

Typical use by a model provider::

    issuer = load_issuer_key("issuer.key", passphrase)
    with Registry.open("registry/") as registry:
        entry = registry.issue(issuer, model=ModelInfo(...), deployment="site-a", policy=load_policy())

and by a verifier (public keys only)::

    with Registry.open("registry/") as registry:
        candidates = registry.lookup(bits=48)
        counts = candidates.match_counts(extracted_bits)
        verified = registry.verify_entry(candidates.entries[int(counts.argmax())])
"""

from medsign_forensics.provenance.checks import CheckReport
from medsign_forensics.provenance.entries import Candidates, Issuer, KeyStatus, RegistryEntry, VerifiedEntry
from medsign_forensics.provenance.keys import (
    PASSPHRASE_ENV,
    IssuerKey,
    ScryptParams,
    Signer,
    create_issuer_key,
    key_id_of,
    load_issuer_key,
    load_public_key_file,
    load_public_key_pem,
    public_key_pem,
)
from medsign_forensics.provenance.policy import (
    Attribution,
    Policy,
    TamperAction,
    TamperEvent,
    load_policy,
)
from medsign_forensics.provenance.records import (
    DocumentType,
    ImageStatement,
    ModelInfo,
    ProvenanceRecord,
    Revocation,
    SignatureError,
    SignatureFailure,
    SignedDocument,
    WatermarkPayload,
    sign,
    verify,
)
from medsign_forensics.provenance.registry import Registry

__all__ = [
    "PASSPHRASE_ENV", "Attribution", "Candidates", "CheckReport", "DocumentType", "ImageStatement",
    "Issuer", "IssuerKey", "KeyStatus", "ModelInfo", "Policy", "ProvenanceRecord", "Registry", "RegistryEntry",
    "Revocation", "ScryptParams", "SignatureError", "SignatureFailure", "SignedDocument", "Signer", "TamperAction",
    "TamperEvent", "VerifiedEntry", "WatermarkPayload", "create_issuer_key", "key_id_of", "load_issuer_key",
    "load_policy", "load_public_key_file", "load_public_key_pem", "public_key_pem", "sign", "verify",
]
