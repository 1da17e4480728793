"""The latent layer: a k-bit key in the diffusion model's initial noise z_T (Gaussian Shading, Yang et al. 2024).

Why a second layer: the decoder layer changes pixels (a little, and away from lesions); this one changes none.
Each watermarked z_T is an exact draw from N(0, I), the distribution the unchanged model samples from, so the
image it produces is one the plain model could have produced with some seed. It needs no training and works on
any SD-1.x model the day it is loaded.

Writing (:meth:`LatentMark.initial_noise`):

1. Layout. The latent (C, h, w) is tiled by a block of (C/fc) x (h/fs) x (w/fs) cells (``channel_factor`` fc,
   ``spatial_factor`` fs), repeated periodically; cell j carries key bit ``j mod k``. With the defaults and a
   48-bit key on a 4 x 32 x 32 latent every bit has 80 or 96 replicas spread over the whole image, so a crop
   keeps part of every bit.
2. Randomisation. A keystream m (ChaCha20 under the deployment's 32-byte secret, zero nonce) is XORed onto the
   replicated key: s = key[layout] XOR m. Without the secret s looks like fair coins, so nothing about the key or
   the layout can be learnt from many images' noise.
3. Distribution-preserving sampling. Each element is z = Phi^-1((u + s) / 2) with u ~ U(0, 1) from the image's
   seed: the half of the standard normal that its bit selects. For uniform s (step 2) z is exactly N(0, 1).
4. Free low frequencies (``block`` b > 1). Steps 1-3 then write the coefficients of z in an orthonormal
   Walsh-Hadamard basis of each b x b block of each channel, and each block's mean coefficient carries no bit:
   it is drawn plainly, Phi^-1(u). Why: with b = 1 (every element carries a bit, the layout of deployments
   before mini-cxr 0.3.0) every image of a key starts from noise whose mean, 0.8 x (2s - 1), is one fixed
   pattern, low frequencies included, and the images of a key came out brighter than plain ones (mean grey
   0.623 against 0.527 for the demo key: benchmarks/latent_brightness.py). With b > 1 the fixed pattern sums to
   zero over every block, so the low frequencies of z are as free as in plain sampling. The basis is
   orthonormal, so z is still exactly N(0, I).

Reading (:meth:`LatentMark.read`): the image is inverted back to an estimate of z_T (VAE encoder, then DDIM
inversion: :mod:`medsign_forensics.diffusion.inversion`) and, with b > 1, taken to the block basis; each
carrying element votes z * (1 - 2 m) (positive: the bit is
1), and each bit is the sign of the sum of its replicas' votes (soft decision: confident elements weigh more).

The null is exact, not fitted: for ANY image that was not made with this secret, the votes of one bit are the
image's fixed inverted values times independent random signs from the keystream, a symmetric sum, so each read
bit is a fair coin independent of the others (disjoint replica sets) and the matches with the key are
Binomial(k, 1/2). That holds over the draw of the secret, which the image cannot depend on.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError

SECRET_BYTES = 32
# 5 DDIM steps: on 40 held-out images 0.997 clean and 0.991 after JPEG 50, against 0.993 / 0.987 with 10 and
# 0.971 / 0.965 with 25, at half the cost of 10 (benchmarks/latent_layer.py --parts steps,cost).
DEFAULT_INVERSION_STEPS = 5
# u is drawn on (0, 1): Phi^-1 of exactly 0 or 1 would be infinite.
_TINY = 2.0**-25


@dataclass(frozen=True)
class LatentConfig:
    """How the key is laid out in z_T and how verification inverts an image (see the module docstring)."""

    channel_factor: int = 1
    spatial_factor: int = 4
    # recorded with the key; verification inverts with its own --inversion-steps (default DEFAULT_INVERSION_STEPS)
    inversion_steps: int = DEFAULT_INVERSION_STEPS
    # side of the blocks whose mean stays free (step 4); 1, every element carries a bit, reads earlier records
    block: int = 1

    def __post_init__(self) -> None:
        for name in ("channel_factor", "spatial_factor", "inversion_steps", "block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"the latent layer's {name} must be a positive integer, got {value!r}")
        if self.block & (self.block - 1):
            raise InputError(f"the latent layer's block must be a power of two, got {self.block}")

    def to_dict(self) -> dict[str, Any]:
        """``block`` is written only when above 1, so layers recorded before it existed read back unchanged."""
        data = config_to_dict(self)
        if self.block == 1:
            del data["block"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentConfig:
        return config_from_dict(cls, data)


#: The layout new latent layers are issued with. Block 4 leaves each 4 x 4 block's mean free: on 16 held-out
#: reports (benchmarks/results/latent_brightness_blocks.md) the images of one key are then as bright as plain
#: ones (-0.013 against +0.051 for the same key with block 1) and read back better (0.986 clean, 0.982 after
#: JPEG 50, 0.822 after brightness x2, against 0.978 / 0.974 / 0.751); block 2 read 0.370 after brightness x2.
ISSUED_CONFIG = LatentConfig(block=4)


def new_secret() -> bytes:
    """A fresh per-deployment keystream secret (registry material: never log or print it)."""
    return secrets.token_bytes(SECRET_BYTES)


def keystream(secret: bytes, count: int) -> np.ndarray:
    """``count`` pseudo-random bits (uint8 0/1) from ChaCha20 under ``secret`` with a zero nonce."""
    if len(secret) != SECRET_BYTES:
        raise InputError(f"a latent-layer secret is {SECRET_BYTES} bytes, got {len(secret)}")
    encryptor = Cipher(algorithms.ChaCha20(secret, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes((count + 7) // 8))
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:count]


#: ``layout`` value of an element that carries no bit (a block's free mean, step 4 of the module docstring)
FREE = -1


def layout(shape: tuple[int, int, int], bits: int, config: LatentConfig) -> np.ndarray:
    """The key bit each latent element (or block coefficient) carries, shape (C, h, w), values in [0, bits) or
    :data:`FREE`."""
    channels, height, width = shape
    fc, fs, b = config.channel_factor, config.spatial_factor, config.block
    if channels % fc or height % (fs * b) or width % (fs * b):
        raise InputError(f"a {channels}x{height}x{width} latent cannot be tiled with channel factor {fc}, "
                         f"spatial factor {fs} and block {b}; choose factors that divide it")
    tile = (channels // fc, height // fs, width // fs)
    free = _free_coefficients(tile, b)  # the tile repeats by a multiple of b, so each cell is free in every copy
    cells = int((~free).sum())
    if cells < bits:
        raise InputError(f"the {tile[0]}x{tile[1]}x{tile[2]} tile holds {cells} carrying cells, fewer than the {bits} "
                         "key bits; use smaller repetition factors")
    cell_bits = np.full(tile, FREE, dtype=np.int64)
    cell_bits[~free] = np.arange(cells) % bits
    return np.tile(cell_bits, (fc, fs, fs))


def _free_coefficients(shape: tuple[int, int, int], block: int) -> np.ndarray:
    """True at each b x b block's mean coefficient (its top-left position in the block basis)."""
    free = np.zeros(shape, dtype=bool)
    if block > 1:
        free[:, ::block, ::block] = True
    return free


def to_blocks(z: np.ndarray, block: int) -> np.ndarray:
    """(C, h, w) values -> their coefficients in the orthonormal Walsh-Hadamard basis of each b x b block, laid
    out in place of the block (the mean first); the identity for b = 1. Its own inverse."""
    if block == 1:
        return z
    from scipy.linalg import hadamard

    basis = hadamard(block) / np.sqrt(block)  # symmetric and orthonormal, so the transform is an involution
    c, h, w = z.shape
    blocks = z.reshape(c, h // block, block, w // block, block)
    return np.einsum("ij,cyjxk,lk->cyixl", basis, blocks, basis).reshape(c, h, w)


@dataclass(frozen=True)
class LatentReading:
    """What the latent layer reads from inverted noise: bits (k,) and each bit's summed vote."""

    bits: np.ndarray
    scores: np.ndarray


class LatentMark:
    """One deployment's latent layer: its key, its secret and its layout settings."""

    def __init__(self, *, key: np.ndarray, secret: bytes, config: LatentConfig = LatentConfig()) -> None:
        self.key = np.asarray(key, dtype=np.uint8).ravel()
        if self.key.size < 1 or not np.all(self.key <= 1):
            raise InputError("the latent layer's key must be a non-empty array of 0/1 bits")
        keystream(secret, 1)  # checks the secret's length
        self._secret = bytes(secret)
        self.config = config
        self._patterns: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:  # never show the secret
        return f"LatentMark(bits={self.key.size}, config={self.config})"

    def _pattern(self, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The layout and the keystream for a latent shape (cached: a verifier reads many images)."""
        if shape not in self._patterns:
            index = layout(shape, self.key.size, self.config)
            self._patterns[shape] = (index, keystream(self._secret, index.size).reshape(shape))
        return self._patterns[shape]

    def signs(self, shape: tuple[int, int, int]) -> np.ndarray:
        """s = key[layout] XOR keystream, (C, h, w) uint8: the half of the normal each carrying element (block
        coefficient) is drawn from; free ones hold 0."""
        index, stream = self._pattern(shape)
        return np.where(index == FREE, 0, self.key[index] ^ stream).astype(np.uint8)

    def initial_noise(self, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        """A watermarked z_T (1, C, h, w), float32, exactly N(0, I) for anyone without the secret."""
        index, _ = self._pattern(shape)
        s = torch.from_numpy(self.signs(shape).astype(np.float64))
        carrying = torch.from_numpy(index != FREE)
        u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp(_TINY, 1 - _TINY)
        coefficients = torch.special.ndtri(torch.where(carrying, (u + s) / 2, u))
        return torch.from_numpy(to_blocks(coefficients.numpy(), self.config.block)).float()[None]

    def read(self, noise: torch.Tensor | np.ndarray, mask: np.ndarray | None = None) -> LatentReading:
        """Read the key bits from one inverted z_T estimate (C, h, w) or (1, C, h, w); only the spatial positions
        where ``mask`` (h, w) is true vote. InputError when the mask leaves some bit without a replica."""
        z = np.asarray(noise.detach().cpu() if isinstance(noise, torch.Tensor) else noise, dtype=np.float64)
        shape = (int(z.shape[-3]), int(z.shape[-2]), int(z.shape[-1]))
        z = to_blocks(z.reshape(shape), self.config.block)
        index, stream = self._pattern(shape)
        keep = index != FREE
        if mask is not None:  # a block's coefficients vote only when the whole block is usable
            usable = np.asarray(mask, dtype=bool)
            if self.config.block > 1:
                b = self.config.block
                whole = usable.reshape(shape[1] // b, b, shape[2] // b, b).all(axis=(1, 3))
                usable = np.repeat(np.repeat(whole, b, axis=0), b, axis=1)
            keep = keep & np.broadcast_to(usable, shape)
            if np.unique(index[keep]).size < self.key.size:
                raise InputError("too little of the image is usable to read every bit of the latent layer")
        votes = np.where(keep, z * (1.0 - 2.0 * stream), 0.0)
        scores = np.bincount(np.where(keep, index, 0).ravel(), weights=votes.ravel(), minlength=self.key.size)
        return LatentReading(bits=(scores > 0).astype(np.uint8), scores=scores)
