"""TF Serving protocol: codec, client, deployer and the protocol-exact kiln-model-server."""

import common  # noqa: F401 - first: models logged from tf_keras load only with TF_USE_LEGACY_KERAS
