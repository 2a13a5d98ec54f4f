"""Count, mean, M2 (for the variance), min and max of numbers seen batch by batch, mergeable: Chan et al.'s
parallel update, exact up to floating point whatever the order of the batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, numbers: np.ndarray) -> None:
        """Add a batch of finite numbers."""
        if len(numbers):
            mean = float(numbers.mean())
            self.merge(Moments(len(numbers), mean, float(((numbers - mean) ** 2).sum()), float(numbers.min()),
                               float(numbers.max())))

    def merge(self, other: Moments) -> None:
        if not other.count:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.minimum, self.maximum = min(self.minimum, other.minimum), max(self.maximum, other.maximum)

    @property
    def variance(self) -> float:
        """Population variance (0 with no numbers)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)
