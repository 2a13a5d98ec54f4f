"""Artifact kinds: one module each (name, folder layout, typed properties, readers); `base` holds the rest.

Steps import the kinds they read and write from here, never each other's modules.
"""

from tasks.artifacts.base import ArtifactError, ArtifactType, Manifest, Output, Properties, read_manifest

__all__ = ["ArtifactError", "ArtifactType", "Manifest", "Output", "Properties", "read_manifest"]
