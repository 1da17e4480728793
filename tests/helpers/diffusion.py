"""Shared test data for the diffusion tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

import numpy as np

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
        yy, xx = np.mgrid[0:size, 0:size] / size
        image = 0.2 + 0.05 * rng.standard_normal((size, size))
        kind = index % 3
        if kind < 2:
            cx = 0.7 if kind == 0 else 0.3  # the patient's left is on the image right
            image += 0.6 * (((xx - cx) ** 2 + (yy - 0.6) ** 2) < 0.04)
        return np.clip(image, 0, 1).astype(np.float32)
