"""Forgery and removal against the shipped spectral watermark, by attacker class, through the real Verifier.

Genuine studies: 100 images of the original mini-cxr decoder for held-out reports (a decoder-training cache,
``--generated CACHE``) passed through the shipped demo deployment's watermark layer and stored as 8-bit PNG.
Real images: the first 100 real radiographs of ../shared/data, centre 256 x 256 at the working size. Every
result is a ``medsign verify`` verdict against the demo registry (default policy), with its evidence. The
genuine studies are also verified after the Table 1 attacks (and JPEG 75), since the binding check can cost
genuine attributions.

Attacker classes and attacks:

1. Public code and weights, ONE genuine image, no registry (copy attacks): (a) every lattice bin of the mark's
   band and the pilots is taken from the genuine image's FFT and written into a real image's FFT (the attacker
   needs neither the key nor which bits are on: the mark's energy sits on a public lattice); (b) every FFT bin
   of the mark's annulus (a copy that would also carry a secret layout); (c) the genuine image's noise residual
   (x - median3(x)) added to the real image. Since content binding, the mark must also be bound to the image.
2. Public code only, no genuine image, no registry: the attacker writes the mark of a key of their choosing
   (random) into real images; it should match no registered key.
3. Holder of the registry's keys: (a) the demo key written into real images with the stage-1 embedder at
   40.5 dB (unbound: knowing the key is not enough); (b) an insider who also holds the binding secret (the
   registry's, or the deployment folder): the demo deployment's own layer applied to real images.
4. Removal, public code, one watermarked image: the same lattice bins replaced by the average of their
   neighbours (a notch), then stored as 8-bit.
5. Learning forger, public code, M genuine images of the deployment (M = 1, 4, 8, 16, 32, 64; no keys, no
   secret): for every public lattice frequency f and each of the 256 possible secret partner offsets, the
   binding invariant 2 (arg X(f) - arg P(f/2 + d) - arg P(f/2 - d)) is averaged over the M images as a unit
   phasor; the offset with the strongest mean and its phase are taken as the secret, and the mark is
   re-bound onto each real image (magnitudes: the mean of the M images at the lattice bins). 50 targets.
6. Optimisation against the public extractor, no keys: the key is read off ONE generated image with the public
   extractor, then 300 Adam steps on a perturbation of at most 2 grey levels make the extractor find its
   pilots and read the key in each real image (the attack that forged the HiDDeN-era extractor); (b) the same
   through a random Table-1 attack at every step (expectation over transformations). It cannot know the
   binding secret.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/spectral_forgery.py --generated CACHE
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.attacks.library import get_attack  # noqa: E402
from medsign_forensics.attacks.storage import Requantize  # noqa: E402
from medsign_forensics.fileio import save_png, write_text  # noqa: E402
from medsign_forensics.imageio import read_image  # noqa: E402
from medsign_forensics.reading import load_default_extractor, reading_pixels  # noqa: E402
from medsign_forensics.verify import Verifier  # noqa: E402
from medsign_forensics.watermark.fidelity import psnr  # noqa: E402
from medsign_forensics.watermark.spectral import embed_image, lattice_mask, layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real-cxr-covid19-repo" / "png"
RESULTS = REPO / "benchmarks" / "results" / "spectral_forgery.md"
STORE = Requantize(8)


def transplant(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(target)
    spectrum[mask] = np.fft.fft2(source)[mask]
    return np.clip(np.fft.ifft2(spectrum).real, 0, 1)


def notch(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(image)
    neighbours = sum(np.roll(np.roll(spectrum, dy, 0), dx, 1) for dy, dx in ((0, 2), (0, -2), (2, 0), (-2, 0))) / 4
    spectrum[mask] = neighbours[mask]
    return np.clip(np.fft.ifft2(spectrum).real, 0, 1)


def band_mask(size: int, config) -> np.ndarray:
    """Every FFT bin of the mark's annulus (widened by 0.01 cycles/pixel), not only the lattice."""
    radius = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    return (radius >= config.r_min - 0.01) & (radius < config.r_max + 0.01)


def residual_copy(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return np.clip(target + source - median_filter(source, 3), 0, 1)


ODD = np.arange(-15, 16, 2)
CANDIDATES = np.array([(a, b) for a in ODD for b in ODD])  # every offset the public scheme allows


def _partner_spectrum(image: np.ndarray) -> np.ndarray:
    """The public partner read, re-implemented as a forger would: centred disc of 88 px, 10 % quantile clip."""
    y, x = np.arange(256) - 127.5, np.arange(256) - 127.5
    r = np.hypot(y[:, None], x[None, :])
    weight = np.where(r < 88, np.cos(np.pi * r / 176) ** 2, 0.0)
    clipped = np.minimum(image, np.quantile(image[weight > 0], 0.1))
    return np.fft.fft2((clipped - (clipped * weight).sum() / weight.sum()) * weight)


def _host_spectrum(image: np.ndarray) -> np.ndarray:
    window = np.hanning(256)[:, None] * np.hanning(256)[None, :]
    return np.fft.fft2((image - (image * window).sum() / window.sum()) * window)


def learned_forgeries(targets: list[np.ndarray], sources: list[np.ndarray], config) -> list[np.ndarray]:
    """Attack 5: learn each lattice frequency's partner offset and phase from ``sources``, re-bind onto targets."""
    lay = layout(config)
    points = np.concatenate([lay.a.reshape(-1, 2), lay.b.reshape(-1, 2), lay.pilots])
    ly, lx = (points[:, 0] * 4) % 256, (points[:, 1] * 4) % 256
    hy, hx = points[:, 0] * 2, points[:, 1] * 2  # f/2 in bins of 1/256

    def partners(spectrum: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        one = spectrum[(hy[:, None] + offsets[..., 0]) % 256, (hx[:, None] + offsets[..., 1]) % 256]
        two = spectrum[(hy[:, None] - offsets[..., 0]) % 256, (hx[:, None] - offsets[..., 1]) % 256]
        return np.angle(one) + np.angle(two)

    every = np.broadcast_to(CANDIDATES, (len(points), *CANDIDATES.shape))
    mean = np.mean([np.exp(2j * (np.angle(_host_spectrum(s)[ly, lx])[:, None] - partners(_partner_spectrum(s), every)))
                    for s in sources], axis=0)
    best = np.abs(mean).argmax(axis=1)
    offsets, theta = CANDIDATES[best][:, None, :], np.angle(mean[np.arange(len(points)), best]) / 2
    magnitude = np.mean([np.abs(np.fft.fft2(s)[ly, lx]) for s in sources], axis=0)
    forged = []
    for target in targets:
        phase = partners(_partner_spectrum(target), offsets)[:, 0] + theta
        host = np.angle(_host_spectrum(target)[ly, lx])
        phase = np.where(np.cos(phase - host) < 0, phase + np.pi, phase)
        spectrum = np.fft.fft2(target)
        spectrum[ly, lx] = magnitude * np.exp(1j * phase)
        spectrum[(-ly) % 256, (-lx) % 256] = magnitude * np.exp(-1j * phase)
        forged.append(np.clip(np.fft.ifft2(spectrum).real, 0, 1))
    return forged


def pilot_score(extractor, images: torch.Tensor) -> torch.Tensor:
    """(B,) the public presence statistic at the identity geometry, differentiable: mean whitened log-power at
    the pilot frequencies (log-power minus its moving average, as the reader whitens it)."""
    from medsign_forensics.watermark.spectral import local_log_power, log_power, sample_spectrum

    local = local_log_power(log_power(images), extractor.config.whiten_box)
    return sample_spectrum(local, extractor.freq_pilot[None]).mean(-1)


def optimised_forgeries(targets: list[np.ndarray], key: np.ndarray, extractor, *, eot: bool,
                        steps: int = 300, budget: float = 2 / 255) -> list[np.ndarray]:
    """Attack 6: Adam on a perturbation (at most ``budget`` per pixel) so that the public extractor reads ``key``
    and finds its pilots at the identity geometry; with ``eot`` each step goes through one random Table-1 attack
    (differentiable) and the reader's own search."""
    from medsign_forensics.attacks.library import TABLE1_ATTACKS

    images = torch.from_numpy(np.stack(targets).astype(np.float32))
    delta = torch.zeros_like(images, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=budget / 10)
    target = torch.from_numpy(key.astype(np.float32)).expand(len(targets), -1)
    rng = np.random.default_rng(6)
    identity = (torch.zeros(len(targets)), torch.ones(len(targets)))
    for _ in range(steps):
        x = (images + delta.clamp(-budget, budget)).clamp(0, 1)
        if eot:
            attack = TABLE1_ATTACKS[int(rng.integers(len(TABLE1_ATTACKS)))]
            x = attack.differentiable(x[:, None], rng)[:, 0]
            reading = extractor.read(x[:, None])
        else:
            reading = extractor.read(x[:, None], geometry=identity)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(reading.logits * 4, target)
        loss = loss + torch.relu(3.0 - pilot_score(extractor, x)).mean()  # the pilots must be found too
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        forged = (images + delta.clamp(-budget, budget)).clamp(0, 1).numpy()
    return [STORE.exact(x) for x in forged]


def genuine_images(cache: Path, count: int) -> list[np.ndarray]:
    from medsign_forensics.localization.cache import cached_originals

    originals = [image[0] for _, image in cached_originals(cache, held_out=True)]
    return marked_by_deployment(originals[:count])


def marked_by_deployment(images: list[np.ndarray]) -> list[np.ndarray]:
    """The demo deployment's watermark layer (key and binding secret) applied to 256 x 256 images, 8-bit."""
    from medsign_forensics.generate import DEFAULT_DEPLOYMENT_DIR
    from medsign_forensics.watermark.deployment import load_deployment

    head = load_deployment(DEFAULT_DEPLOYMENT_DIR).head()
    with torch.no_grad():
        marked = head(torch.from_numpy(np.stack(images).astype(np.float32))[:, None])[:, 0].numpy()
    return [STORE.exact(x) for x in marked]


def verdicts(verifier: Verifier, images: list[np.ndarray], folder: Path, name: str) -> tuple[Counter, Counter]:
    kinds, evidence = Counter(), Counter()
    for index, image in enumerate(images):
        path = folder / f"{name}-{index:03d}.png"
        save_png(path, STORE.exact(image))
        verdict = verifier.verify_file(path)
        kinds[verdict.kind.value] += 1
        evidence[str(verdict.evidence)] += 1
    return kinds, evidence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (markdown)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    extractor = load_default_extractor()
    config = extractor.config
    mask = lattice_mask(config, 256)
    genuine = genuine_images(args.generated, args.n)
    real = [reading_pixels(read_image(p).pixels)[0] for p in sorted(DATA.glob("*.png"))[: args.n]]
    real = [STORE.exact(img[(img.shape[0] - 256) // 2:][:256, (img.shape[1] - 256) // 2:][:, :256]) for img in real]
    from medsign_forensics.generate import load_default_deployment

    demo_key = load_default_deployment().key
    rng = np.random.default_rng(0)
    band = band_mask(256, config)
    stolen = extractor.read(torch.from_numpy(genuine[0])[None]).bits[0]  # the key, read off ONE generated image
    cases: dict[str, tuple[Callable[[], list[np.ndarray]], list[np.ndarray] | None]] = {
        "genuine studies (reference)": (lambda: genuine, None),
        **{f"genuine studies after {name}": (
            lambda name=name: [STORE.exact(get_attack(name).exact(g, np.random.default_rng(i)))
                               for i, g in enumerate(genuine)], None)
           for name in ("brightness_x2", "crop_center_area0.5", "jpeg_q50", "jpeg_q75", "rotate_25", "resize_edge0.7")},
        "1a. copy attack: one genuine image's lattice bins into real images": (
            lambda: [transplant(r, genuine[i % len(genuine)], mask) for i, r in enumerate(real)], real),
        "1b. copy attack: one genuine image's whole annulus into real images": (
            lambda: [transplant(r, genuine[i % len(genuine)], band) for i, r in enumerate(real)], real),
        "1c. copy attack: one genuine image's noise residual added to real images": (
            lambda: [residual_copy(r, genuine[i % len(genuine)]) for i, r in enumerate(real)], real),
        "2. forger's own random key written into real images": (
            lambda: [embed_image(r, rng.integers(0, 2, config.bits).astype(np.uint8), config) for r in real], real),
        "3a. insider without the binding secret: the demo key written into real images": (
            lambda: [embed_image(r, demo_key, config) for r in real], real),
        "3b. insider with the registry's secrets: the demo deployment's layer applied to real images": (
            lambda: marked_by_deployment(real), real),
        "4. removal: lattice bins of genuine images notched out": (lambda: [notch(g, mask) for g in genuine], genuine),
        **{f"5. learning forger with {m} genuine images, re-bound onto real images": (
            lambda m=m: learned_forgeries(real[:50], genuine[-m:], config), real[:50]) for m in (1, 4, 8, 16, 32, 64)},
        "6a. optimisation against the extractor (key read off one generated image, 300 Adam steps, +-2 grey levels)": (
            lambda: optimised_forgeries(real, stolen, extractor, eot=False), real),
        "6b. the same through random Table-1 attacks at every step (expectation over transformations)": (
            lambda: optimised_forgeries(real, stolen, extractor, eot=True), real),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Verifier.open() as verifier:
        folder = Path(tmp)
        for name, (build, reference) in cases.items():
            t0 = time.perf_counter()
            images = build()
            forging = (time.perf_counter() - t0) / len(images)
            t0 = time.perf_counter()
            kinds, evidence = verdicts(verifier, images, folder, f"case{len(rows)}")
            cost = None if reference is None else float(np.mean([psnr(a, STORE.exact(b))
                                                                   for a, b in zip(reference, images)]))
            rows.append((name, len(images), kinds, evidence, cost, forging, (time.perf_counter() - t0) / len(images)))
    lines = [
        "# Forgery and removal against the spectral watermark", "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; 2-core CPU VM, 1 torch thread",
        f"- command: `python benchmarks/spectral_forgery.py --generated CACHE --n {args.n}`",
        "- verifier: shipped extractor, demo registry, default policy; images stored as 8-bit PNG",
        f"- wall time {time.perf_counter() - started:.0f} s", "",
        "| case | images | verdicts | evidence | PSNR vs the image attacked (dB) | s per image to make | "
        "s per image to verify |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, n, kinds, evidence, cost, forging, seconds in rows:
        lines.append(f"| {name} | {n} | {dict(kinds)} | {dict(evidence)} | "
                     f"{'-' if cost is None else f'{cost:.1f}'} | {forging:.3f} | {seconds:.3f} |")
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
