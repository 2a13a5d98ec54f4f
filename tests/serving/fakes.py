"""A servable that loads nothing and version folders that need no model: the model manager's logic in tests
without TensorFlow models."""

from __future__ import annotations

import os
import time

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.servable import Servable


class FakeServable(Servable):
    runtime = "TF1"
    signatures: dict = {}
    signature_defs: dict = {}

    def __init__(self, path: str):
        self.path = path


def write_version(base, version: int) -> None:
    folder = base / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    old = time.time() - 5  # already stable: discovery waits for files that stopped changing
    os.utime(folder / "saved_model.pb", (old, old))


def config_for(base, policy: str = "") -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" {policy} }} }}',
        model_server_config_pb2.ModelServerConfig(),
    )
