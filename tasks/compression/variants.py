"""The variants optimize can build, what each is made from and how it is converted.

| variant            | made from                           | TFLite conversion                          |
|--------------------|-------------------------------------|--------------------------------------------|
| baseline (float32) | the trained model                   | none (float32 weights and activations)     |
| dynamic_range      | the trained model                   | int8 weights, float activations            |
| float16            | the trained model                   | float16 weights                            |
| int8               | the trained model                   | full integer, calibrated on train examples |
| qat_int8           | quantization-aware fine-tune        | int8 from the learned ranges               |
| pruned             | magnitude pruning + fine-tune       | float32 (the zeros compress)               |
| pruned_int8        | the pruned model                    | full integer, calibrated                   |
| pruned_qat_int8    | pruning-preserving QAT of the pruned| int8 from the learned ranges               |
"""

from __future__ import annotations

from typing import Literal, get_args

VariantName = Literal["dynamic_range", "float16", "int8", "qat_int8", "pruned", "pruned_int8", "pruned_qat_int8"]
BASELINE = "baseline"
ALL: tuple[VariantName, ...] = ("dynamic_range", "float16", "int8", "qat_int8", "pruned", "pruned_int8",
                                "pruned_qat_int8")

# variant -> (the model it is converted from, the conversion)
RECIPES: dict[str, tuple[str, str]] = {
    BASELINE: ("trained", "float32"),
    "dynamic_range": ("trained", "dynamic_range"),
    "float16": ("trained", "float16"),
    "int8": ("trained", "int8"),
    "qat_int8": ("qat", "quantized"),
    "pruned": ("pruned", "float32"),
    "pruned_int8": ("pruned", "int8"),
    "pruned_qat_int8": ("pruned_qat", "quantized"),
}

FineTuneName = Literal["pruned", "qat", "pruned_qat"]  # the fine-tuned models the training workers make
FINE_TUNED: tuple[FineTuneName, ...] = get_args(FineTuneName)


def fine_tunes_needed(variants: list[str]) -> list[FineTuneName]:
    """Which fine-tuned models the chosen variants need (pruned_qat needs pruned first)."""
    sources = {RECIPES[v][0] for v in variants}
    if "pruned_qat" in sources:
        sources.add("pruned")
    return [name for name in FINE_TUNED if name in sources]
