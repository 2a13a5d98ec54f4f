"""The serving contract: a SavedModel whose `serving_default` takes the raw features by name.

Inputs: one tensor per served feature, `[batch]` (or `[batch, k]` for a vector feature).
Outputs, classification: `probabilities` float32 [batch, classes], `class_id` int64 [batch] and
`class` [batch], the label's own value (string, int64 or bool). Regression: `prediction` float32 [batch].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.features import LabelSpec, Preprocessing
from tasks.models.assemble import PREDICTION, PROBABILITIES

SIGNATURE = "serving_default"
CLASS_ID = "class_id"
CLASS = "class"


def output_names(label: LabelSpec) -> list[str]:
    return [PROBABILITIES, CLASS_ID, CLASS] if label.task == "classification" else [PREDICTION]


def serving_function(model: Any, preprocessing: Preprocessing) -> Any:
    """The concrete `serving_default` function for `model`."""
    import tensorflow as tf

    label = preprocessing.label
    specs = {f.name: tf.TensorSpec([None, *f.shape], tf.as_dtype(f.dtype), name=f.name)
             for f in preprocessing.features}
    if label.task == "classification":
        class_dtype = {"string": tf.string, "bool": tf.bool}.get(label.value_type, tf.int64)
        classes = tf.constant(label.classes, class_dtype)

        @tf.function
        def serve(**features: Any) -> dict[str, Any]:
            probabilities = model(features, training=False)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {PROBABILITIES: probabilities, CLASS_ID: class_id, CLASS: tf.gather(classes, class_id)}
    else:

        @tf.function
        def serve(**features: Any) -> dict[str, Any]:
            return {PREDICTION: tf.squeeze(model(features, training=False), axis=-1)}

    return serve.get_concrete_function(**specs)


def export_saved_model(model: Any, preprocessing: Preprocessing, path: str | Path) -> Path:
    """Write a Keras-loadable SavedModel whose `serving_default` is the serving contract."""
    path = Path(path)
    model.save(str(path), save_format="tf", include_optimizer=False,
               signatures={SIGNATURE: serving_function(model, preprocessing)})
    return path


def load_serving_function(saved_model_dir: str | Path) -> Any:
    """The `serving_default` concrete function: call it as fn(**inputs) -> dict of tensors."""
    import tensorflow as tf

    from common.storage import localize

    loaded = tf.saved_model.load(str(localize(saved_model_dir)))  # a URL: from the local cache
    fn = loaded.signatures[SIGNATURE]
    fn._kiln_keepalive = loaded  # the function dies with the loaded object otherwise
    return fn


def predict(saved_model_dir: str | Path, inputs: dict[str, Any], batch_size: int = 1024) -> dict[str, Any]:
    """All outputs of the serving signature (what the server will run) over numpy inputs."""
    import numpy as np
    import tensorflow as tf

    fn = load_serving_function(saved_model_dir)
    specs = fn.structured_input_signature[1]
    size = len(next(iter(inputs.values())))
    chunks: dict[str, list[Any]] = {}
    for start in range(0, size, batch_size):
        batch = {name: tf.constant(values[start:start + batch_size], specs[name].dtype)
                 for name, values in inputs.items()}
        for name, value in fn(**batch).items():
            chunks.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
