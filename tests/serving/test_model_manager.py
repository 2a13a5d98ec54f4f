"""The model manager's version transitions, without a server or a model (fake servables on local folders)."""

from __future__ import annotations

import shutil

from tensorflow_serving.apis import get_model_status_pb2

from serving.model_server.manager import ManagerOptions, ModelManager
from tests.serving.fakes import FakeServable, config_for, write_version

State = get_model_status_pb2.ModelVersionStatus.State


def states(manager: ModelManager) -> dict[int, int]:
    return {s.version: s.state for s in manager.status("m").model_version_status}


def test_a_loaded_version_stays_while_its_folder_is_rewritten_and_goes_with_the_folder(tmp_path):
    """TF Serving aspires every numeric folder, so a loaded version whose folder is being uploaded again (its
    saved_model.pb not there yet) stays loaded; kiln-model-server only loads complete folders, and used to
    unload the version meanwhile (issue 24)."""
    manager = ModelManager(ManagerOptions(file_system_poll_wait_seconds=0), load=FakeServable)
    write_version(tmp_path, 1)
    manager.reload_config(config_for(tmp_path, "model_version_policy { specific { versions: 1 } }"), initial=True)
    assert states(manager) == {1: State.AVAILABLE}

    (tmp_path / "1" / "saved_model.pb").unlink()  # the folder is there, its model file not (yet)
    manager.poll_once()
    assert states(manager) == {1: State.AVAILABLE} and manager.resolve("m")[0] == 1

    shutil.rmtree(tmp_path / "1")  # the folder is gone: unloaded, kept in the history as END
    manager.poll_once()
    assert states(manager) == {1: State.END}

    write_version(tmp_path, 1)
    manager.poll_once()
    assert states(manager) == {1: State.AVAILABLE}
