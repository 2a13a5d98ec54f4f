from __future__ import annotations

import numpy as np

from tasks import ingest, transform, validate
from tasks.artifacts import read_artifact


def test_mean_and_variance_equal_numpy_over_the_train_split(tiny_digits_csv, make_config, ctx) -> None:
    config = make_config(tiny_digits_csv)
    examples = ingest.run(config, ctx)["examples"]
    schema = validate.run(config, ctx, examples=examples)["schema"]
    uri = transform.run(config, ctx, examples=examples, schema=schema)["transform"]

    stats = transform.load_normalization(uri)
    train_features, _ = ingest.load_split(examples, "train")
    np.testing.assert_allclose(stats["mean"], train_features.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["variance"], train_features.var(axis=0), rtol=1e-5, atol=1e-9)
    assert stats["feature_columns"] == [f"pixel_{i}" for i in range(64)]
    assert read_artifact(uri, "TransformGraph").properties["num_examples"] == len(train_features)
