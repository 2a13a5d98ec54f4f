"""A custom model body for kiln: the `train.model` contract in one file.

kiln calls `build(inputs, hparams)` with the preprocessed features (one float32 tensor [batch, width]:
normalised numbers, one-hot categories) and `train.hparams`; it adds the head, loss and serving signature.
"""

import tf_keras as keras


def build(inputs, hparams):
    """Two dense layers joined by a residual connection, then dropout."""
    units = int(hparams.get("units", 32))
    x = keras.layers.Dense(units, activation="relu", name="block_1")(inputs)
    y = keras.layers.Dense(units, activation="relu", name="block_2")(x)
    x = keras.layers.Add(name="residual")([x, y])
    return keras.layers.Dropout(float(hparams.get("dropout", 0.2)), name="dropout")(x)
