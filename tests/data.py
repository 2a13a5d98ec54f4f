"""CSV files the tests generate: small, deterministic, with the column kinds users bring."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

CHURN_COLUMNS = ["tenure", "plan", "monthly", "paperless", "region", "churned"]


def write_churn_csv(path: Path, rows: int = 600, seed: int = 1) -> Path:
    """Customers: an int, a string category, a float with missing values, a boolean, a string category
    with missing values, and the string label `churned` (yes/no), learnable from the first three."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CHURN_COLUMNS)
        for index in range(rows):
            tenure = rng.randint(0, 72)
            plan = rng.choice(["basic", "pro", "premium"])
            monthly = round(rng.uniform(10, 120), 2)
            score = monthly / 120 - tenure / 72 + (0.3 if plan == "basic" else 0) + rng.gauss(0, 0.2)
            writer.writerow([tenure, plan, "" if index % 37 == 0 else monthly, rng.choice(["true", "false"]),
                             rng.choice(["north", "south", ""]), "yes" if score > 0 else "no"])
    return path


def write_house_csv(path: Path, rows: int = 500, seed: int = 2) -> Path:
    """Houses: numeric and string features and a float label `price` (a regression)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["area", "rooms", "district", "age", "price"])
        for _ in range(rows):
            area = rng.uniform(30, 200)
            rooms = rng.randint(1, 6)
            district = rng.choice(["centre", "suburb", "rural"])
            age = rng.uniform(0, 80)
            premium = {"centre": 80.0, "suburb": 20.0, "rural": -30.0}[district]
            price = 2.5 * area + 15 * rooms + premium - 0.6 * age + rng.gauss(0, 15)
            writer.writerow([f"{area:.1f}", rooms, district, f"{age:.1f}", f"{price:.2f}"])
    return path


def first_row(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        return next(csv.DictReader(fh))


def is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
