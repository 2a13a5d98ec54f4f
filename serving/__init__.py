"""TF Serving protocol: codec, client, deployer and the protocol-exact kiln-model-server."""

import os

# Models logged from tf_keras only load with legacy Keras; set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
