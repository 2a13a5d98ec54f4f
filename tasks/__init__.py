"""kiln pipeline steps: plain functions, no Airflow imports."""

import os

# tfmot and MultiWorkerMirroredStrategy need Keras 2 (tf_keras); TF reads this lazily on first
# access of tf.keras, so it must be set before any submodule imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
