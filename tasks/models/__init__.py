"""Models: kiln's half (inputs, preprocessing, head, loss, serving signature) around the user's body.

A model body is a function `build(inputs, hparams)`: it gets the preprocessed features as one float32
tensor `[batch, width]` and `train.hparams`, and returns the body's output tensor `[batch, units]`
(or a Keras layer/model to apply to `inputs`). Built-ins: `mlp` (tabular), `cnn` (images).
"""
