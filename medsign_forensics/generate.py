"""Generate one synthetic study: report text -> watermarked image -> DICOM with signed provenance (and a PNG).

The pipeline: the deployment's base model samples x0 for the report (:func:`medsign_forensics.diffusion.sample`),
the deployment's watermarked decoder D_w decodes it (so the image carries the deployment's key), the image is
quantised to 8 bits and written by :func:`medsign_forensics.dicom.write_synthetic_study` with the deployment's
registry-signed provenance record and a per-image statement.

Before anything is sampled, the deployment must prove it may speak for itself: it is registered, its record is
byte-identical to the registry's row, that row's signature verifies, the key is still active (a revoked
deployment generates nothing), and the record vouches for the weights actually run (its weights digest is
the deployment's decoder digest or the base model's combined digest, whichever was hashed when the key was
issued). And it must be strong enough to be recognised: its held-out clean bit accuracy (measured at the end
of training and stored in the deployment) must reach what the policy needs to attribute against the
registry's keys (:func:`check_strength`); ``allow_weak`` lifts this for research.

Who signs the per-image statement: the ISSUER's private key, which must be registered in the registry (the
verifier trusts exactly the registry's issuer keys). So generation needs the issuer key file and its
passphrase. A per-deployment signing key delegated by the issuer would keep the issuer key offline, but it
needs a signed delegation document that verifiers check; that is not part of the record format (version 1),
so it is left out rather than half done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsign_forensics.config import WEIGHTS_DIR
from medsign_forensics.dicom.pixels import normalise_report, quantize
from medsign_forensics.dicom.writer import WrittenStudy, write_synthetic_study
from medsign_forensics.errors import InputError, ModelError, RegistryError
from medsign_forensics.fileio import save_png
from medsign_forensics.imageio import BT601_LUMA
from medsign_forensics.key import family_p_value
from medsign_forensics.provenance.canonical import from_base64
from medsign_forensics.provenance.entries import KeyStatus
from medsign_forensics.provenance.keys import Signer
from medsign_forensics.provenance.policy import Policy, load_policy
from medsign_forensics.provenance.records import ProvenanceRecord, SignedDocument
from medsign_forensics.provenance.registry import Registry
from medsign_forensics.verify import DEFAULT_REGISTRY_DIR
from medsign_forensics.watermark.deployment import EMBEDDED, Deployment, load_deployment

DEFAULT_DEPLOYMENT_DIR = WEIGHTS_DIR / "demo-deployment"


@dataclass(frozen=True)
class GeneratedStudy:
    """What :func:`generate_study` wrote and how."""

    study: WrittenStudy
    png: Path | None
    provenance_id: str
    deployment: str
    model: str
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    seconds: float
    layers: tuple[str, ...] = ("decoder",)
    layout_guidance: str = "off"  # whose layout guidance amplified (diffusion.layout.LayoutGuidance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.study.path),
            "png": None if self.png is None else str(self.png),
            "provenance_id": self.provenance_id,
            "deployment": self.deployment,
            "model": self.model,
            "seed": self.seed,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "layout_guidance": self.layout_guidance,
            "width": self.width,
            "height": self.height,
            "study_instance_uid": self.study.study_instance_uid,
            "series_instance_uid": self.study.series_instance_uid,
            "sop_instance_uid": self.study.sop_instance_uid,
            "pixel_sha256": self.study.pixel_sha256,
            "layers": list(self.layers),
            "seconds": round(self.seconds, 3),
        }


def load_default_deployment() -> Deployment:
    """The shipped demo deployment, or a ModelError saying how to get one."""
    if not (DEFAULT_DEPLOYMENT_DIR / "deployment.json").is_file():
        raise ModelError("the shipped demo deployment has not been trained into this installation yet; train one "
                         "with `medsign train --dataset cxr` and pass --deployment DIR", path=DEFAULT_DEPLOYMENT_DIR)
    return load_deployment(DEFAULT_DEPLOYMENT_DIR)


def authorised_record(deployment: Deployment, registry: Registry, signer: Signer) -> ProvenanceRecord:
    """The deployment's verified record, after every check of the module docstring (RegistryError/ModelError)."""
    provenance = deployment.manifest.get("provenance")
    if not isinstance(provenance, dict):
        raise RegistryError("this deployment is unregistered (its key was not issued by a registry), so its images "
                            "cannot carry signed provenance; train with a key from `medsign keys issue`",
                            path=deployment.path)
    entry = registry.get(str(provenance.get("provenance_id", "")))
    verified = registry.verify_entry(entry)
    if entry.status is not KeyStatus.ACTIVE:
        raise RegistryError(f"deployment {entry.provenance_id} is revoked in the registry; it may not generate "
                            "studies", path=registry.folder)
    if str(provenance.get("record", "")).encode("utf-8") != entry.signed_record.payload or \
            from_base64(str(provenance.get("signature", "")), "record signature") != entry.signed_record.signature:
        raise RegistryError(f"the deployment's provenance record differs from the registry's row for "
                            f"{entry.provenance_id}; the deployment folder was altered or belongs to another registry",
                            path=deployment.path)
    if entry.key_hex != deployment.key_hex or entry.bits != deployment.bits:
        raise RegistryError(f"the deployment writes key {deployment.key_hex} but the registry issued "
                            f"{entry.key_hex} to {entry.provenance_id}", path=deployment.path)
    record = verified.record
    weights = {deployment.decoder_sha256, str(deployment.base_model.get("weights_sha256"))}
    if record.model.weights_sha256 not in weights:
        raise ModelError(f"the provenance record vouches for weights {record.model.weights_sha256[:16]}..., which are "
                         "neither this deployment's decoder nor its base model; issue the key for these weights",
                         path=deployment.path)
    if signer.key_id not in registry.public_keys():
        raise RegistryError(f"the signing key {signer.key_id[:16]}... is not an issuer key of this registry, so "
                            "verifiers would reject its statements; sign with the registry's issuer key",
                            path=registry.folder)
    return record


def required_accuracy(deployment: Deployment, *, n_keys: int, policy: Policy) -> float:
    """The fewest agreeing bits (as a fraction) at which this deployment's key is attributed against
    ``n_keys`` registered keys under ``policy``, using the null of the extractor the deployment was trained for
    (Binomial(k, 1/2) when that extractor has no calibration or cannot be loaded)."""
    from medsign_forensics.watermark import stats
    from medsign_forensics.watermark.calibration import NullCalibration

    calibration = _extractor_calibration(deployment) or NullCalibration.fair(deployment.bits)
    q = stats.match_probabilities(deployment.key[None, :], np.asarray(calibration.rate_one_low),
                                  np.asarray(calibration.rate_one_high))  # (1, k): the same for any bits read
    counts = np.arange(deployment.bits + 1)
    tails = np.asarray(stats.poisson_binomial_sf(counts, np.repeat(q, len(counts), axis=0)))
    for matched, p in zip(counts, tails):
        if family_p_value(float(p), max(1, n_keys), policy.correction) <= policy.family_wise_fpr:
            return int(matched) / deployment.bits
    return float("inf")


def _extractor_calibration(deployment: Deployment) -> Any:
    from medsign_forensics.watermark.extractor_io import load_extractor

    try:
        return getattr(load_extractor(deployment.extractor_folder), "calibration", None)
    except (ModelError, InputError):
        return None


def check_strength(deployment: Deployment, *, n_keys: int, policy: Policy) -> None:
    """ModelError unless the deployment's held-out clean bit accuracy reaches :func:`required_accuracy` and a
    spectral mark is bound (without a binding secret, verify never attributes its images)."""
    from medsign_forensics.watermark.deployment import SPECTRAL_HEAD

    if deployment.kind == SPECTRAL_HEAD and deployment.binding() is None:
        raise ModelError(f"this deployment's key has no binding secret, so its images would be at most inconclusive; "
                         f"add one with `medsign keys add-binding {deployment.provenance_id or 'ID'} --registry "
                         f"REGISTRY --deployment {deployment.path}` (or pass --allow-weak for research)",
                         path=deployment.path)
    held_out = deployment.held_out
    if held_out is None or "none" not in held_out.get("bit_accuracy", {}):
        raise ModelError("this deployment records no held-out bit accuracy, so nobody knows whether its images "
                         "can be attributed; retrain it with --eval-reports N (or pass --allow-weak for research)",
                         path=deployment.path)
    clean = float(held_out["bit_accuracy"]["none"])
    needed = required_accuracy(deployment, n_keys=n_keys, policy=policy)
    if clean < needed:
        raise ModelError(f"held-out clean bit accuracy {clean:.3f} is below {needed:.3f}, the least that policy "
                         f"{policy.name!r} needs to attribute against {n_keys} registered key(s); its images would "
                         "not be recognised: train longer (or pass --allow-weak for research)", path=deployment.path)


def generate_study(
    *,
    report: str,
    out: str | Path,
    signer: Signer,
    deployment: Deployment | str | Path | None = None,
    registry: Registry | str | Path | None = None,
    model: Any | None = None,
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 4.0,
    png: str | Path | None = None,
    device: str = "cpu",
    policy: Policy | str | Path | None = None,
    allow_weak: bool = False,
) -> GeneratedStudy:
    """Generate one study from ``report`` with ``deployment`` (default: the shipped demo deployment).

    ``signer`` signs the per-image statement (a decrypted issuer key registered in ``registry``; default: the
    demo registry). ``model`` is a loaded DiffusionModel or a folder; by default the deployment's base model.
    ``png`` also writes the same 8-bit pixels as a PNG. ``policy`` (default: ``default``) decides how strong a
    deployment must be (:func:`check_strength`); ``allow_weak`` skips that check.
    """
    from medsign_forensics.diffusion import decode, load_model
    from medsign_forensics.diffusion.conditioning import sample_reports

    text = normalise_report(report)
    if not text:
        raise InputError("the report is empty; pass the report text with --report")
    out = Path(out)
    if out.suffix.lower() not in (".dcm", ".dicom", ""):
        raise InputError("the output must be a DICOM file (.dcm)", path=out)
    if png is not None and Path(png).suffix.lower() != ".png":
        raise InputError("the PNG export must be a .png file", path=png)
    start = time.perf_counter()
    loaded = deployment if isinstance(deployment, Deployment) else (
        load_default_deployment() if deployment is None else load_deployment(deployment))
    loaded_policy = policy if isinstance(policy, Policy) else load_policy(policy)
    if isinstance(registry, Registry):
        record = authorised_record(loaded, registry, signer)
        n_keys = len(registry.lookup(loaded.bits))
    else:
        with Registry.open(DEFAULT_REGISTRY_DIR if registry is None else registry) as opened:
            record = authorised_record(loaded, opened, signer)
            n_keys = len(opened.lookup(loaded.bits))
    if not allow_weak:
        check_strength(loaded, n_keys=n_keys, policy=loaded_policy)

    if model is None or isinstance(model, (str, Path)):
        base = loaded.base_model.get("path")
        path = model if model is not None else (None if base == EMBEDDED else base)
        model = load_model(path, device=device)
    vae = loaded.watermarked_vae(model)
    noise = latent_noise(loaded, model, seed)
    # the model's prompt form, and its layout if it has an adapter
    result = sample_reports(model, [text], seed=seed, steps=steps, guidance_scale=guidance_scale, output="latents",
                            latents=noise)
    assert result.latents is not None
    decoded = decode(model, result.latents, vae=vae)[0].detach().float().cpu().numpy()
    pixels = quantize(_grey(decoded), 8)

    signed_record = SignedDocument(payload=str(loaded.manifest["provenance"]["record"]).encode("utf-8"),
                                   signature=from_base64(str(loaded.manifest["provenance"]["signature"])))
    written = write_synthetic_study(out, image=pixels, report_text=text, model_name=record.model.name,
                                    model_version=record.model.version, weights_sha256=record.model.weights_sha256,
                                    provenance=signed_record, signer=signer, seed=seed)
    png_path = None
    if png is not None:
        png_path = Path(png)
        save_png(png_path, pixels)
    return GeneratedStudy(study=written, png=png_path, provenance_id=record.provenance_id,
                          deployment=record.deployment, model=f"{record.model.name} {record.model.version}",
                          seed=seed, steps=steps, guidance_scale=float(guidance_scale), width=int(pixels.shape[1]),
                          height=int(pixels.shape[0]), seconds=time.perf_counter() - start,
                          layers=("decoder", "latent") if noise is not None else ("decoder",),
                          layout_guidance=result.layout_guidance)


def latent_noise(deployment: Deployment, model: Any, seed: int) -> Any:
    """The watermarked initial noise z_T of a deployment with a latent layer (None without one).

    The layer is read back by inverting the model it was written with, so the loaded model must be that one.
    """
    import torch

    mark = deployment.latent_mark()
    if mark is None:
        return None
    expected = str(deployment.manifest["latent"]["base_weights_sha256"])
    if model.weights_sha256 != expected:
        raise ModelError(f"the deployment's latent layer is read by inverting base model {expected[:16]}..., but "
                         f"the loaded model is {model.weights_sha256[:16]}...; load the deployment's base model",
                         path=deployment.path)
    side = model.image_size // model.vae_scale_factor
    return mark.initial_noise((model.latent_channels, side, side), torch.Generator().manual_seed(seed))


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W): greyscale models pass through, RGB models go through BT.601 luma."""
    if image.shape[0] == 1:
        return image[0]
    if image.shape[0] == 3:
        return np.tensordot(np.asarray(BT601_LUMA, dtype=np.float32), image, axes=1)
    raise ModelError(f"the decoder produced {image.shape[0]} channels; expected 1 (greyscale) or 3 (RGB)")
