"""Attacks on pixel values that keep the geometry: brightness, contrast, gamma, blur, noise."""

from __future__ import annotations

import cv2
import kornia
import numpy as np
import torch

from medsign_forensics.attacks.base import Attack, number_name
from medsign_forensics.errors import InputError


class Brightness(Attack):
    """Multiply every pixel by ``factor`` and clip to [0, 1] (torchvision's and Pillow's brightness)."""

    def __init__(self, factor: float) -> None:
        if factor <= 0:
            raise InputError(f"brightness factor {factor} must be positive")
        self.factor = factor

    @property
    def name(self) -> str:
        return f"brightness_x{number_name(self.factor)}"

    def _exact(self, image, rng):
        return np.clip(image * self.factor, 0.0, 1.0)

    def _differentiable(self, images, rng):
        return torch.clamp(images * self.factor, 0.0, 1.0)


class Contrast(Attack):
    """Scale each image's deviation from its own mean by ``factor`` and clip to [0, 1]."""

    def __init__(self, factor: float) -> None:
        if factor < 0:
            raise InputError(f"contrast factor {factor} must not be negative")
        self.factor = factor

    @property
    def name(self) -> str:
        return f"contrast_x{number_name(self.factor)}"

    def _exact(self, image, rng):
        mean = float(image.mean())
        return np.clip(mean + self.factor * (image - mean), 0.0, 1.0)

    def _differentiable(self, images, rng):
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return torch.clamp(mean + self.factor * (images - mean), 0.0, 1.0)


class Gamma(Attack):
    """Raise every pixel to the power ``gamma`` (values below 1 brighten, above 1 darken)."""

    def __init__(self, gamma: float) -> None:
        if gamma <= 0:
            raise InputError(f"gamma {gamma} must be positive")
        self.gamma = gamma

    @property
    def name(self) -> str:
        return f"gamma_{number_name(self.gamma)}"

    def _exact(self, image, rng):
        return np.power(np.clip(image, 0.0, 1.0), self.gamma)

    def _differentiable(self, images, rng):
        # The floor keeps the gradient of x**gamma finite at 0 for gamma < 1.
        return torch.clamp(images, 1e-4, 1.0) ** self.gamma


class GaussianBlur(Attack):
    """Gaussian blur with standard deviation ``sigma`` and a ``kernel`` x ``kernel`` window, mirrored borders."""

    def __init__(self, sigma: float, kernel: int) -> None:
        if sigma <= 0 or kernel < 3 or kernel % 2 == 0:
            raise InputError(f"blur needs sigma > 0 and an odd kernel >= 3, got sigma={sigma}, kernel={kernel}")
        self.sigma = sigma
        self.kernel = int(kernel)

    @property
    def name(self) -> str:
        return f"blur_sigma{number_name(self.sigma)}_k{self.kernel}"

    def _exact(self, image, rng):
        k = self.kernel
        return cv2.GaussianBlur(image, (k, k), self.sigma, borderType=cv2.BORDER_REFLECT_101)

    def _differentiable(self, images, rng):
        k, s = self.kernel, float(self.sigma)
        return kornia.filters.gaussian_blur2d(images, (k, k), (s, s), border_type="reflect")


class GaussianNoise(Attack):
    """Add independent N(0, sigma^2) noise to every pixel and clip to [0, 1]."""

    random = True

    def __init__(self, sigma: float) -> None:
        if sigma < 0:
            raise InputError(f"noise sigma {sigma} must not be negative")
        self.sigma = sigma

    @property
    def name(self) -> str:
        return f"noise_sigma{number_name(self.sigma)}"

    def _exact(self, image, rng):
        assert rng is not None
        return np.clip(image + rng.normal(0.0, self.sigma, size=image.shape), 0.0, 1.0)

    def _differentiable(self, images, rng):
        assert rng is not None
        noise = torch.from_numpy(rng.normal(0.0, self.sigma, size=tuple(images.shape)).astype(np.float32))
        return torch.clamp(images + noise.to(images.device, images.dtype), 0.0, 1.0)
