"""kiln's bottom layer: what every other package may use and which uses none of them (object storage and
local paths alike, the download cache, process groups).

It is also the one place that makes kiln's processes use Keras 2. tfmot rejects Keras 3 models, Keras 3's
`model.fit` fails under MultiWorkerMirroredStrategy, and an MLflow model logged from tf_keras loads only with
legacy Keras; TensorFlow reads `TF_USE_LEGACY_KERAS` when `tf.keras` is first touched. So importing this
package sets it for this process (every kiln package imports `common` first), and the processes kiln starts —
training workers, their pods, the embedded stack's services, the benchmarks' servers — get `LEGACY_KERAS_ENV`
in their environment. Processes kiln does not start set it themselves: the Makefile (shell tools), the image
(infra/Dockerfile) and the Helm values.
"""

import os
from types import MappingProxyType

LEGACY_KERAS_ENV = MappingProxyType({"TF_USE_LEGACY_KERAS": "1"})

os.environ.update(LEGACY_KERAS_ENV)
