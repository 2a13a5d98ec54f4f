"""Image folders for tests: one folder per class, PNG and JPEG files of patterns a small CNN tells apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("horizontal", "vertical")


def stripes(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An RGB image of dark and light stripes (`kind`: horizontal or vertical), with noise and a random phase."""
    height, width = size
    period = int(rng.integers(3, 6))
    phase = int(rng.integers(0, period))
    line = ((np.arange(height if kind == "horizontal" else width) + phase) // max(1, period // 2)) % 2
    grid = np.repeat(line[:, None], width, axis=1) if kind == "horizontal" else np.repeat(line[None, :], height, axis=0)
    pixels = 40 + grid[..., None] * 170 + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, per_class: int = 60, size: tuple[int, int] = (20, 24), seed: int = 7) -> Path:
    """`root/<class>/<n>.png` (every third a .jpg), `per_class` images of each class at `size` (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            suffix = ".jpg" if index % 3 == 0 else ".png"
            Image.fromarray(stripes(kind, size, rng)).save(root / kind / f"{index:04d}{suffix}")
    return root
