"""Model compression with tensorflow-model-optimization and the TFLite converter, measured with LiteRT.

`variants` names what can be built, `tuning` does tfmot's part (pruning, quantization-aware training,
pruning-preserving QAT; run inside the training workers), `tflite` converts and measures.
"""
