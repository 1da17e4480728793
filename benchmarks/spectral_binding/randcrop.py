from common import *
from bound2 import Secret
from bound3 import embed_v3, coherence_v3
hosts = load_real(0, 40)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8); sec = Secret(777)
marked = [STORE.exact(embed_v3(h, key, CONFIG, sec, q=0.1)) for h in hosts]
for name in ("crop_random_area0.5", "crop_random_area0.8", "crop_center_area0.8", "jpeg_q50+rotate_25"):
    a = get_attack(name); rng = np.random.default_rng(3)
    att, cs = [], []
    for m in marked:
        x = a.exact(m, rng); bits, rot, sc, pres = read(x)
        ok = attributed(bits, key, pres)[0]; c = coherence_v3(x, key, CONFIG, sec, rot, sc, q=0.1)["C"]
        att.append(ok); cs.append(c)
    att, cs = np.array(att), np.array(cs)
    print(f"{name}: attributed {att.sum()}/40, attributed & C>=0.2 {(att & (cs>=0.2)).sum()}/40, & C>=0.24 {(att & (cs>=0.24)).sum()}/40, C mean {cs.mean():.2f}")
