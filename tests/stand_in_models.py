"""Stand-in models with the digits model's serving contract (pixels [batch, 64] -> probabilities, digit), for
tests of serving and the registry that need a SavedModel but not a trained one."""

from __future__ import annotations

import numpy as np

ROW = [float(i % 17) for i in range(64)]  # one row of pixels


def save_pixels_model(path, seed: int) -> None:
    """A stand-in classifier with the serving contract of the digits model (pixels -> probabilities, digit)."""
    import tensorflow as tf

    class Classifier(tf.Module):
        def __init__(self):
            self.weights = tf.Variable(np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
        def serve(self, pixels):
            probabilities = tf.nn.softmax(tf.matmul(pixels, self.weights) / 100.0)
            return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}

    model = Classifier()
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
