import os, sys
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
from pathlib import Path
from scipy.stats import binom
torch.set_num_threads(1)
from medsign_forensics.imageio import read_image
from medsign_forensics.reading import reading_pixels, load_default_extractor
from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.attacks.library import get_attack, TABLE1_ATTACKS
DATA = Path("/work/shared/data/real-cxr-covid19-repo/png")
STORE = Requantize(8)
EXTRACTOR = load_default_extractor()
CONFIG = EXTRACTOR.config
FPR = 1e-6

def load_real(start, n):
    out = []
    for p in sorted(DATA.glob("*.png"))[start:start + n]:
        img = reading_pixels(read_image(p).pixels)[0]
        img = img[(img.shape[0] - 256) // 2:][:256, (img.shape[1] - 256) // 2:][:, :256]
        out.append(STORE.exact(img))
    return out

def read(img):
    with torch.no_grad():
        r = EXTRACTOR.read(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None])
    return r.bits[0], float(r.rotation[0]), float(r.scale[0]), float(r.presence[0])

def attributed(bits, key, presence):
    m = int((bits == key).sum())
    p = float(binom.sf(m - 1, len(key), 0.5))
    return (presence >= CONFIG.presence_threshold) and p <= FPR, m, p

def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))
