from common import *
from bound3 import *
import json
hosts = load_real(0, 30)
key = np.random.default_rng(14).integers(0, 2, 48).astype(np.uint8)
sec = Secret(777)
res = {}
for q, sat in ((None, False), (0.1, False), (None, True), (0.1, True)):
    marked = [STORE.exact(embed_v3(h, key, CONFIG, sec, q=q, sat=sat)) for h in hosts]
    row = {}
    for a in TABLE1_ATTACKS:
        cs, att = [], []
        for m in marked:
            x = a.exact(m); bits, rot, sc, pres = read(x)
            att.append(attributed(bits, key, pres)[0])
            cs.append(coherence_v3(x, key, CONFIG, sec, rot, sc, q=q, sat=sat)["C"])
        row[a.name] = (round(float(np.mean(cs)), 3), round(float(np.percentile(cs, 3)), 3), round(float(np.mean(att)), 2))
    res[f"q={q},sat={sat}"] = row
    print(q, sat, row, flush=True)
json.dump(res, open("scan3.json", "w"))
