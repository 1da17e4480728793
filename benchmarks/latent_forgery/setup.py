import json

from common import *

print(medsign_forensics.__file__, "T1", T1, "T1000", T1000)
real, names = real_images()
gen, z = genuine()
t0 = time.process_time()
gb = [read_bits(g) for g in gen]
print("read cpu s/img", (time.process_time() - t0) / len(gen))
rb = [read_bits(r) for r in real]
print("genuine bits", gb)
print("real bits", rb)
json.dump(
    {"T1": T1, "T1000": T1000, "genuine_bits": gb, "real_bits": rb, "real_names": names},
    open(OUT / "baseline.json", "w"),
    indent=1,
)
