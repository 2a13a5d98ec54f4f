"""The PNGs people look at: confusion matrix, residuals, metrics per slice, training curves.

matplotlib with the Agg backend (workers have no display); every function writes one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(confusion: Any, classes: list[Any], path: Path, title: str) -> None:
    plt = _pyplot()
    confusion = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    try:
        image = ax.imshow(confusion, cmap="Blues")
        fig.colorbar(image, ax=ax)
        ticks = range(len(classes))
        names = [str(c) for c in classes]
        ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="true",
               title=title)
        limit = confusion.max() / 2 if confusion.size else 0
        for (row, col), count in np.ndenumerate(confusion):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > limit else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def residuals(targets: Any, predicted: Any, label: str, path: Path, title: str) -> None:
    plt = _pyplot()
    targets, predicted = np.asarray(targets, np.float64), np.asarray(predicted, np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    try:
        left.scatter(targets, predicted, s=8, alpha=0.6)
        low, high = float(min(targets.min(), predicted.min())), float(max(targets.max(), predicted.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
        left.set(xlabel=f"true {label}", ylabel="predicted", title=title)
        right.hist(predicted - targets, bins=30)
        right.set(xlabel="predicted - true", ylabel="examples", title="residuals")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def slice_metric(slices: list[dict[str, Any]], metric: str, path: Path, champion: str | None) -> None:
    """A bar per slice: the candidate's metric beside the champion's (when there is one)."""
    plt = _pyplot()
    names = [s["slice"] for s in slices]
    candidate = [s["metrics"].get(metric, np.nan) for s in slices]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    try:
        positions = np.arange(len(names))
        width = 0.4 if champion else 0.8
        ax.bar(positions - (width / 2 if champion else 0), candidate, width, label="candidate")
        if champion:
            ax.bar(positions + width / 2, [(s.get("champion_metrics") or {}).get(metric, np.nan) for s in slices],
                   width, label=champion)
        ax.set_xticks(positions, names, rotation=30, ha="right")
        ax.set(ylabel=metric, title=f"{metric} per slice")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def training_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and every other per-epoch metric, train beside validation."""
    plt = _pyplot()
    names = [k for k in history[0] if k not in ("epoch", "epoch_seconds") and not k.startswith("val_")]
    epochs = [record["epoch"] for record in history]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    try:
        for ax, name in zip(axes[0], names, strict=True):
            ax.plot(epochs, [r.get(name) for r in history], label="train")
            if f"val_{name}" in history[0]:
                ax.plot(epochs, [r.get(f"val_{name}") for r in history], label="eval")
            ax.set(xlabel="epoch", title=name)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
