"""Custom model bodies (`train.model: file.py:function`) with layers outside the TFLite builtins: written to a
file by the tests that check a conversion is skipped with the layers named."""

CUSTOM_BODIES = '''
import tensorflow as tf
import tf_keras as keras


class Spectrum(keras.layers.Layer):
    """|FFT| of the features: TFLite's only builtin FFT is RFFT2D, so Complex and FFT need Select TF ops."""

    def call(self, x):
        return tf.abs(tf.signal.fft(tf.complex(x, tf.zeros_like(x))))


class RunningProduct(keras.layers.Layer):
    def call(self, x):
        return tf.math.cumprod(x, axis=-1)


def fft(inputs, hparams):
    return keras.layers.Dense(4, name="after")(Spectrum(name="fft_block")(inputs))


def two(inputs, hparams):
    x = RunningProduct(name="running_product")(Spectrum(name="fft_block")(inputs))
    return keras.layers.Dense(4, name="after")(x)
'''
