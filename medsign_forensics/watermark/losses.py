"""The decoder fine-tuning objective of MedSign (section 2.2.2, eq. 2), one function per term.

    L_total = l_img * L_img + l_msg * L_msg + l_tv * L_tv + l_pre * L_pre

Every term compares the watermarked decoder's image I_w = D_w(x0) with the ORIGINAL decoder's image
I_o = D_o(x0) for the same latent x0, both (B, C, H, W) in [0, 1] (C = 1 for greyscale models). Scales are
stated per term because the paper does not give them and the weights of :data:`config.PRESETS` are only
meaningful against a fixed scale:

* :func:`watson_loss` (L_img): Watson's DCT perceptual distance, below. Per image and channel, then the mean.
* :func:`message_loss` (L_msg): ``BCE-with-logits(logits / temperature, key)``, mean over bits and images,
  where ``logits`` are the frozen, WHITENED extractor's outputs (unit variance on unwatermarked images) and the
  temperature is an explicit setting (Stable Signature's "BCE on 10 x the output" is temperature 0.1).
* :func:`tv_loss` (L_tv): anisotropic total variation of d = |I_w - I_o|: the mean absolute difference of
  vertically adjacent pixels of d plus that of horizontally adjacent ones.
* :func:`preservation_loss` (L_pre): ``mean(((I_w - I_o) * A_loc) ** 2)`` over pixels, channels and images,
  i.e. the paper's E[||(I_w - I_o) . A_loc||^2] per pixel; A_loc (B, 1, H, W) in [0, 1] is broadcast over channels.

Watson's DCT model (Watson 1993, "DCT quantization matrices visually optimized for individual images"; as a
differentiable loss: Czolbe, Krause, Cox and Igel 2020, "A loss function for generative neural networks based
on Watson's perceptual model"), with the published constants and no pretrained network:

1. Grey levels 0..255 (the units of Watson's threshold table), split into 8 x 8 blocks after replicate-padding
   the bottom/right edges to a multiple of 8; C = the orthonormal 2-D DCT-II of each block.
2. Frequency sensitivity t_ij: Watson's 8 x 8 table :data:`WATSON_T` (t_00 = 1.40, ..., t_77 = 21.15).
3. Luminance masking: t^L_ijk = t_ij * (C_00k / mean_k C_00k) ** alpha, alpha = 0.649; the mean DC is taken over
   the blocks of the same image and channel (Czolbe et al. take it over the whole batch, which would let one
   image's brightness change another's thresholds).
4. Contrast masking: m_ijk = max(t^L_ijk, |C_ijk| ** w * (t^L_ijk) ** (1 - w)), w = 0.7 for every frequency,
   the DC term included (as Czolbe et al.; the DC term is then masked mostly by its own magnitude).
5. Pooling: D = (sum_ijk |(C^w_ijk - C^o_ijk) / m_ijk| ** beta) ** (1 / beta), beta = 4.

The masks come from the reference I_o only (a fixed tensor here), so the hard ``max`` of step 4 needs no smooth
stand-in: no gradient flows through it. Colour images are scored channel by channel and averaged
(greyscale first: a medical image has one channel, and an RGB model's output is stored as grey anyway).

Watson-VGG (the paper's choice) is not offered: it needs ImageNet VGG-16 weights and Czolbe et al.'s fitted
per-layer weights, neither of which can be obtained on these machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from medsign_forensics.config import LossWeights
from medsign_forensics.errors import InputError

BLOCK = 8
GREY_LEVELS = 255.0
# Watson (1993): DCT-coefficient detection thresholds for 8 x 8 blocks of 8-bit grey levels.
WATSON_T: tuple[tuple[float, ...], ...] = (
    (1.40, 1.01, 1.16, 1.66, 2.40, 3.43, 4.79, 6.56),
    (1.01, 1.45, 1.32, 1.52, 2.00, 2.71, 3.67, 4.93),
    (1.16, 1.32, 2.24, 2.59, 2.98, 3.64, 4.60, 5.88),
    (1.66, 1.52, 2.59, 3.77, 4.55, 5.30, 6.28, 7.60),
    (2.40, 2.00, 2.98, 4.55, 6.15, 7.46, 8.71, 10.17),
    (3.43, 2.71, 3.64, 5.30, 7.46, 9.62, 11.58, 13.51),
    (4.79, 3.67, 4.60, 6.28, 8.71, 11.58, 14.50, 17.29),
    (6.56, 4.93, 5.88, 7.60, 10.17, 13.51, 17.29, 21.15),
)
WATSON_ALPHA = 0.649  # luminance masking exponent
WATSON_W = 0.7  # contrast masking exponent
WATSON_BETA = 4.0  # Minkowski pooling exponent
_EPS = 1e-8


def _check_pair(watermarked: torch.Tensor, original: torch.Tensor) -> None:
    if watermarked.ndim != 4 or watermarked.shape != original.shape:
        raise InputError(
            f"losses compare two (B, C, H, W) batches of the same shape, got {tuple(watermarked.shape)} "
            f"and {tuple(original.shape)}"
        )


def dct_matrix(
    size: int = BLOCK, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (size x size): coefficients of a block X are D @ X @ D^T."""
    n = torch.arange(size, dtype=torch.float64)
    k = n[:, None]
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(device=device, dtype=dtype)


def block_dct(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/8, W/8, 8, 8) orthonormal DCT coefficients (edges replicate-padded to 8)."""
    _, _, height, width = images.shape
    pad_h, pad_w = (-height) % BLOCK, (-width) % BLOCK
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
    b, c, h, w = images.shape
    blocks = images.reshape(b, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)
    matrix = dct_matrix(BLOCK, dtype=images.dtype, device=images.device)
    return matrix @ blocks @ matrix.T


def watson_loss(watermarked: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Watson's DCT perceptual distance of I_w from I_o (module docstring), mean over images and channels."""
    _check_pair(watermarked, original)
    original = original.detach()
    coeffs_w = block_dct(watermarked * GREY_LEVELS)
    coeffs_o = block_dct(original * GREY_LEVELS)
    table = torch.tensor(WATSON_T, dtype=coeffs_o.dtype, device=coeffs_o.device)
    dc = coeffs_o[..., 0, 0].clamp_min(0.0)  # (B, C, nh, nw); a block's DC is 8 x its mean grey level
    mean_dc = dc.mean(dim=(2, 3), keepdim=True)
    luminance = ((dc + _EPS) / (mean_dc + _EPS)) ** WATSON_ALPHA
    t_l = table * luminance[..., None, None]
    masks = torch.maximum(t_l, (coeffs_o.abs() + _EPS) ** WATSON_W * t_l ** (1.0 - WATSON_W))
    scaled = (coeffs_w - coeffs_o) / masks
    # The Minkowski sum as a vector norm: torch gives it a zero (not NaN) gradient at I_w == I_o.
    pooled = torch.linalg.vector_norm(scaled.flatten(2), ord=WATSON_BETA, dim=2)  # (B, C)
    return pooled.mean()


def message_loss(logits: torch.Tensor, key: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """BCE-with-logits between the key bits (0/1) and ``logits / temperature``; mean over bits and images.

    ``key`` is (k,) (one key for the whole batch, as a deployment has) or (B, k).
    """
    if temperature <= 0:
        raise InputError(f"the message-loss temperature must be positive, got {temperature}")
    if logits.ndim != 2 or logits.shape[-1] != key.shape[-1]:
        raise InputError(f"logits {tuple(logits.shape)} do not match a {key.shape[-1]}-bit key")
    target = key.to(logits.dtype).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits / temperature, target)


def tv_loss(watermarked: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of |I_w - I_o| (mean absolute neighbour differences, both directions)."""
    _check_pair(watermarked, original)
    difference = (watermarked - original.detach()).abs()
    vertical = (difference[:, :, 1:, :] - difference[:, :, :-1, :]).abs().mean()
    horizontal = (difference[:, :, :, 1:] - difference[:, :, :, :-1]).abs().mean()
    return vertical + horizontal


def preservation_loss(watermarked: torch.Tensor, original: torch.Tensor, a_loc: torch.Tensor) -> torch.Tensor:
    """mean(((I_w - I_o) * A_loc) ** 2): the watermark's energy inside the pathology localization map."""
    _check_pair(watermarked, original)
    if (
        a_loc.ndim != 4
        or a_loc.shape[1] != 1
        or a_loc.shape[0] != watermarked.shape[0]
        or a_loc.shape[2:] != watermarked.shape[2:]
    ):
        raise InputError(
            f"A_loc must be (B, 1, H, W) matching the images {tuple(watermarked.shape)}, got {tuple(a_loc.shape)}"
        )
    return (((watermarked - original.detach()) * a_loc.to(watermarked.dtype)) ** 2).mean()


@dataclass(frozen=True)
class LossTerms:
    """The four unweighted terms and the weighted total (tensors; ``total`` carries the gradient)."""

    img: torch.Tensor
    msg: torch.Tensor
    tv: torch.Tensor
    pre: torch.Tensor
    total: torch.Tensor

    def values(self) -> dict[str, float]:
        """Plain floats for logs: the unweighted terms and the weighted total."""
        return {name: float(getattr(self, name).detach()) for name in ("img", "msg", "tv", "pre", "total")}


def decoder_objective(
    watermarked: torch.Tensor,
    original: torch.Tensor,
    logits: torch.Tensor,
    key: torch.Tensor,
    a_loc: torch.Tensor | None,
    weights: LossWeights,
    *,
    temperature: float,
) -> LossTerms:
    """MedSign eq. 2. ``logits`` are the extractor's outputs for (an attacked copy of) ``watermarked``.

    A zero weight skips its term's computation (it is reported as 0); ``a_loc`` may be None only when
    ``weights.pre`` is 0 (Stable Signature mode has no map).
    """
    zero = watermarked.new_zeros(())
    img = watson_loss(watermarked, original) if weights.img else zero
    msg = message_loss(logits, key, temperature=temperature) if weights.msg else zero
    tv = tv_loss(watermarked, original) if weights.tv else zero
    if weights.pre:
        if a_loc is None:
            raise InputError("the preservation loss needs the localization map A_loc; pass it or set its weight to 0")
        pre = preservation_loss(watermarked, original, a_loc)
    else:
        pre = zero
    total = weights.img * img + weights.msg * msg + weights.tv * tv + weights.pre * pre
    return LossTerms(img=img, msg=msg, tv=tv, pre=pre, total=total)
