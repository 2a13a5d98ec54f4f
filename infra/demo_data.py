"""The demo data set: scikit-learn's bundled 8x8 digits (no download) as a plain CSV."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

NUM_PIXELS = 64
HEADER = [f"pixel_{i}" for i in range(NUM_PIXELS)] + ["label"]


def write_digits_csv(path: str | os.PathLike[str]) -> Path:
    """Write the 1797 digits as `pixel_0..pixel_63,label` (ints 0-16); atomic, so never half a file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            for pixels, label in zip(digits.data.astype(int), digits.target.astype(int), strict=True):
                writer.writerow([*pixels.tolist(), int(label)])
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote %d digits rows to %s", len(digits.target), target)
    return target
