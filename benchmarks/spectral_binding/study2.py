"""Study 14 v2: mod-pi binding with secret partners; single- and multi-image learning forgers."""
import json, sys, time
from common import *
from bound import lattice_points, lattice_bins, dft_at
from bound2 import Secret, embed_v2, coherence_v2
import study_forgeries as SF

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
t0 = time.time()
hosts = load_real(0, N); targets = load_real(100, N)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8)
secret = Secret(777)
out = {"N": N, "schemes": {}}

def evaluate(img, sec):
    bits, rot, sc, pres = read(img)
    att, mb, p = attributed(bits, key, pres)
    return {"att": bool(att), "bits": mb, "presence": pres, "rot": rot, "scale": sc,
            **coherence_v2(img, key, CONFIG, sec, rot, sc)}

L = lattice_points(CONFIG); Lc = L / 64.0; ly, lx = lattice_bins(L, 256)
# public candidate offsets (the forger knows the scheme, not the secret)
odd = np.arange(-15, 16, 2)
CAND = np.array([(a, b) for a in odd for b in odd])  # (256, 2)

def wfft(x):
    w = np.hanning(256)[:, None] * np.hanning(256)[None, :]
    x = x.astype(np.float64)
    return np.fft.fft2((x - (x * w).sum() / w.sum()) * w)

def invariants(x):
    """(P, K) 2*(phi(f) - phi(f/2+d) - phi(f/2-d)) for every public lattice point and candidate offset."""
    X = np.angle(wfft(x))
    hy, hx = 2 * L[:, 0], 2 * L[:, 1]  # f/2 in 256-bins
    pf = X[ly, lx][:, None]
    p1 = X[(hy[:, None] + CAND[None, :, 0]) % 256, (hx[:, None] + CAND[None, :, 1]) % 256]
    p2 = X[(hy[:, None] - CAND[None, :, 0]) % 256, (hx[:, None] - CAND[None, :, 1]) % 256]
    return 2 * (pf - p1 - p2)

def learn(sources):
    z = np.mean([np.exp(1j * invariants(s)) for s in sources], axis=0)  # (P, K)
    best = np.abs(z).argmax(axis=1)
    return CAND[best], np.angle(z[np.arange(len(L)), best]) / 2  # offsets (P,2) in bins, theta mod pi

def rebind(t, sources, off, theta):
    """Write the learned relation onto target t: magnitudes = mean over sources of |FFT| at lattice bins."""
    g1 = Lc / 2 + off / 256.0; g2 = Lc / 2 - off / 256.0
    p = np.angle(dft_at(t, g1)) + np.angle(dft_at(t, g2)) + theta
    host = np.angle(dft_at(t, Lc))
    p = np.where(np.cos(p - host) < 0, p + np.pi, p)
    raw = p - 2 * np.pi * (Lc[:, 0] * 127.5 + Lc[:, 1] * 127.5)
    Xt = np.fft.fft2(t)
    mag = np.mean([np.abs(np.fft.fft2(s)[ly, lx]) for s in sources], axis=0)
    Xt[ly, lx] = mag * np.exp(1j * raw); Xt[(-ly) % 256, (-lx) % 256] = mag * np.exp(-1j * raw)
    return np.clip(np.fft.ifft2(Xt).real, 0, 1)

for scheme, sign in (("bound_v2 (mod-pi, secret partners)", True),):
    res = {"genuine": {}, "forgery": {}, "psnr": []}
    marked = [STORE.exact(embed_v2(h, key, CONFIG, secret, informed_sign=sign)) for h in hosts]
    res["psnr"] = [psnr(m, h) for m, h in zip(marked, hosts)]
    for a in TABLE1_ATTACKS:
        res["genuine"][a.name] = [evaluate(a.exact(m), secret) for m in marked]
    print("genuine done", time.time() - t0, flush=True)
    res["forgery"]["unmarked real targets"] = {"rows": [evaluate(t, secret) for t in targets], "psnr": []}
    for name, fn in SF.FORGERIES.items():
        rows, ps = [], []
        for i, t in enumerate(targets):
            f = STORE.exact(fn(t.astype(np.float64), marked[i % len(marked)].astype(np.float64)))
            rows.append(evaluate(f, secret)); ps.append(psnr(f, t))
        res["forgery"][name] = {"rows": rows, "psnr": ps}
    print("forgeries done", time.time() - t0, flush=True)
    # learning forger with M genuine images (disjoint from the target set; the first M marked images)
    truth = secret.off[L[:, 0] % 64, L[:, 1] % 64]
    on = np.zeros(len(L), bool)
    from medsign_forensics.watermark.spectral import on_frequencies
    ont = {tuple(x) for x in on_frequencies(CONFIG, key)[0]}
    on = np.array([tuple(x) in ont for x in L])
    res["learning"] = {}
    for M in (1, 4, 16, 32, 64):
        off, theta = learn(marked[:M])
        correct = float((off[on] == truth[on]).all(axis=1).mean())
        nt = min(N, 50)
        rows, ps = [], []
        for t in targets[:nt]:
            f = STORE.exact(rebind(t.astype(np.float64), marked[:M], off, theta))
            rows.append(evaluate(f, secret)); ps.append(psnr(f, t))
        res["forgery"][f"learning forger, M={M} genuine images: re-bind with learned partners+theta"] = {"rows": rows, "psnr": ps}
        res["learning"][M] = correct
        print("M", M, "partners recovered on carrying bins", correct, time.time() - t0, flush=True)
    out["schemes"][scheme] = res
json.dump(out, open("/tmp/study14/results_v2.json", "w"))
print("wall", time.time() - t0)
