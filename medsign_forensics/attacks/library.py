"""Attack names: the grammar, parsing, and the attacks of the MedSign paper's Table 1.

Names carry their parameters, and fractions say what they are a fraction of: ``crop_center_area0.5`` keeps
half of the AREA (edge factor sqrt(0.5) = 0.707), ``crop_center_edge0.5`` keeps half of each EDGE (a quarter
of the area). Grammar (numbers in plain decimal notation)::

    none | brightness_x<f> | contrast_x<f> | gamma_<g> | rotate_<degrees> | jpeg_q<1..95>
    crop_center_area<f> | crop_center_edge<f> | crop_random_area<f> | crop_random_edge<f>
    resize_area<f> | resize_edge<f> | blur_sigma<s>_k<odd> | noise_sigma<s> | grey
    requant_8bit | requant_12bit | dicomwl_c<centre>_w<width>
    <name>+<name>+...   (a composition, applied left to right)

Randomness (random crop position, noise) comes from a ``numpy.random.Generator`` passed by the caller to
either form, so that the two forms given equally seeded generators produce the same crop and the same noise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from medsign_forensics.attacks.base import Attack, Compose, Identity
from medsign_forensics.attacks.geometric import CenterCrop, Measure, RandomCrop, Resize, Rotate
from medsign_forensics.attacks.photometric import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise
from medsign_forensics.attacks.storage import DicomWindow, Greyscale, Jpeg, Requantize
from medsign_forensics.errors import InputError

_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Attack]]] = [
    (re.compile(r"none"), lambda: Identity()),
    (re.compile(rf"brightness_x{_NUMBER}"), lambda f: Brightness(float(f))),
    (re.compile(rf"contrast_x{_NUMBER}"), lambda f: Contrast(float(f))),
    (re.compile(rf"gamma_{_NUMBER}"), lambda g: Gamma(float(g))),
    (re.compile(rf"crop_center_(area|edge){_NUMBER}"), lambda m, f: CenterCrop(float(f), Measure(m))),
    (re.compile(rf"crop_random_(area|edge){_NUMBER}"), lambda m, f: RandomCrop(float(f), Measure(m))),
    (re.compile(rf"resize_(area|edge){_NUMBER}"), lambda m, f: Resize(float(f), Measure(m))),
    (re.compile(rf"rotate_{_NUMBER}"), lambda d: Rotate(float(d))),
    (re.compile(r"jpeg_q(\d+)"), lambda q: Jpeg(int(q))),
    (re.compile(rf"blur_sigma{_NUMBER}_k(\d+)"), lambda s, k: GaussianBlur(float(s), int(k))),
    (re.compile(rf"noise_sigma{_NUMBER}"), lambda s: GaussianNoise(float(s))),
    (re.compile(r"grey"), lambda: Greyscale()),
    (re.compile(r"requant_(\d+)bit"), lambda b: Requantize(int(b))),
    (re.compile(rf"dicomwl_c{_NUMBER}_w{_NUMBER}"), lambda c, w: DicomWindow(float(c), float(w))),
]

ATTACK_GRAMMAR = (
    "none, brightness_x<f>, contrast_x<f>, gamma_<g>, crop_center_area<f>, crop_center_edge<f>, "
    "crop_random_area<f>, crop_random_edge<f>, resize_area<f>, resize_edge<f>, rotate_<degrees>, jpeg_q<q>, "
    "blur_sigma<s>_k<odd>, noise_sigma<s>, grey, requant_8bit, requant_12bit, dicomwl_c<centre>_w<width>, "
    "and compositions joined by '+'"
)


def parse_attack(name: str) -> Attack:
    """Build the attack a name describes; ``parse_attack(a.name) == a`` for every attack."""
    text = name.strip()
    if "+" in text:
        return Compose([parse_attack(part) for part in text.split("+")])
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return build(*match.groups())
    raise InputError(f"unknown attack {name!r}; attack names are: {ATTACK_GRAMMAR}")


@lru_cache(maxsize=256)
def get_attack(name: str) -> Attack:
    """Cached :func:`parse_attack` (attacks are immutable)."""
    return parse_attack(name)


def parse_attack_list(text: str) -> tuple[Attack, ...]:
    """Comma-separated names -> attacks (the CLI's ``--attacks a,b,c``)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError("the attack list is empty; give comma-separated names such as none,jpeg_q50")
    return tuple(get_attack(n) for n in names)


# MedSign Table 1. "50% center crop" follows Stable Signature (which MedSign builds on): half of the AREA is kept
# (edge factor 0.707). "70% scaling" resizes each edge to 0.7 of its length. Rotation fills corners with black.
TABLE1_ATTACKS: tuple[Attack, ...] = tuple(
    get_attack(n) for n in ("none", "brightness_x2", "crop_center_area0.5", "jpeg_q50", "rotate_25", "resize_edge0.7")
)
