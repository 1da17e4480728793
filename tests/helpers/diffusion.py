"""Shared test data for the diffusion tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

import numpy as np

from medsign_forensics.reports.findings import FindingKind

REPORT_TEXTS = [
    "Heart size is enlarged, consistent with cardiomegaly. No pleural effusion.",
    "Left lower lobe atelectasis. No pneumothorax.",
    "Small right pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Moderate cardiomegaly. Pulmonary edema. Bilateral effusions.",
    "Right upper lobe pneumonia. No pneumothorax or effusion.",
] * 20


class StandInSource:
    """A study source with the training interface: a bright disc on the captioned side, or none."""

    def __init__(self, count: int = 6) -> None:
        self._captions = [
            ("Left pleural effusion.", "Effusion on the left."),
            ("Right pleural effusion.",),
            ("No acute cardiopulmonary abnormality.",),
        ]
        self.count = count

    def __len__(self) -> int:
        return self.count

    def report_id(self, index: int) -> str:
        return f"standin-{index}"

    def captions(self, index: int) -> tuple[str, ...]:
        return self._captions[index % 3]

    def render(self, index: int, *, seed: int, size: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        image = 0.2 + 0.05 * rng.standard_normal((size, size)) + 0.6 * self._disc(index, size)
        return np.clip(image, 0, 1).astype(np.float32)

    def masks(self, index: int, *, seed: int, size: int, grid: int) -> dict[FindingKind, np.ndarray]:
        """The disc as an effusion, as the fraction of each cell of a ``grid`` raster inside it (none if normal)."""
        disc = self._disc(index, size)
        if not disc.any():
            return {}
        factor = size // grid
        cells = disc.reshape(grid, factor, grid, factor).mean(axis=(1, 3))
        return {FindingKind.EFFUSION: cells.astype(np.float32)}

    @staticmethod
    def _disc(index: int, size: int) -> np.ndarray:
        kind = index % 3
        if kind == 2:
            return np.zeros((size, size), bool)
        yy, xx = np.mgrid[0:size, 0:size] / size
        cx = 0.7 if kind == 0 else 0.3  # the patient's left is on the image right
        return ((xx - cx) ** 2 + (yy - 0.6) ** 2) < 0.04
