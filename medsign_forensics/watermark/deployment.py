"""A *deployment*: a fine-tuned (watermarking) VAE decoder and the key it writes, as one verified folder.

Folder layout::

    deployment.json        what the deployment is (below); written last, so its presence means complete
    decoder.safetensors    a fine-tuned decoder: the VAE's ``decoder.*`` and ``post_quant_conv.*`` tensors (float32)
      or head.safetensors  a watermark layer after the unchanged base decoder (:mod:`.head`): its tensors
    train_log.jsonl        the fine-tuning log (one JSON object per logging window)

``deployment.json`` fields: ``format`` ("medsign-deployment"), ``format_version``, ``name``, ``created_at``
(RFC 3339 UTC), ``software``, ``key_hex``, ``bits``, ``provenance`` (when the key was issued by a registry:
``provenance_id``, ``record`` = the registry's signed record text, ``signature`` = its base64 Ed25519 signature,
``registry`` = the folder it came from; else null and the deployment is *unregistered*), ``base_model``
(``name``, ``path`` or "embedded" for the shipped default, ``weights_sha256`` = the combined digest of its
weights files), ``extractor`` (``path``, ``sha256``), ``decoder`` (``file``, ``sha256``, and ``kind``:
"finetuned" (the default) or "spectral-head" with the layer's ``head`` and ``spectral`` configs), ``config``
(the training config incl. loss weights and ablation), ``seed``, ``device``, ``wall_time_s`` and ``metrics``
(including ``held_out``: bit accuracy per attack on held-out reports, which ``generate`` checks), and
``latent`` when the deployment also carries the latent layer (:mod:`.latent`): ``secret_hex``, ``config`` and
``base_weights_sha256``, copied from the registry (the secret is registry material: keep the folder private),
and ``binding`` when the key has a content-binding secret (:mod:`.binding`; ``secret_hex``, also from the
registry): a "spectral-head" deployment then writes a mark bound to each image, which verify requires.

Use::

    deployment = load_deployment("deployments/site-a")      # hash-checked; ModelError if tampered
    vae = deployment.watermarked_vae(model)                  # a copy of model.vae with D_w, strict keys
    images = decode(model, latents, vae=vae)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics import __version__
from medsign_forensics.errors import InputError, ModelError, RegistryError
from medsign_forensics.fileio import write_json
from medsign_forensics.key import bits_to_hex, check_length, hex_to_bits
from medsign_forensics.provenance.records import utc_now
from medsign_forensics.training.weights import check_state, load_state, load_tensors, save_tensors

FORMAT = "medsign-deployment"
FORMAT_VERSION = 1
MANIFEST_FILE = "deployment.json"
DECODER_FILE = "decoder.safetensors"
HEAD_FILE = "head.safetensors"
FINETUNED = "finetuned"
SPECTRAL_HEAD = "spectral-head"
LOG_FILE = "train_log.jsonl"
EMBEDDED = "embedded"
#: The parts of an AutoencoderKL that turn latents into pixels: what decoder fine-tuning changes.
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


@dataclass(frozen=True)
class KeyProvenance:
    """Where a registry-issued key came from: the signed record and its signature, exactly as stored."""

    provenance_id: str
    record: str
    signature: str
    registry: str

    def to_dict(self) -> dict[str, str]:
        return {
            "provenance_id": self.provenance_id,
            "record": self.record,
            "signature": self.signature,
            "registry": self.registry,
        }


@dataclass(frozen=True)
class DeploymentKey:
    """The key a deployment writes, and its provenance (None: an unregistered key for experiments)."""

    key_hex: str
    bits: int
    provenance: KeyProvenance | None = None
    latent: dict[str, Any] | None = None  # the latent layer's manifest entry (see the module docstring)
    binding: dict[str, str] | None = None  # the content-binding entry (see the module docstring)

    def __post_init__(self) -> None:
        check_length(self.bits)
        if len(self.key_hex) * 4 != self.bits or bits_to_hex(hex_to_bits(self.key_hex)) != self.key_hex:
            raise InputError(f"key {self.key_hex!r} is not {self.bits // 4} lower-case hex digits")

    @property
    def key(self) -> np.ndarray:
        return hex_to_bits(self.key_hex)

    @property
    def registered(self) -> bool:
        return self.provenance is not None


def key_from_hex(text: str) -> DeploymentKey:
    """An explicit key for experiments: the deployment will be unregistered (no provenance record)."""
    key_hex = text.strip().lower()
    bits = hex_to_bits(key_hex)
    return DeploymentKey(key_hex=bits_to_hex(bits), bits=int(bits.size))


def key_from_registry(registry_dir: str | Path, provenance_id: str) -> DeploymentKey:
    """The key a registry issued under ``provenance_id``, after checking its signed record.

    Refuses a revoked key and a row whose signature does not verify (RegistryError).
    """
    from medsign_forensics.provenance.entries import KeyStatus
    from medsign_forensics.provenance.layers import bindings, latent_layers
    from medsign_forensics.provenance.registry import Registry

    with Registry.open(registry_dir) as registry:
        entry = registry.get(provenance_id)
        registry.verify_entry(entry)
        folder = str(registry.folder)
        layer = latent_layers(registry).get(entry.provenance_id)
        secret = bindings(registry).get(entry.provenance_id)
    if entry.status is not KeyStatus.ACTIVE:
        raise RegistryError(
            f"provenance ID {entry.provenance_id} is {entry.status.value}; issue a new key with `medsign keys issue`",
            path=registry_dir,
        )
    stored = entry.to_dict()
    provenance = KeyProvenance(
        provenance_id=entry.provenance_id, record=stored["record"], signature=stored["signature"], registry=folder
    )
    return DeploymentKey(key_hex=entry.key_hex, bits=entry.bits, provenance=provenance,
                         latent=None if layer is None else latent_manifest(layer),
                         binding=None if secret is None else {"secret_hex": secret.hex()})


def latent_manifest(layer: Any) -> dict[str, Any]:
    """The deployment manifest's ``latent`` entry for a registry's :class:`~..provenance.layers.LatentEntry`."""
    return {"secret_hex": layer.secret.hex(), "config": dict(layer.config),
            "base_weights_sha256": layer.base_weights_sha256}


def add_latent_to_deployment(path: str | Path, layer: Any) -> None:
    """Give an existing deployment its key's latent layer (rewrites ``deployment.json`` atomically)."""
    _add_entry(path, layer.provenance_id, "latent", latent_manifest(layer))


def add_binding_to_deployment(path: str | Path, provenance_id: str, secret: bytes) -> None:
    """Give an existing deployment its key's content-binding secret (rewrites ``deployment.json`` atomically)."""
    _add_entry(path, provenance_id, "binding", {"secret_hex": secret.hex()})


def _add_entry(path: str | Path, provenance_id: str, name: str, entry: dict[str, Any]) -> None:
    folder = Path(path)
    manifest = read_manifest(folder)
    provenance = manifest.get("provenance") or {}
    if provenance.get("provenance_id") != provenance_id:
        raise InputError(f"the deployment does not hold the key {provenance_id}", path=folder)
    if manifest.get(name) is not None:
        raise InputError(f"the deployment already carries a {name} entry", path=folder)
    manifest[name] = entry
    write_json(folder / MANIFEST_FILE, manifest)


def decoder_state(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The decoder-side tensors of an AutoencoderKL (float32, CPU, contiguous): what a deployment stores."""
    state = {
        name: tensor.detach().to("cpu", torch.float32).contiguous()
        for name, tensor in vae.state_dict().items()
        if name.startswith(DECODER_PREFIXES)
    }
    if not state:
        raise InputError("this module has no decoder.* or post_quant_conv.* tensors; pass a diffusers AutoencoderKL")
    return state


def save_deployment(
    out_dir: str | Path,
    *,
    vae: torch.nn.Module | None = None,
    head: Any = None,
    key: DeploymentKey,
    base_model: dict[str, str],
    extractor: dict[str, str],
    config: dict[str, Any],
    seed: int,
    device: str,
    wall_time_s: float,
    metrics: dict[str, Any],
    name: str | None = None,
) -> Path:
    """Write ``decoder.safetensors`` then ``deployment.json`` (each atomically) into ``out_dir``; returns it.

    Give exactly one of ``vae`` (a fine-tuned AutoencoderKL: its decoder side is stored) and ``head`` (a
    :class:`~medsign_forensics.watermark.head.WatermarkHead` after the unchanged base decoder).
    ``base_model`` is ``{"name", "path", "weights_sha256"}`` (path "embedded" for the shipped default),
    ``extractor`` is ``{"path", "sha256"}``. ``train_log.jsonl`` is the trainer's; it is left as it is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for field_name in ("name", "path", "weights_sha256"):
        if field_name not in base_model:
            raise InputError(f"base_model needs a {field_name!r} entry")
    if (vae is None) == (head is None):
        raise InputError("a deployment stores either a fine-tuned decoder or a watermark layer; give exactly one")
    file = DECODER_FILE if head is None else HEAD_FILE
    if head is None:
        assert vae is not None  # exactly one of the two, checked above
        state = decoder_state(vae)
    else:
        state = head.state_dict()
    decoder_sha = save_tensors(out_dir / file, state, dtype=torch.float32,
                               metadata={"format": FORMAT, "software": __version__})
    decoder_entry: dict[str, Any] = {"file": file, "sha256": decoder_sha, "kind": FINETUNED}
    if head is not None:
        decoder_entry.update(kind=SPECTRAL_HEAD, head=head.config.to_dict(), spectral=head.spectral.to_dict())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or out_dir.resolve().name,
        "created_at": utc_now(),
        "software": f"medsign-forensics {__version__}",
        "key_hex": key.key_hex,
        "bits": key.bits,
        "registered": key.registered,
        "provenance": None if key.provenance is None else key.provenance.to_dict(),
        "base_model": dict(base_model),
        "extractor": dict(extractor),
        "decoder": decoder_entry,
        "latent": key.latent,
        "binding": key.binding,
        "config": config,
        "seed": seed,
        "device": device,
        "wall_time_s": round(float(wall_time_s), 3),
        "metrics": metrics,
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return out_dir


@dataclass(frozen=True)
class Deployment:
    """A loaded, hash-verified deployment. ``state`` holds the decoder tensors; build the VAE with
    :meth:`watermarked_vae`."""

    path: Path
    manifest: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def key_hex(self) -> str:
        return str(self.manifest["key_hex"])

    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    @property
    def key(self) -> np.ndarray:
        return hex_to_bits(self.key_hex)

    @property
    def registered(self) -> bool:
        return self.manifest.get("provenance") is not None

    @property
    def provenance_id(self) -> str | None:
        provenance = self.manifest.get("provenance")
        return None if provenance is None else str(provenance["provenance_id"])

    @property
    def base_model(self) -> dict[str, str]:
        return dict(self.manifest["base_model"])

    @property
    def extractor(self) -> dict[str, str]:
        return dict(self.manifest["extractor"])

    @property
    def extractor_folder(self) -> Path:
        """Where the extractor this deployment was trained against lives ("embedded": the shipped one)."""
        from medsign_forensics.config import WEIGHTS_DIR

        path = str(self.extractor["path"])
        return WEIGHTS_DIR / "extractor" if path == EMBEDDED else Path(path)

    @property
    def decoder_sha256(self) -> str:
        return str(self.manifest["decoder"]["sha256"])

    @property
    def kind(self) -> str:
        """"finetuned" (decoder weights) or "spectral-head" (a watermark layer after the base decoder)."""
        return str(self.manifest["decoder"].get("kind", FINETUNED))

    @property
    def held_out(self) -> dict[str, Any] | None:
        """Held-out bit accuracy per attack measured at the end of training (None for older deployments)."""
        metrics = self.manifest.get("metrics") or {}
        held_out = metrics.get("held_out")
        return dict(held_out) if isinstance(held_out, dict) else None

    def head(self) -> Any:
        """The watermark layer of a "spectral-head" deployment, with its trained tensors (strict keys)."""
        from medsign_forensics.watermark.head import HeadConfig, WatermarkHead
        from medsign_forensics.watermark.spectral import SpectralConfig

        if self.kind != SPECTRAL_HEAD:
            raise InputError(f"deployment {self.name} fine-tunes the decoder; it has no watermark layer")
        entry = self.manifest["decoder"]
        path = self.path / str(entry.get("file", HEAD_FILE))
        try:
            layer = WatermarkHead(spectral=SpectralConfig.from_dict(entry["spectral"]), key=self.key,
                                  config=HeadConfig.from_dict(entry["head"]), binding=self.binding())
        except (KeyError, TypeError, InputError) as error:
            raise ModelError(f"the watermark layer's config is unusable ({error})", path=path) from None
        load_state(layer, self.state, what="watermark layer's tensors", target="its config", path=path)
        return layer.eval().requires_grad_(False)

    def binding(self) -> Any:
        """The content binding (:class:`~.binding.Binding`) of this deployment's mark, or None (unbound)."""
        from medsign_forensics.watermark.binding import Binding

        entry = self.manifest.get("binding")
        if entry is None:
            return None
        try:
            return Binding(bytes.fromhex(str(entry["secret_hex"])))
        except (KeyError, TypeError, ValueError, InputError) as error:
            raise ModelError(f"the deployment's binding secret is unusable ({error})", path=self.path) from None

    @property
    def has_latent(self) -> bool:
        return self.manifest.get("latent") is not None

    def latent_mark(self) -> Any:
        """The latent layer (:class:`~.latent.LatentMark`) this deployment writes into z_T, or None."""
        from medsign_forensics.watermark.latent import LatentConfig, LatentMark

        entry = self.manifest.get("latent")
        if entry is None:
            return None
        try:
            return LatentMark(key=self.key, secret=bytes.fromhex(str(entry["secret_hex"])),
                              config=LatentConfig.from_dict(entry["config"]))
        except (KeyError, TypeError, ValueError, InputError) as error:
            raise ModelError(f"the deployment's latent layer is unusable ({error})", path=self.path) from None

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @property
    def ablation(self) -> str:
        return str(self.config.get("ablation", "none"))

    def watermarked_vae(self, model: Any, *, check_base: bool = True) -> torch.nn.Module:
        """A float32 copy of ``model.vae`` (a DiffusionModel's) whose decoder and post_quant_conv are this
        deployment's. Always float32, on the model's device: the watermark is a change of a grey level or two,
        which bfloat16 rounding of the decoder's activations would blur.

        Strict: the file must hold exactly the base VAE's decoder-side tensors with the same shapes, else
        ModelError. ``check_base`` also demands that ``model`` is the base model the decoder was tuned from
        (same combined weights SHA-256), since a decoder only watermarks the latents of its own model.
        """
        if check_base and model.weights_sha256 != self.base_model["weights_sha256"]:
            raise ModelError(
                f"this deployment was fine-tuned from base model {self.base_model['name']!r} (weights "
                f"{self.base_model['weights_sha256'][:16]}...) but the loaded model {model.name!r} has weights "
                f"{model.weights_sha256[:16]}...; load the base model the deployment names",
                path=self.path,
            )
        vae = copy.deepcopy(model.vae).float()
        if self.kind == SPECTRAL_HEAD:
            from medsign_forensics.watermark.head import attach

            attach(vae, self.head())
        else:
            load_decoder_state(vae, self.state, path=self.path / DECODER_FILE)
        vae.requires_grad_(False)
        return vae.eval()


def load_decoder_state(vae: torch.nn.Module, state: dict[str, torch.Tensor], *, path: Path | None = None) -> None:
    """Load decoder-side tensors into an AutoencoderKL with strict key and shape checking (ModelError)."""
    current = vae.state_dict()
    expected = {name: tensor for name, tensor in current.items() if name.startswith(DECODER_PREFIXES)}
    check_state(state, expected, what="decoder weights", target="the base model's VAE", path=path)
    merged = {**current, **{name: state[name].to(current[name].dtype) for name in expected}}
    vae.load_state_dict(merged, strict=True)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed ``deployment.json`` of a deployment folder (ModelError when absent or not one)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelError(
            f"no {MANIFEST_FILE} here; point to a deployment folder written by `medsign train --dataset ...`",
            path=folder,
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"the deployment manifest cannot be read ({error})", path=manifest_path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"this is not a {FORMAT} manifest", path=manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"deployment format version {manifest.get('format_version')!r} is not {FORMAT_VERSION}; "
            "use the software version that wrote it or retrain",
            path=manifest_path,
        )
    required = ("name", "key_hex", "bits", "base_model", "extractor", "decoder")
    absent = [name for name in required if name not in manifest]
    if absent:
        raise ModelError(f"the deployment manifest lacks {', '.join(absent)}", path=manifest_path)
    try:
        DeploymentKey(key_hex=str(manifest["key_hex"]), bits=int(manifest["bits"]))
    except (InputError, TypeError, ValueError) as error:
        raise ModelError(f"the deployment's key is unusable ({error})", path=manifest_path) from None
    return manifest


def load_deployment(path: str | Path) -> Deployment:
    """Read a deployment folder, check the decoder file against its recorded SHA-256, load its tensors.

    Raises ModelError for a missing or foreign manifest, a missing, altered or unreadable decoder file, and
    tensors outside the decoder (the strict per-architecture check happens in :meth:`Deployment.watermarked_vae`).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    decoder = manifest["decoder"]
    weights = folder / str(decoder.get("file", DECODER_FILE))
    state = load_tensors(weights, sha256=decoder.get("sha256"), what="decoder weights", recorded_in=MANIFEST_FILE)
    if decoder.get("kind", FINETUNED) not in (FINETUNED, SPECTRAL_HEAD):
        raise ModelError(f"unknown decoder kind {decoder.get('kind')!r}; use the software version that wrote it",
                         path=folder / MANIFEST_FILE)
    foreign = [] if decoder.get("kind") == SPECTRAL_HEAD else sorted(
        name for name in state if not name.startswith(DECODER_PREFIXES))
    if foreign:
        raise ModelError(
            f"the decoder file holds tensors outside the VAE decoder (e.g. {foreign[:2]}); it is not a deployment's",
            path=weights,
        )
    return Deployment(path=folder.resolve(), manifest=manifest, state=state)
