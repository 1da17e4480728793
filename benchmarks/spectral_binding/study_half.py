"""Study 14: phase-bound spectral mark vs copy attacks. Writes /tmp/study14/results_v1_half.json and results.md."""
import json, sys, time
from common import *
from bound import *
import cv2, pywt
from scipy.ndimage import median_filter

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
MODE = "half"
t0 = time.time()
hosts = load_real(0, N)
targets = load_real(100, N)
rng = np.random.default_rng(14)
key = rng.integers(0, 2, 48).astype(np.uint8)
table = secret_theta(777)
from medsign_forensics.watermark.spectral import embed_image

def mk(scheme, img):
    if scheme == "informed":
        return STORE.exact(embed_image(img, key, CONFIG, psnr=43.0)), 0.0
    if scheme == "bound":
        return STORE.exact(embed_bound(img, key, CONFIG, table, mode=MODE)), 0.0
    if scheme == "bound_cancel":
        m, frac = embed_bound_cancel(img, key, CONFIG, table, mode=MODE, cancel_off=True)
        return STORE.exact(m), frac
    raise ValueError

def evaluate(img):
    bits, rot, sc, pres = read(img)
    att, mb, p = attributed(bits, key, pres)
    coh = coherence(img, key, CONFIG, table, rot, sc, mode=MODE)
    return {"att": bool(att), "bits": mb, "presence": pres, "rot": rot, "scale": sc, **coh}

# --- forgeries ---------------------------------------------------------------------------------------
L = lattice_points(CONFIG)  # public: every A/B bin and pilot
Lc = L / 64.0
ly, lx = lattice_bins(L, 256)

def put(Xt, Xs, ry, rx):
    Xt[ry, rx] = Xs[ry, rx]; Xt[(-ry) % 256, (-rx) % 256] = Xs[(-ry) % 256, (-rx) % 256]

def naive_copy(t, s):
    Xt, Xs = np.fft.fft2(t), np.fft.fft2(s)
    put(Xt, Xs, ly, lx)
    return np.clip(np.fft.ifft2(Xt).real, 0, 1)

def ghost_copy(t, s):
    Xt, Xs = np.fft.fft2(t), np.fft.fft2(s)
    put(Xt, Xs, ly, lx)
    g1, g2 = partners(Lc, MODE)
    for g in (g1, g2):
        by, bx = np.rint(g[:, 0] * 256).astype(int), np.rint(g[:, 1] * 256).astype(int)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                put(Xt, Xs, (by + dy) % 256, (bx + dx) % 256)
    return np.clip(np.fft.ifft2(Xt).real, 0, 1)

def adaptive_copy(t, s):
    """Forger knows the public binding rule, estimates theta for every lattice bin from ONE image, re-binds."""
    g1, g2 = partners(Lc, MODE)
    th = np.angle(dft_at(s, Lc)) - np.angle(dft_at(s, g1)) - np.angle(dft_at(s, g2))
    p = np.angle(dft_at(t, g1)) + np.angle(dft_at(t, g2)) + th
    c = 127.5
    raw = p - 2 * np.pi * (Lc[:, 0] * c + Lc[:, 1] * c)
    Xt, Xs = np.fft.fft2(t), np.fft.fft2(s)
    mag = np.abs(Xs[ly, lx])
    Xt[ly, lx] = mag * np.exp(1j * raw)
    Xt[(-ly) % 256, (-lx) % 256] = mag * np.exp(-1j * raw)
    return np.clip(np.fft.ifft2(Xt).real, 0, 1)

def wavelet_denoise(x):
    coeffs = pywt.wavedec2(x, "db2", level=2)
    sigma = np.median(np.abs(coeffs[-1][-1])) / 0.6745
    thr = sigma * np.sqrt(2 * np.log(x.size))
    return pywt.waverec2([coeffs[0]] + [tuple(pywt.threshold(c, thr, "soft") for c in lvl) for lvl in coeffs[1:]], "db2")[:x.shape[0], :x.shape[1]]

def residual_copy(den, alpha=1.0):
    def f(t, s):
        return np.clip(t + alpha * (s - den(s)), 0, 1)
    return f

def band_copy(t, s):
    """Everything in the mark's annulus (all FFT bins, not only the lattice): a secret off-lattice layout's copy."""
    fy = np.fft.fftfreq(256)[:, None]; fx = np.fft.fftfreq(256)[None, :]
    r = np.hypot(fy, fx)
    band = (r >= CONFIG.r_min - 0.01) & (r < CONFIG.r_max + 0.01)
    Xt, Xs = np.fft.fft2(t), np.fft.fft2(s)
    Xt[band] = Xs[band]
    return np.clip(np.fft.ifft2(Xt).real, 0, 1)

FORGERIES = {
    "naive lattice copy (benchmark's attack 1)": naive_copy,
    "residual copy: x - median3(x)": residual_copy(lambda s: median_filter(s, 3)),
    "residual copy: 2 x (x - median3(x))": residual_copy(lambda s: median_filter(s, 3), 2.0),
    "residual copy: x - gauss1(x)": residual_copy(lambda s: cv2.GaussianBlur(s.astype(np.float32), (7, 7), 1.0)),
    "residual copy: x - wavelet(x)": residual_copy(wavelet_denoise),
    "ghost copy: lattice + partner 3x3 bins": ghost_copy,
    "adaptive: theta estimated from the one image, re-bound": adaptive_copy,
    "band copy: whole annulus": band_copy,
}

out = {"N": N, "mode": MODE, "schemes": {}}
for scheme in ("bound",):
    res = {"genuine": {}, "forgery": {}, "psnr": [], "cancel_frac": []}
    marked = []
    for img in hosts:
        m, frac = mk(scheme, img)
        marked.append(m); res["psnr"].append(psnr(m, img)); res["cancel_frac"].append(frac)
    for a in TABLE1_ATTACKS:
        res["genuine"][a.name] = [evaluate(a.exact(m)) for m in marked]
    print(scheme, "genuine done", time.time() - t0, flush=True)
    res["forgery"]["unmarked real targets"] = {"rows": [evaluate(t) for t in targets], "psnr": []}
    for name, fn in FORGERIES.items():
        rows, ps = [], []
        for i, t in enumerate(targets):
            f = STORE.exact(fn(t.astype(np.float64), marked[i % len(marked)].astype(np.float64)))
            rows.append(evaluate(f)); ps.append(psnr(f, t))
        res["forgery"][name] = {"rows": rows, "psnr": ps}
    print(scheme, "forgeries done", time.time() - t0, flush=True)
    out["schemes"][scheme] = res
json.dump(out, open("/tmp/study14/results_v1_half.json", "w"))
print("wall", time.time() - t0)
