"""Assemble the Keras (tf_keras) model: served inputs -> preprocessing layers -> user body -> task head.

The preprocessing layers are rebuilt from the state transform adapted on the train split, so the model
that is trained, evaluated and served takes raw features: there is no training/serving skew. The whole
model is one flat functional graph (the body's layers included), which tfmot can prune and quantize
layer by layer.
"""

from __future__ import annotations

from typing import Any

from tasks.features import FeatureSpec, LabelSpec, Preprocessing
from tasks.models.contract import build_body

PROBABILITIES = "probabilities"
PREDICTION = "prediction"


def build_model(preprocessing: Preprocessing, model_ref: str, hparams: dict[str, Any]) -> Any:
    import tf_keras as keras

    inputs = {f.name: keras.Input(shape=tuple(f.shape), dtype=f.dtype, name=f.name) for f in preprocessing.features}
    parts = [_preprocess(f, inputs[f.name]) for f in preprocessing.features]
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="preprocessed")(parts)
    images = [f for f in preprocessing.features if f.kind == "image"]
    if len(images) == 1 and "image_shape" not in hparams:  # what `cnn` folds the flat pixels back into
        hparams = {**hparams, "image_shape": images[0].shape}
    body = build_body(model_ref, x, hparams)
    return keras.Model(inputs, _head(preprocessing.label, body), name="kiln_model")


def _preprocess(feature: FeatureSpec, tensor: Any) -> Any:
    """The feature's preprocessing layers, every one of them covered by the TFLite builtins (see
    tasks.models.one_hot for why lookups and one-hots are not Keras' own layers)."""
    import tensorflow as tf
    import tf_keras as keras

    from tasks.models.one_hot import IndexOneHot, VocabularyOneHot

    layers = keras.layers
    name = feature.name
    if feature.kind == "image":  # pixels 0-255 -> [-1, 1], one row per example (bodies take flat inputs)
        scaled = layers.Rescaling(scale=1 / 127.5, offset=-1.0, name=f"{name}_scale")(tensor)
        return layers.Flatten(name=f"{name}_flatten")(scaled)
    if feature.kind != "vector":
        tensor = layers.Reshape((1,), name=f"{name}_column")(tensor)
    if feature.kind in ("numeric", "vector"):
        if feature.bin_boundaries is not None:
            buckets = layers.Discretization(bin_boundaries=feature.bin_boundaries, name=f"{name}_buckets")(tensor)
            return IndexOneHot(len(feature.bin_boundaries) + 1, name=f"{name}_one_hot")(buckets)
        # A constant feature is centred, not divided by ~0 (TFT's scale_to_z_score does the same).
        variance = [v if v > 0 else 1.0 for v in feature.variance or []]
        scaled = layers.Normalization(mean=feature.mean, variance=variance, name=f"{name}_normalize")(tensor)
        # Missing (NaN) -> 0, the train mean in standardised units.
        return tf.where(tf.math.is_nan(scaled), tf.zeros_like(scaled), scaled)
    if feature.kind == "string":
        return VocabularyOneHot([str(v) for v in feature.vocabulary or []], name=f"{name}_lookup")(tensor)
    if feature.kind == "integer":
        # A missing value (MISSING_INT) is in no vocabulary transform makes: it lands out of vocabulary.
        return VocabularyOneHot([int(v) for v in feature.vocabulary or []], name=f"{name}_lookup")(tensor)
    return tf.cast(tensor, tf.float32)  # boolean


def _head(label: LabelSpec, body: Any) -> Any:
    import tf_keras as keras

    # float32 whatever the mixed-precision policy: a softmax or a loss in float16 loses precision, and the served
    # outputs keep their dtype.
    if label.task == "classification":
        return keras.layers.Dense(label.num_classes, activation="softmax", name=PROBABILITIES, dtype="float32")(body)
    standardised = keras.layers.Dense(1, name=f"{PREDICTION}_standardised", dtype="float32")(body)
    return keras.layers.Rescaling(scale=label.std or 1.0, offset=label.mean or 0.0, name=PREDICTION,
                                  dtype="float32")(standardised)


def compile_model(model: Any, label: LabelSpec, learning_rate: float, jit_compile: bool = False) -> None:
    """Adam and the task's loss; under a mixed_float16 policy tf_keras wraps the optimizer in a LossScaleOptimizer
    (dynamic loss scaling) itself."""
    import tf_keras as keras

    if label.task == "classification":
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        loss, metrics = "mse", [keras.metrics.RootMeanSquaredError(name="rmse"), "mae"]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics, jit_compile=jit_compile)
