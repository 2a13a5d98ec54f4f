"""`TransformGraph`: the preprocessing adapted on the train split (`preprocessing.json`).

The apply phase lives in the model (Keras preprocessing layers rebuilt from this state), so the server
receives raw features and training and serving cannot skew.
"""

from __future__ import annotations

import fsspec

from tasks.artifacts.base import ArtifactType, Properties
from tasks.features import Preprocessing

PREPROCESSING_FILE = "preprocessing.json"


class TransformProperties(Properties):
    num_examples: int
    served_features: list[str]
    feature_kinds: dict[str, str]


class TransformGraph(ArtifactType[TransformProperties]):
    KIND = "TransformGraph"
    Properties = TransformProperties

    def preprocessing(self) -> Preprocessing:
        with fsspec.open(self.path(PREPROCESSING_FILE), "r") as fh:
            return Preprocessing.model_validate_json(fh.read())
