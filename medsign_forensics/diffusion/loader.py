"""Load a text-to-image latent diffusion model from a local folder: the shipped mini-cxr or any SD-1.x folder.

One code path for both, so everything downstream (sampling, the localization map, the watermarked decoder)
is tested on the small model and runs unchanged on a real Stable Diffusion fine-tune such as RoentGen.

Supported: a diffusers ``StableDiffusionPipeline`` folder (SD-1.x, and SD-2.x, which has the same layout;
epsilon or v prediction, both handled by the scheduler) with CLIP tokenizer and text encoder,
UNet2DConditionModel and AutoencoderKL with any number of image channels (mini-cxr is greyscale). Not
supported, with a ModelError: SDXL and other pipelines (two text encoders, added conditioning), inpainting or
depth U-Nets (extra input channels). The safety checker is never loaded. Nothing is fetched from a hub. A
layout adapter in ``adapter/`` (a diffusers T2IAdapter, :mod:`~medsign_forensics.diffusion.layout`) is loaded,
hashed and checked like the other components.

Every folder is checked before any weights are read (layout, classes, dimensions that must agree), every
weights file is hashed (the hashes go into provenance records), a ``SHA256SUMS`` manifest is checked when
present (the shipped default must have one), and every weights file must match its model's parameters key
for key (the checks of :mod:`medsign_forensics.training.weights`; the folder itself is read by diffusers'
``from_pretrained``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from medsign_forensics.config import WEIGHTS_DIR  # noqa: E402
from medsign_forensics.errors import ModelError  # noqa: E402
from medsign_forensics.fileio import sha256_file  # noqa: E402
from medsign_forensics.training.weights import check_state, read_json_manifest, verify_sha256  # noqa: E402

DEFAULT_MODEL_NAME = "mini-cxr"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / DEFAULT_MODEL_NAME
MANIFEST_NAME = "SHA256SUMS"
REQUIRED_COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
SUPPORTED_PIPELINE = "StableDiffusionPipeline"
#: A layout adapter's folder (:mod:`~medsign_forensics.diffusion.layout`); not in model_index.json, so diffusers'
#: StableDiffusionPipeline ignores it and only StableDiffusionAdapterPipeline uses it.
ADAPTER_FOLDER = "adapter"
NAME_KEY = "_medsign_model_name"  # in model_index.json of folders we export; others are named by their folder
#: In model_index.json of folders we export: how a report becomes the model's prompt (the caption form it was
#: trained on, :data:`~medsign_forensics.diffusion.configs.CAPTION_FORMS`); folders without it take the report.
PROMPT_FORM_KEY = "_medsign_prompt_form"
_EXPECTED_CLASSES = {
    "tokenizer": {"CLIPTokenizer", "CLIPTokenizerFast"},
    "text_encoder": {"CLIPTextModel"},
    "unet": {"UNet2DConditionModel"},
    "vae": {"AutoencoderKL"},
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Keys some older checkpoints carry that are buffers, not parameters; harmless when absent or present.
_BENIGN_KEY_SUFFIXES = ("position_ids",)
_TEXT_MODEL_PREFIX = "text_model."
# Old diffusers attention parameter names, which diffusers renames on load.
_DEPRECATED_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


@dataclass(frozen=True)
class DiffusionModel:
    """A loaded pipeline plus what provenance needs to know about it.

    ``weights`` maps each weights file (path relative to the folder) to its SHA-256; ``weights_sha256`` is one
    digest over all of them (the SHA-256 of their ``sha256sum``-style listing, sorted by path).
    """

    name: str
    path: Path
    pipeline: Any  # diffusers.StableDiffusionPipeline
    weights: Mapping[str, str]
    device: torch.device
    dtype: torch.dtype
    is_default: bool = False
    component_classes: Mapping[str, str] = field(default_factory=dict)
    adapter: Any | None = None  # diffusers.T2IAdapter: the model's layout adapter, when it has one
    prompt_form: str = "report"  # how a report becomes this model's prompt (PROMPT_FORM_KEY)

    @property
    def tokenizer(self) -> Any:
        return self.pipeline.tokenizer

    @property
    def text_encoder(self) -> Any:
        return self.pipeline.text_encoder

    @property
    def unet(self) -> Any:
        return self.pipeline.unet

    @property
    def vae(self) -> Any:
        return self.pipeline.vae

    @property
    def scheduler(self) -> Any:
        return self.pipeline.scheduler

    @property
    def image_channels(self) -> int:
        """1 for greyscale models such as mini-cxr, 3 for RGB models such as RoentGen."""
        return int(self.vae.config.out_channels)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The default output height and width (the U-Net's sample size times the VAE's scale factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def weights_sha256(self) -> str:
        return combined_sha256(self.weights)


def load_model(
    path: str | Path | None = None, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DiffusionModel:
    """Load the model in ``path`` (``None``: the shipped mini-cxr) onto ``device``.

    ``dtype`` defaults to float32 on CPU and to bfloat16 (float16 where bfloat16 is unsupported) on CUDA.
    Raises :class:`ModelError` for anything that makes the folder unusable, naming the file at fault.
    """
    is_default = path is None
    folder = Path(DEFAULT_MODEL_DIR if path is None else path).expanduser()
    device = torch.device(device)
    dtype = dtype or _default_dtype(device)
    index, weights, digests = _verified_weights(folder, is_default=is_default)
    pipeline = _load_pipeline(folder, dtype)
    adapter = _load_adapter(folder, dtype)
    _check_keys(folder, {**pipeline.components, ADAPTER_FOLDER: adapter}, weights)
    pipeline.to(device)
    if adapter is not None:
        adapter.to(device)
    classes = {name: str(index[name][1]) for name in REQUIRED_COMPONENTS}
    return DiffusionModel(
        name=DEFAULT_MODEL_NAME if is_default else str(index.get(NAME_KEY) or folder.resolve().name),
        path=folder.resolve(),
        pipeline=pipeline,
        weights=dict(sorted(digests.items())),
        device=device,
        dtype=dtype,
        is_default=is_default,
        component_classes=classes,
        adapter=adapter,
        prompt_form=_prompt_form(index, folder),
    )


def weights_digest(path: str | Path | None = None) -> str:
    """The combined weights SHA-256 of the model in ``path`` (``None``: the shipped mini-cxr), with the same
    checks as :func:`load_model` but without loading it (what a registry entry names as the base model)."""
    is_default = path is None
    _, _, digests = _verified_weights(Path(DEFAULT_MODEL_DIR if path is None else path).expanduser(),
                                      is_default=is_default)
    return combined_sha256(digests)


def _verified_weights(folder: Path, *, is_default: bool) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """(model_index.json, weights files, their SHA-256s) after the folder, manifest and hash checks."""
    if is_default and not folder.is_dir():
        raise ModelError(
            "the shipped default model mini-cxr has not been trained into this installation yet; train it with "
            "`medsign base train --config default --out DIR` and copy DIR/model here, or pass --model with a "
            "local Stable Diffusion 1.x folder",
            path=folder,
        )
    index = check_folder(folder)
    weights = _weight_files(folder)
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        hashes = verify_manifest(folder)
        missing = sorted(set(weights) - set(hashes))
        if missing:
            raise ModelError(f"{MANIFEST_NAME} does not list the weights file(s) {', '.join(missing)}", path=manifest)
        return index, weights, {name: hashes[name] for name in weights}
    if is_default:
        raise ModelError(
            f"the shipped default model has no {MANIFEST_NAME} manifest, so its weights cannot be verified; "
            "reinstall it or re-export it with `medsign base train`",
            path=manifest,
        )
    return index, weights, {name: sha256_file(folder / name) for name in weights}


_NOT_SD = "the folder is not a usable diffusers Stable Diffusion 1.x pipeline; re-export it with save_pretrained"


def check_folder(folder: Path) -> dict[str, Any]:
    """Check layout, classes and agreeing dimensions without reading weights; return model_index.json."""
    if not folder.exists():
        raise ModelError("the model folder does not exist; pass a local diffusers Stable Diffusion folder", path=folder)
    if not folder.is_dir():
        raise ModelError("the model path is not a folder; pass a local diffusers Stable Diffusion folder", path=folder)
    index_path = folder / "model_index.json"
    index = read_json_manifest(index_path, what="model_index.json, which every diffusers pipeline folder has",
                               hint=_NOT_SD)
    pipeline_class = index.get("_class_name")
    if pipeline_class != SUPPORTED_PIPELINE:
        raise ModelError(
            f"unsupported architecture {pipeline_class!r}; only {SUPPORTED_PIPELINE} folders (Stable Diffusion "
            "1.x/2.x layout) can be loaded",
            path=index_path,
        )
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelError(f"model_index.json names no {name} component", path=index_path)
        if not (folder / name).is_dir():
            raise ModelError(f"the {name} component folder is missing", path=folder / name)
        expected = _EXPECTED_CLASSES.get(name)
        if expected and entry[1] not in expected:
            raise ModelError(
                f"unsupported {name} class {entry[1]!r}; expected {' or '.join(sorted(expected))}", path=index_path
            )
    text = read_json_manifest(folder / "text_encoder" / "config.json", what="the text encoder's config", hint=_NOT_SD)
    unet = read_json_manifest(folder / "unet" / "config.json", what="the U-Net's config", hint=_NOT_SD)
    vae = read_json_manifest(folder / "vae" / "config.json", what="the VAE's config", hint=_NOT_SD)
    read_json_manifest(folder / "scheduler" / "scheduler_config.json", what="the scheduler's config", hint=_NOT_SD)
    tokenizer_dir = folder / "tokenizer"
    if (
        not ((tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file())
        and not (tokenizer_dir / "tokenizer.json").is_file()
    ):
        raise ModelError(
            "the tokenizer folder has neither vocab.json + merges.txt nor tokenizer.json", path=tokenizer_dir
        )
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise ModelError(
            "unsupported architecture: the U-Net takes added conditioning (SDXL-style or class embeddings)",
            path=folder / "unet" / "config.json",
        )
    cross = unet.get("cross_attention_dim")
    hidden = text.get("hidden_size")
    if cross != hidden:
        raise ModelError(
            f"mismatched components: the text encoder's hidden size is {hidden} but the U-Net's "
            f"cross_attention_dim is {cross}",
            path=folder / "unet" / "config.json",
        )
    latent = vae.get("latent_channels")
    if unet.get("in_channels") != latent:
        raise ModelError(
            f"mismatched components: the VAE has {latent} latent channels but the U-Net takes "
            f"{unet.get('in_channels')} input channels (inpainting and depth U-Nets are not supported)",
            path=folder / "unet" / "config.json",
        )
    if unet.get("out_channels") != latent:
        raise ModelError(
            f"mismatched components: the U-Net predicts {unet.get('out_channels')} channels but the VAE has "
            f"{latent} latent channels",
            path=folder / "unet" / "config.json",
        )
    for name in ("text_encoder", "unet", "vae"):
        if not _component_weights(folder / name):
            raise ModelError(f"the {name} folder holds no weights file (*.safetensors or *.bin)", path=folder / name)
    return index


def verify_manifest(folder: Path) -> dict[str, str]:
    """Hash every file listed in ``SHA256SUMS`` and compare; return {relative path: SHA-256}."""
    manifest = folder / MANIFEST_NAME
    expected = read_manifest(manifest)
    for name, digest in expected.items():
        verify_sha256(folder / name, digest, what=f"contents of {name}", recorded_in=MANIFEST_NAME)
    return expected


def read_manifest(manifest: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style manifest: ``<hex>  <relative path>`` per line."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"cannot read the manifest ({error})", path=manifest) from None
    entries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.strip()
        if (
            len(digest) != 64
            or not name
            or any(c not in "0123456789abcdef" for c in digest)
            or ".." in Path(name).parts
        ):
            raise ModelError(f"line {number} is not '<sha256>  <relative path>'", path=manifest)
        entries[name] = digest
    if not entries:
        raise ModelError("the manifest lists no files", path=manifest)
    return entries


def combined_sha256(hashes: Mapping[str, str]) -> str:
    """One digest for a set of files: SHA-256 of their sorted ``<hex>  <path>`` lines."""
    listing = "".join(f"{hashes[name]}  {name}\n" for name in sorted(hashes))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _component_weights(directory: Path) -> list[Path]:
    """The weights files diffusers will read: safetensors when present, else .bin (sharded sets included)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def _weight_files(folder: Path) -> list[str]:
    """The weights files of every component, the layout adapter's included (it changes what the model draws,
    so provenance must name it)."""
    return [
        p.relative_to(folder).as_posix()
        for name in _weighted_components(folder)
        for p in _component_weights(folder / name)
    ]


def _weighted_components(folder: Path) -> tuple[str, ...]:
    base = ("text_encoder", "unet", "vae")
    return (*base, ADAPTER_FOLDER) if (folder / ADAPTER_FOLDER).is_dir() else base


def _load_pipeline(folder: Path, dtype: torch.dtype) -> Any:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the "safety checker disabled" notice is deliberate here
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipeline = StableDiffusionPipeline.from_pretrained(
            str(folder),
            dtype=dtype,
            local_files_only=True,
            low_cpu_mem_usage=False,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelError(f"diffusers could not load the folder ({_first_line(error)})", path=folder) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
    # Sampling always uses DPM-Solver++ on the model's own noise schedule and prediction type.
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _prompt_form(index: Mapping[str, Any], folder: Path) -> str:
    from medsign_forensics.diffusion.configs import CAPTION_FORMS

    form = index.get(PROMPT_FORM_KEY, "report")
    if form not in CAPTION_FORMS:
        raise ModelError(f"model_index.json names an unknown prompt form {form!r} (known: {', '.join(CAPTION_FORMS)})",
                         path=folder / "model_index.json")
    return str(form)


def _load_adapter(folder: Path, dtype: torch.dtype) -> Any | None:
    """The folder's layout adapter, or None when it has none."""
    if not (folder / ADAPTER_FOLDER).is_dir():
        return None
    from diffusers import T2IAdapter

    try:
        adapter = T2IAdapter.from_pretrained(str(folder / ADAPTER_FOLDER), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelError(f"diffusers could not load the layout adapter ({_first_line(error)})",
                         path=folder / ADAPTER_FOLDER) from None
    return adapter.eval()


def _check_keys(folder: Path, components: Mapping[str, Any], weights: list[str]) -> None:
    """Strict loading: the weights files and the built models must have exactly the same parameter names."""
    for component in _weighted_components(folder):
        files = [folder / name for name in weights if name.startswith(component + "/")]
        file_keys: set[str] = set()
        for file in files:
            file_keys |= _file_keys(file)
        model_keys = set(components[component].state_dict())
        file_keys = {_normalise_key(k, model_keys) for k in file_keys if not k.endswith(_BENIGN_KEY_SUFFIXES)}
        model_keys = {k for k in model_keys if not k.endswith(_BENIGN_KEY_SUFFIXES)}
        check_state(file_keys, model_keys, what=f"{component} weights", target="its config", path=files[0])


def _file_keys(file: Path) -> set[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                return set(handle.keys())
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ModelError(f"cannot read the safetensors file ({_first_line(error)})", path=file) from None
    try:
        state = torch.load(file, map_location="meta", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt pickles
        raise ModelError(f"cannot read the weights file ({_first_line(error)})", path=file) from None
    return set(state)


def _normalise_key(key: str, model_keys: set[str]) -> str:
    """The name a file key gets on load: diffusers renames old attention names, and transformers 5 drops the
    ``text_model.`` prefix that SD-1.x text encoder files carry."""
    for old, new in _DEPRECATED_ATTENTION_NAMES.items():
        if old in key and ".attentions." in key:
            key = key.replace(old, new)
    if key not in model_keys and key.startswith(_TEXT_MODEL_PREFIX) and key[len(_TEXT_MODEL_PREFIX) :] in model_keys:
        key = key[len(_TEXT_MODEL_PREFIX) :]
    return key


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
