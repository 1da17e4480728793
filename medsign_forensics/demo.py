"""The main job end to end on the embedded defaults: what `medsign demo` runs on a fresh machine.

1. The phantom world: held-out Open-i reports -> phantom radiographs with their exact lesion masks.
2. The finding classifier reads those phantoms (when its shipped weights are present).
3. The provider's side: the demo deployment generates a DICOM study (and a PNG export) for a report.
4. The auditor's side: `verify` judges the study, the PNG, and copies handled the ordinary way (JPEG 75, a
   70% resize, an 8-bit window/level round trip), plus a real radiograph when ../shared/data is present; both
   watermark layers are read when the deployment carries the latent layer (the shipped one does).

A step whose ingredients are missing in this installation (untrained weights) is reported as skipped with the
reason, never faked. Steps 3-4 need a signer for the per-image statements; the demo issuer's private key is not
distributed, so the demo creates a throw-away local signer, registers it as an issuer in a COPY of the demo
registry inside the output folder, and verifies against that copy. Nothing in the repository is modified.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from medsign_forensics.errors import MedsignError
from medsign_forensics.fileio import save_png

# The attacks of issue "Provenance": ordinary handling a synthetic study meets after leaving the generator.
HANDLING_ATTACKS = ("jpeg_q75", "resize_edge0.7", "dicomwl_c2048_w4095")


class StepStatus(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"


@dataclass
class DemoStep:
    name: str
    status: StepStatus
    detail: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "rows": self.rows}


@dataclass
class DemoResult:
    out: Path
    steps: list[DemoStep]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "steps": [step.to_dict() for step in self.steps]}


def run_demo(
    out: str | Path,
    *,
    reports: int = 3,
    seed: int = 0,
    deployment: str | Path | None = None,
    extractor: str | Path | None = None,
    registry: str | Path | None = None,
    classifier: str | Path | None = None,
    real_image: str | Path | None = None,
) -> DemoResult:
    """Run every step into ``out``; defaults are the shipped weights and the demo registry."""
    from medsign_forensics.reports import load_reports, split_reports

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, held_out = split_reports(load_reports("open-i"))
    chosen = [report for report in held_out if report.text.strip()][:reports]
    steps = [_phantoms(out / "phantoms", chosen, seed)]
    steps.append(_classify(out / "phantoms", len(chosen), classifier))
    steps.extend(_generate_and_verify(out, chosen[0].text, seed, deployment, extractor, registry, real_image))
    return DemoResult(out=out, steps=steps)


def _phantoms(folder: Path, chosen: list[Any], seed: int) -> DemoStep:
    from medsign_forensics.phantom import render_report

    rows = []
    for index, report in enumerate(chosen):
        study, parsed = render_report(report.text, seed=seed + index)
        save_png(folder / f"{index:02d}.png", study.image)
        save_png(folder / f"{index:02d}_mask.png", study.lesion_mask.astype(np.uint8) * 255)
        drawn = ", ".join(f"{f.kind.value} ({f.side.value}, {f.zone.value})" for f in study.drawn) or "normal"
        rows.append({"report_id": report.report_id, "image": str(folder / f"{index:02d}.png"), "drawn": drawn,
                     "report": report.text[:120]})
    return DemoStep("phantom world", StepStatus.DONE,
                    f"{len(rows)} held-out Open-i reports rendered with exact lesion masks into {folder}", rows)


def _classify(folder: Path, count: int, classifier: str | Path | None) -> DemoStep:
    from medsign_forensics.imageio import read_image
    from medsign_forensics.phantom.classifier import LABELS, load_classifier, predict

    try:
        model = load_classifier(classifier)
    except MedsignError as error:
        return DemoStep("finding classifier", StepStatus.SKIPPED, str(error))
    images = np.stack([read_image(folder / f"{i:02d}.png").pixels for i in range(count)])
    probabilities = np.asarray(predict(model, images))
    rows = []
    for index, row in enumerate(probabilities):
        found = [f"{LABELS[j]} {row[j]:.2f}" for j in np.argsort(-row) if row[j] >= 0.5]
        rows.append({"image": f"{index:02d}.png", "predicted": ", ".join(found) or "normal"})
    return DemoStep("finding classifier", StepStatus.DONE, "labels with probability >= 0.5", rows)


def _generate_and_verify(out: Path, report: str, seed: int, deployment: str | Path | None,
                         extractor: str | Path | None, registry: str | Path | None,
                         real_image: str | Path | None) -> list[DemoStep]:
    from medsign_forensics.generate import DEFAULT_DEPLOYMENT_DIR, generate_study
    from medsign_forensics.provenance.keys import IssuerKey
    from medsign_forensics.provenance.registry import Registry
    from medsign_forensics.verify import DEFAULT_REGISTRY_DIR, Verifier
    from medsign_forensics.watermark.deployment import load_deployment

    try:
        loaded = load_deployment(DEFAULT_DEPLOYMENT_DIR if deployment is None else deployment)
        verifier_extractor = _extractor(extractor)
    except MedsignError as error:
        reason = f"{error}"
        return [DemoStep("generate", StepStatus.SKIPPED, reason), DemoStep("verify", StepStatus.SKIPPED, reason)]

    local_registry = out / "registry"
    if local_registry.exists():
        shutil.rmtree(local_registry)
    shutil.copytree(DEFAULT_REGISTRY_DIR if registry is None else registry, local_registry)
    signer = IssuerKey.generate("medsign-demo-local-signer")
    with Registry.open(local_registry) as opened:
        opened.add_issuer(signer.public_key, signer.name)
        generated = generate_study(report=report, out=out / "study.dcm", png=out / "study.png", signer=signer,
                                   deployment=loaded, registry=opened, seed=seed)
    generate = DemoStep("generate", StepStatus.DONE,
                        f"{generated.model}, deployment {generated.deployment} ({generated.provenance_id}), "
                        f"{generated.seconds:.1f} s; local signer {signer.key_id[:16]}... added to {local_registry}",
                        [generated.to_dict()])
    files = [out / "study.dcm", out / "study.png", *_handled_copies(out, out / "study.png")]
    if real_image is not None and Path(real_image).is_file():
        files.append(Path(real_image))
    layers = ("decoder", "latent") if loaded.has_latent else ("decoder",)
    with Verifier.open(registry=local_registry, extractor=verifier_extractor, layers=layers) as verifier:
        verdicts = [verifier.try_verify_file(path).to_dict() for path in files]
    rows = [{**{key: verdict.get(key) for key in ("file", "verdict", "provenance_id")},
             **{f"{layer} bits": _layer_bits(verdict, layer) for layer in layers},
             "family_wise_p_value": verdict.get("family_wise_p_value")} for verdict in verdicts]
    return [generate, DemoStep("verify", StepStatus.DONE,
                               f"verdicts against the local registry copy, layers {', '.join(layers)}", rows)]


def _layer_bits(verdict: dict[str, Any], layer: str) -> str | None:
    """"46/48" for one layer's best key, or None when the layer was not read."""
    match = (verdict.get("layers") or {}).get(layer)
    return None if not match else f"{match['matched_bits']}/{match['bits']}"


def _extractor(path: str | Path | None) -> Path | None:
    """The extractor folder to verify with; checks now that the default exists so the step can be skipped."""
    from medsign_forensics.reading import load_default_extractor

    if path is None:
        load_default_extractor()
    return None if path is None else Path(path)


def _handled_copies(out: Path, png: Path) -> list[Path]:
    from medsign_forensics.attacks.library import get_attack
    from medsign_forensics.imageio import read_image

    pixels = read_image(png).pixels
    copies = []
    for name in HANDLING_ATTACKS:
        if name.startswith("jpeg_q"):  # a real JPEG file rather than JPEG-damaged pixels in a PNG
            target = out / f"study_{name}.jpg"
            _save_jpeg(target, pixels, quality=int(name.removeprefix("jpeg_q")))
        else:
            target = out / f"study_{name}.png"
            save_png(target, get_attack(name).exact(pixels, np.random.default_rng(0)))
        copies.append(target)
    return copies


def _save_jpeg(path: Path, image: np.ndarray, *, quality: int) -> None:
    from PIL import Image

    from medsign_forensics.attacks.codec import to_uint8
    from medsign_forensics.fileio import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="JPEG", quality=quality)
