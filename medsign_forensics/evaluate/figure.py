"""A figure like MedSign's Fig. 3, drawn with Pillow (no plotting library is installed).

One row per chosen image: the original D_o(x0) with its localization map A_loc tinted red (min-max scaled,
as `medsign localize` draws it), then for each method its watermarked image and |I_w - I_o| x 10 (clipped to
[0, 1], white = large change). A title strip names every column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from medsign_forensics.attacks.codec import to_uint8

OVERLAY_ALPHA = 0.6
DIFFERENCE_GAIN = 10.0
TITLE_HEIGHT = 28
GAP = 4


def overlay(image: np.ndarray, a_map: np.ndarray) -> np.ndarray:
    """RGB float image: the grey image tinted red in proportion to the min-max scaled map."""
    low, high = float(a_map.min()), float(a_map.max())
    weight = np.zeros_like(a_map) if high <= low else (a_map - low) / (high - low)
    weight = (OVERLAY_ALPHA * weight)[..., None]
    grey = np.repeat(np.asarray(image, np.float32)[..., None], 3, axis=-1)
    return np.clip((1 - weight) * grey + weight * np.array([1.0, 0.0, 0.0], np.float32), 0, 1)


def difference(original: np.ndarray, watermarked: np.ndarray) -> np.ndarray:
    """|I_w - I_o| x 10 as an RGB grey image in [0, 1]."""
    diff = np.clip(
        np.abs(np.asarray(watermarked, np.float32) - np.asarray(original, np.float32)) * DIFFERENCE_GAIN, 0, 1
    )
    return np.repeat(diff[..., None], 3, axis=-1)


def figure3(
    originals: Sequence[np.ndarray],
    maps: np.ndarray,
    panels: Sequence[tuple[str, Sequence[np.ndarray]]],
    *,
    rows: Sequence[int],
) -> np.ndarray:
    """The figure as an RGB uint8 array: columns = original + A_loc, then (watermarked, difference) per method."""
    height, width = np.asarray(originals[0]).shape
    titles = ["original + A_loc"]
    for name, _ in panels:
        titles += [f"{name}", f"{name} |Iw-Io| x10"]
    columns = len(titles)
    canvas = Image.new("RGB", (columns * (width + GAP) - GAP, TITLE_HEIGHT + len(rows) * (height + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((c * (width + GAP) + 4, 8), title, fill="black")
    for r, index in enumerate(rows):
        tiles = [overlay(originals[index], maps[index])]
        for _, images in panels:
            tiles += [
                np.repeat(np.asarray(images[index], np.float32)[..., None], 3, axis=-1),
                difference(originals[index], images[index]),
            ]
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(to_uint8(tile), "RGB"), (c * (width + GAP), TITLE_HEIGHT + r * (height + GAP)))
    return np.asarray(canvas)
