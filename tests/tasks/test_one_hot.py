"""kiln's one-hot layers answer exactly as the Keras layers they replace (StringLookup, IntegerLookup and
CategoryEncoding, one-hot with one OOV index), and survive what models go through: clone_model and a
SavedModel loaded back with tf_keras."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tasks.features import MISSING_INT
from tasks.models.one_hot import IndexOneHot, VocabularyOneHot

STRINGS = ["basic", "pro", "Zürich", ""]
STRING_VALUES = ["basic", "pro", "Zürich", "", "premium", "[UNK]", "BASIC", " basic"]
# 0..3 is the vocabulary the converter would rewrite into ONE_HOT if the layer compared with EQUAL.
INTEGERS = [0, 1, 2, 3]
INTEGER_VALUES = [0, 1, 2, 3, 4, -1, MISSING_INT, 2**32, 2**32 + 1, 2**63 - 1]
BOUNDARIES = [0.0, 1.0, 1.0, 2.5]  # quantiles of a skewed column repeat
NUMBERS = [-1.0, 0.0, 0.5, 1.0, 1.5, 2.5, 3.0, float("nan"), float("inf"), float("-inf")]


def column(values: list, dtype: str):
    return tf.constant(np.array(values, dtype=object if dtype == "string" else dtype).reshape(-1, 1), dtype)


def test_strings_one_hot_like_string_lookup() -> None:
    keras_layer = keras.layers.StringLookup(vocabulary=STRINGS, num_oov_indices=1, output_mode="one_hot")
    values = column(STRING_VALUES, "string")
    assert np.array_equal(VocabularyOneHot(STRINGS)(values).numpy(), keras_layer(values).numpy())


def test_integers_one_hot_like_integer_lookup() -> None:
    for vocabulary in (INTEGERS, [7, 3, 2**40, -5]):
        keras_layer = keras.layers.IntegerLookup(vocabulary=vocabulary, num_oov_indices=1, oov_token=MISSING_INT,
                                                 output_mode="one_hot")
        values = column(INTEGER_VALUES + [7, 2**40, -5], "int64")
        assert np.array_equal(VocabularyOneHot(vocabulary)(values).numpy(), keras_layer(values).numpy())


def test_buckets_one_hot_like_category_encoding() -> None:
    buckets = keras.layers.Discretization(bin_boundaries=BOUNDARIES)(column(NUMBERS, "float32"))
    keras_layer = keras.layers.CategoryEncoding(num_tokens=len(BOUNDARIES) + 1, output_mode="one_hot")
    assert np.array_equal(IndexOneHot(len(BOUNDARIES) + 1)(buckets).numpy(), keras_layer(buckets).numpy())


def test_an_empty_vocabulary_puts_every_value_out_of_vocabulary() -> None:
    assert np.array_equal(VocabularyOneHot([])(column(["a", ""], "string")).numpy(), [[1.0], [1.0]])


def test_a_vocabulary_holding_a_value_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="the vocabulary holds a value twice"):
        VocabularyOneHot(["a", "b", "a"], name="plan_lookup")


def _model():
    plan = keras.Input(shape=(1,), dtype="string", name="plan")
    code = keras.Input(shape=(1,), dtype="int64", name="code")
    parts = [VocabularyOneHot(STRINGS, name="plan_lookup")(plan),
             IndexOneHot(5, name="code_one_hot")(code)]
    return keras.Model([plan, code], keras.layers.Dense(2)(keras.layers.Concatenate()(parts)))


def test_the_layers_survive_clone_model_and_a_saved_model_loaded_back(tmp_path) -> None:
    model = _model()
    inputs = [column(STRING_VALUES, "string"), column([0, 4, 5, -1, 2, 3, 1, MISSING_INT], "int64")]
    expected = model(inputs).numpy()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    model.save(str(tmp_path / "saved"), save_format="tf")
    loaded = keras.models.load_model(str(tmp_path / "saved"))
    for copy in (clone, loaded):
        assert {type(copy.get_layer(n)) for n in ("plan_lookup", "code_one_hot")} == \
            {VocabularyOneHot, IndexOneHot}
        assert copy.get_layer("plan_lookup").vocabulary == STRINGS
        assert np.allclose(copy(inputs).numpy(), expected)
