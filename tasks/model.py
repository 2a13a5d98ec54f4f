"""The digits CNN and its serving export. The signature is the serving contract:
`serving_default`: `pixels` float32 [None, F] -> `probabilities` float32 [None, C], `digit` int64 [None].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.config import TrainConfig

SIGNATURE = "serving_default"
INPUT_KEY = "pixels"
PROBABILITIES = "probabilities"
DIGIT = "digit"


def build_model(train_config: TrainConfig, mean: Sequence[float], variance: Sequence[float]) -> Any:
    """Raw pixels in; normalization is the first layer so serving needs no preprocessing."""
    import tf_keras as keras

    num_features = len(mean)
    if math.prod(train_config.image_shape) != num_features:
        raise ValueError(
            f"train.image_shape {list(train_config.image_shape)} holds {math.prod(train_config.image_shape)} "
            f"values but the data has {num_features} feature columns"
        )
    # Like TFT's scale_to_z_score: a feature constant in training is only centred, not divided by
    # ~0 (digits' pixel_56 is always 0 in train, yet 1 in an eval row: that row would explode).
    variance = [v if v > 0 else 1.0 for v in variance]
    layers = keras.layers
    pixels = keras.Input(shape=(num_features,), dtype="float32", name=INPUT_KEY)
    x = layers.Normalization(mean=list(mean), variance=variance, name="normalize")(pixels)
    x = layers.Reshape(train_config.image_shape)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    probabilities = layers.Dense(train_config.num_classes, activation="softmax", name=PROBABILITIES)(x)
    return keras.Model(pixels, probabilities, name="digits_cnn")


def compile_model(model: Any, train_config: TrainConfig) -> None:
    import tf_keras as keras

    model.compile(
        optimizer=keras.optimizers.Adam(train_config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def export_saved_model(model: Any, path: str | Path) -> Path:
    """Write a Keras-loadable SavedModel whose `serving_default` is the serving contract."""
    import tensorflow as tf

    num_features = model.input_shape[-1]

    @tf.function(input_signature=[tf.TensorSpec([None, num_features], tf.float32, name=INPUT_KEY)])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(pixels, training=False)
        return {PROBABILITIES: probabilities, DIGIT: tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

    path = Path(path)
    model.save(str(path), save_format="tf", include_optimizer=False, signatures={SIGNATURE: serve})
    return path


def load_serving_function(saved_model_dir: str | Path) -> Any:
    """The `serving_default` concrete function: call it as fn(pixels=tensor) -> dict of tensors."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    fn = loaded.signatures[SIGNATURE]
    fn._kiln_keepalive = loaded  # the function dies with the loaded object otherwise
    return fn


def predict(saved_model_dir: str | Path, features: Any, batch_size: int = 1024) -> Any:
    """Probabilities [N, C] from the SavedModel's serving signature (what the server will run)."""
    import numpy as np
    import tensorflow as tf

    fn = load_serving_function(saved_model_dir)
    outputs = [fn(**{INPUT_KEY: tf.constant(features[i:i + batch_size], tf.float32)})[PROBABILITIES].numpy()
               for i in range(0, len(features), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
