"""The demo data sets, from scikit-learn's bundled copies (no download), written as plain CSVs.

* `digits`: 1,797 8x8 images, `pixel_0..pixel_63` (0-16) and `label` (0-9): images, a CNN.
* `cancer`: 569 breast-cancer biopsies, 30 numeric measurements, a derived categorical column
  `size_band` (small/medium/large by mean area), a few blanked `mean_smoothness` values (every 40th
  row, to show missing-value handling) and the string label `diagnosis` (malignant/benign).
* `diabetes`: 442 patients, 10 baseline measurements and `progression`, a number to regress.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NUM_PIXELS = 64
DIGITS_HEADER = [f"pixel_{i}" for i in range(NUM_PIXELS)] + ["label"]


def _write_csv(path: str | os.PathLike[str], header: list[str], rows: Iterable[list[Any]]) -> Path:
    """Atomic: a reader sees no file or the whole file, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote %s", target)
    return target


def write_digits_csv(path: str | os.PathLike[str]) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = ([*pixels.tolist(), int(label)] for pixels, label in
            zip(digits.data.astype(int), digits.target.astype(int), strict=True))
    return _write_csv(path, DIGITS_HEADER, rows)


def write_cancer_csv(path: str | os.PathLike[str]) -> Path:
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    area = data.data[:, names.index("mean_area")]
    low, high = np.quantile(area, [1 / 3, 2 / 3])
    smoothness = names.index("mean_smoothness")
    rows = []
    for index, (values, target) in enumerate(zip(data.data, data.target, strict=True)):
        fields: list[Any] = [f"{v:.6g}" for v in values]
        if index % 40 == 7:
            fields[smoothness] = ""
        band = "small" if values[names.index("mean_area")] <= low else "medium" if \
            values[names.index("mean_area")] <= high else "large"
        rows.append([*fields, band, str(data.target_names[target])])
    return _write_csv(path, [*names, "size_band", "diagnosis"], rows)


def write_diabetes_csv(path: str | os.PathLike[str]) -> Path:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    rows = ([*(f"{v:.6g}" for v in values), f"{target:g}"] for values, target in
            zip(data.data, data.target, strict=True))
    return _write_csv(path, [*data.feature_names, "progression"], rows)


DATASETS: dict[str, Callable[[str | os.PathLike[str]], Path]] = {
    "digits": write_digits_csv,
    "cancer": write_cancer_csv,
    "diabetes": write_diabetes_csv,
}
