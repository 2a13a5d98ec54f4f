"""One-hot layers for categories and buckets that convert to TFLite builtins only.

Keras' StringLookup, IntegerLookup and CategoryEncoding one-hot with `DenseBincount`, and IntegerLookup
finds values in an int64 hash table: neither is a TFLite builtin, so a model using them needs Select TF
ops, which LiteRT's interpreter here does not include. These layers give the same answers with
comparisons against a constant (EQUAL, GREATER_EQUAL, LESS_EQUAL, LOGICAL_AND, REDUCE_MAX, CAST),
which LiteRT runs for strings and int64 alike; the one-hot values are 0/1 floats after a CAST, so
full-integer quantization leaves the comparisons alone and represents the one-hot values exactly.

This module imports tf_keras: import it only where a model is built or loaded. Importing it registers
the layers (`kiln>...`), so `keras.models.load_model` and tfmot's `quantize_apply` rebuild them.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


def equals(values: Any, candidates: Any) -> Any:
    """`values == candidates`, broadcast ([batch, 1] against [n] -> [batch, n]).

    Integers are compared as `>= and <=`: the converter rewrites EQUAL against 0, 1, ..., n-1 (bucket
    indices, or an integer vocabulary that happens to be one) into ONE_HOT, which casts int64 values to
    int32 (so MISSING_INT and 2**32 land on category 0) and cannot take quantized on/off values.
    """
    if values.dtype == tf.string:
        return tf.equal(values, candidates)
    return tf.logical_and(tf.greater_equal(values, candidates), tf.less_equal(values, candidates))


@keras.saving.register_keras_serializable(package="kiln")
class VocabularyOneHot(keras.layers.Layer):
    """A string or integer category [batch, 1] as one-hot [batch, 1 + len(vocabulary)]: index 0 for a
    value outside the vocabulary, then the vocabulary in order (StringLookup's and IntegerLookup's
    `num_oov_indices=1, output_mode="one_hot"` layout)."""

    def __init__(self, vocabulary: list[str] | list[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.vocabulary = list(vocabulary)
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError(f"{self.name}: the vocabulary holds a value twice")

    def call(self, inputs: Any) -> Any:
        if not self.vocabulary:  # every value is out of vocabulary
            return tf.ones([tf.shape(inputs)[0], 1], tf.float32)
        matches = tf.cast(equals(inputs, tf.constant(self.vocabulary, inputs.dtype)), tf.float32)
        out_of_vocabulary = 1.0 - tf.reduce_max(matches, axis=-1, keepdims=True)
        return tf.concat([out_of_vocabulary, matches], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary": self.vocabulary}


@keras.saving.register_keras_serializable(package="kiln")
class IndexOneHot(keras.layers.Layer):
    """An index [batch, 1] in [0, depth) as one-hot [batch, depth] (CategoryEncoding's "one_hot")."""

    def __init__(self, depth: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.depth = int(depth)

    def call(self, inputs: Any) -> Any:
        return tf.cast(equals(inputs, tf.range(self.depth, dtype=inputs.dtype)), tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "depth": self.depth}
