from common import *
from bound import *
import cv2, pywt
from scipy.ndimage import median_filter
import os
MODE = os.environ.get("MODE", "split")
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

