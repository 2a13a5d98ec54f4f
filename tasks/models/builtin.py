"""The built-in model bodies: `mlp` for tabular data, `cnn` for images given as one pixel vector."""

from __future__ import annotations

import math
from typing import Any

from tasks.models.contract import ModelContractError


def mlp(inputs: Any, hparams: dict[str, Any]) -> Any:
    """Dense layers: `hidden_units` (default [64, 32]), `dropout` (0.1), `activation` (relu)."""
    import tf_keras as keras

    x = inputs
    for index, units in enumerate(hparams.get("hidden_units", [64, 32])):
        x = keras.layers.Dense(int(units), activation=hparams.get("activation", "relu"), name=f"dense_{index}")(x)
        if hparams.get("dropout", 0.1):
            x = keras.layers.Dropout(float(hparams.get("dropout", 0.1)), name=f"dropout_{index}")(x)
    return x


def cnn(inputs: Any, hparams: dict[str, Any]) -> Any:
    """Two convolutions, pooling and a dense layer over `image_shape` (default: a square, one channel).

    hparams: `image_shape` [h, w, c], `filters` [32, 64], `dense_units` 128, `dropout` [0.25, 0.3].
    """
    import tf_keras as keras

    width = int(inputs.shape[-1])
    side = math.isqrt(width)
    shape = tuple(int(v) for v in hparams.get("image_shape", (side, side, 1)))
    if math.prod(shape) != width:
        raise ModelContractError(f"cnn: hparams.image_shape {list(shape)} holds {math.prod(shape)} values but the "
                                 f"preprocessed inputs have {width}")
    conv_dropout, dense_dropout = hparams.get("dropout", [0.25, 0.3])
    layers = keras.layers
    x = layers.Reshape(shape, name="image_grid")(inputs)
    for index, filters in enumerate(hparams.get("filters", [32, 64])):
        x = layers.Conv2D(int(filters), 3, padding="same", activation="relu", name=f"conv_{index}")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Dropout(conv_dropout, name="conv_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(hparams.get("dense_units", 128)), activation="relu", name="dense")(x)
    return layers.Dropout(dense_dropout, name="dense_dropout")(x)
