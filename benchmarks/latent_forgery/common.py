import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import glob
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from PIL import Image

from medsign_forensics.diffusion import decode, load_model, sample
from medsign_forensics.key import identification_threshold
from medsign_forensics.watermark.latent import ISSUED_CONFIG, LatentMark
from medsign_forensics.watermark.latent_reader import LatentReader

# Work folder (cached genuine images, forged images, JSON results): $LATENT_FORGERY_OUT, default /tmp/study13.
OUT = Path(os.environ.get("LATENT_FORGERY_OUT", "/tmp/study13"))
OUT.mkdir(parents=True, exist_ok=True)
DATA = Path(os.environ.get("MEDSIGN_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
T1 = identification_threshold(48, 1, 5e-7)
T1000 = identification_threshold(48, 1000, 5e-7)


def mark0():
    rng = np.random.default_rng(0)
    return LatentMark(key=rng.integers(0, 2, 48).astype(np.uint8), secret=rng.bytes(32), config=ISSUED_CONFIG)


from medsign_forensics.attacks.codec import quantise as quant  # the project's one quantiser


def real_images(n=20):
    fs = sorted(glob.glob(str(DATA / "real-cxr-covid19-repo" / "png" / "*.png")))[:n]
    out = []
    for f in fs:
        a = np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255
        h, w = a.shape
        t, l = (h - 256) // 2, (w - 256) // 2
        out.append(a[t : t + 256, l : l + 256].copy())
    return np.stack(out), [Path(f).name for f in fs]


_model = None


def model():
    global _model
    if _model is None:
        _model = load_model()
    return _model


def genuine(n=20):
    cache = OUT / "genuine.npz"
    if cache.is_file():
        d = np.load(cache)
        return d["images"][:n], d["z"][:n]
    from medsign_forensics.localization.cache import split_items

    m = model()
    mark = mark0()
    items = split_items("open-i", held_out=True, n=n, seed=0)
    shape = (m.latent_channels, m.image_size // m.vae_scale_factor, m.image_size // m.vae_scale_factor)
    ims, zs = [], []
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        z = mark.initial_noise(shape, torch.Generator().manual_seed(it.seed))
        r = sample(m, [it.text], seed=it.seed, latents=z, output="latents")
        with torch.no_grad():
            im = decode(m, r.latents)[0].mean(0).numpy()
        ims.append(quant(im))
        zs.append(z[0].numpy())
        print(f"gen {i + 1}/{n} {time.perf_counter() - t0:.0f}s", flush=True)
    np.savez_compressed(cache, images=np.stack(ims), z=np.stack(zs))
    return np.stack(ims), np.stack(zs)


_reader = None


def reader():
    global _reader
    if _reader is None:
        _reader = LatentReader(model(), steps=10)
    return _reader


def read_bits(pixels, mark=None):
    """Normal verification path: 8-bit quantise, prepare, invert 10 steps, read."""
    mark = mark or mark0()
    z, mask, _ = reader().noise(quant(pixels))
    return int((mark.read(z, mask).bits == mark.key).sum())
