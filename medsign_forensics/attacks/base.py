"""What every attack is: a name plus an exact (numpy) and a differentiable (torch) form; and composition."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from medsign_forensics.errors import InputError


def number_name(value: float) -> str:
    """Canonical plain-decimal spelling of a parameter (no exponent, so '+' stays the composition sign)."""
    return np.format_float_positional(float(value), trim="-")


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward value ``y``, gradient of the identity: for operations with no useful gradient."""
    return x + (y - x).detach()


def _check_numpy(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"attacks take a greyscale (H, W) float image, got shape {image.shape}")
    return image


def _check_torch(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise InputError(f"attacks take a (B, C, H, W) batch, got shape {tuple(images.shape)}")


class Attack(ABC):
    """A named image transformation with an exact and a differentiable form."""

    random: bool = False

    @property
    @abstractmethod
    def name(self) -> str:
        """Canonical name; ``parse_attack(attack.name)`` rebuilds an equal attack."""

    @abstractmethod
    def _exact(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray: ...

    @abstractmethod
    def _differentiable(self, images: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor: ...

    def exact(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply the real operation to a float32 (H, W) image in [0, 1]; returns float32 in [0, 1]."""
        self._need_rng(rng)
        return np.asarray(self._exact(_check_numpy(image), rng), dtype=np.float32)

    def differentiable(self, images: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Apply the training form to a (B, C, H, W) batch in [0, 1], passing gradients."""
        _check_torch(images)
        self._need_rng(rng)
        return self._differentiable(images, rng)

    def _need_rng(self, rng: np.random.Generator | None) -> None:
        if self.random and rng is None:
            raise InputError(f"attack {self.name} is random: pass a seeded numpy Generator as rng")

    def __repr__(self) -> str:
        return f"Attack({self.name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attack) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Identity(Attack):
    @property
    def name(self) -> str:
        return "none"

    def _exact(self, image, rng):
        return image.copy()

    def _differentiable(self, images, rng):
        return images


class Compose(Attack):
    """Apply several attacks in order; the name joins theirs with '+'."""

    attacks: tuple[Attack, ...]

    def __init__(self, attacks: Sequence[Attack]) -> None:
        flat: list[Attack] = []
        for attack in attacks:
            flat.extend(attack.attacks if isinstance(attack, Compose) else [attack])
        if len(flat) < 2:
            raise InputError("a composition needs at least two attacks")
        self.attacks = tuple(flat)
        self.random = any(a.random for a in flat)

    @property
    def name(self) -> str:
        return "+".join(a.name for a in self.attacks)

    def _exact(self, image, rng):
        for attack in self.attacks:
            image = attack.exact(image, rng)
        return image

    def _differentiable(self, images, rng):
        for attack in self.attacks:
            images = attack.differentiable(images, rng)
        return images
