"""tfmot's part: magnitude pruning, quantization-aware training and pruning-preserving QAT of kiln's
model, layer by layer (its preprocessing layers, lookups and reshapes are neither prunable nor
quantizable: only layers tfmot's registries support are wrapped, the rest stay float).

Every function works on a copy: `prune_low_magnitude` and `quantize_annotate_layer` wrap the layer
objects they are given, so wrapping the trained model itself would prune the "float" model too.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from tasks.models.assemble import PREDICTION, PROBABILITIES

# The task's head stays dense: its few weights matter most and compress least.
HEAD_LAYERS = (PROBABILITIES, f"{PREDICTION}_standardised")


class VariantUnsupported(Exception):
    """tfmot cannot build this variant for this model; the message says which layer and why."""


def _why(exc: BaseException, limit: int = 250) -> str:
    """The exception's first paragraph on one line (Keras' messages start with a newline and go on)."""
    paragraph = next((p for p in str(exc).strip().split("\n\n") if p.strip()), "")
    return f"{type(exc).__name__}: {' '.join(paragraph.split())[:limit]}"


def copy_model(model: Any) -> Any:
    """A model with the same architecture and weights, sharing no layer objects with `model`."""
    import tf_keras as keras

    try:
        copy = keras.models.clone_model(model)
    except Exception as exc:  # a custom layer without get_config, say
        raise VariantUnsupported(f"the model cannot be cloned for tfmot: {_why(exc)}") from None
    copy.set_weights(model.get_weights())
    return copy


def _has_weights(layer: Any) -> bool:
    return bool(layer.trainable_weights)


def prunable_layers(model: Any, skip: list[str]) -> list[str]:
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    # The registry is tfmot's own list of layers it knows how to prune (public API has no query for it).
    return [layer.name for layer in model.layers
            if _has_weights(layer) and PruneRegistry.supports(layer) and not _skipped(layer.name, skip)]


def _skipped(name: str, skip: list[str]) -> bool:
    return name in HEAD_LAYERS or any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def pruning_schedule(target_sparsity: float, total_steps: int) -> tuple[Any, int, int]:
    """(PolynomialDecay reaching `target_sparsity`, end_step, frequency).

    tfmot updates the masks every `frequency` steps up to `end_step` and reaches the target there; its
    default frequency (100) would never prune a short fine-tune at all, so both are fitted to the run:
    masks update about twenty times and the target is reached with steps left to recover.
    """
    import tensorflow_model_optimization as tfmot

    frequency = max(1, total_steps // 20)
    end_step = max(frequency, frequency * math.floor((0.8 * total_steps) / frequency))
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                                    begin_step=0, end_step=end_step, frequency=frequency)
    return schedule, end_step, frequency


def prune(model: Any, target_sparsity: float, total_steps: int, skip: list[str]) -> Any:
    """A copy of `model` whose supported layers prune toward `target_sparsity` while it trains."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    chosen = set(prunable_layers(model, skip))
    if not chosen:
        raise VariantUnsupported(f"no prunable layer (tfmot's Dense, Conv, ... with weights) outside the head and "
                                 f"optimize.prune_skip {skip}")
    schedule, _, _ = pruning_schedule(target_sparsity, total_steps)

    def wrap(layer: Any) -> Any:
        if layer.name in chosen:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    try:
        return keras.models.clone_model(copy_model(model), clone_function=wrap)
    except (ValueError, TypeError) as exc:
        raise VariantUnsupported(f"pruning failed: {_why(exc)}") from None


def strip(pruned: Any) -> Any:
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras.strip_pruning(pruned)


def quantizable_layers(model: Any) -> list[str]:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E501
        Default8BitQuantizeRegistry,
    )

    registry = Default8BitQuantizeRegistry()
    return [layer.name for layer in model.layers if _has_weights(layer) and registry.supports(layer)]


def quantize_aware(model: Any, preserve_sparsity: bool = False) -> Any:
    """A copy of `model` with fake-quantization on its supported layers (TFMOT's default 8-bit scheme,
    or the pruning-preserving one for a pruned model)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    chosen = set(quantizable_layers(model))
    if not chosen:
        raise VariantUnsupported("no layer tfmot's 8-bit scheme can quantize (Dense, Conv, ...)")

    def annotate(layer: Any) -> Any:
        return tfmot.quantization.keras.quantize_annotate_layer(layer) if layer.name in chosen else layer

    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme() if preserve_sparsity else None
    # quantize_apply rebuilds the model from its config: the user's own layer classes must be known to it.
    custom = {type(layer).__name__: type(layer) for layer in model.layers
              if not type(layer).__module__.startswith(("tf_keras.", "keras."))}
    try:
        annotated = keras.models.clone_model(copy_model(model), clone_function=annotate)
        with tfmot.quantization.keras.quantize_scope(custom):
            return tfmot.quantization.keras.quantize_apply(annotated, scheme) if scheme else \
                tfmot.quantization.keras.quantize_apply(annotated)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise VariantUnsupported(f"quantization-aware training cannot wrap the model: {_why(exc)}") from None


def pruning_callbacks() -> list[Any]:
    """UpdatePruningStep advances the schedule; without it a pruned model's fit raises InvalidArgumentError."""
    import tensorflow_model_optimization as tfmot

    return [tfmot.sparsity.keras.UpdatePruningStep()]
