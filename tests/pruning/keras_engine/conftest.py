"""Helpers for Keras engine tests: run the real engine on a real saved file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def prune_file(tmp_path):
    """``prune_file(path, percent, omitted=())`` -> (result, loaded pruned model)."""
    from edgeai.pruning import PruneJob
    from edgeai.pruning.keras_engine import KerasPruner

    def run(path: Path, percent: float, omitted=(), name=None):
        import keras

        out = tmp_path / "work" / "out"
        out.mkdir(parents=True, exist_ok=True)
        job = PruneJob(framework="tensorflow", percent=percent, omitted=tuple(omitted),
                       inputs={"model": str(path)}, input_names={"model": name or path.name},
                       output_dir=str(out), output_stem="tmptest0001", options={})
        result = KerasPruner().prune(job)
        # A plain model's file is written directly (keras_engine/direct.py); where that
        # fails the job falls back to Keras's saver and says so: no test model may.
        assert not [w for w in result.report["warnings"] if "own saver" in w], \
            result.report["warnings"]
        artifact = out / result.artifact
        model = None
        if artifact.suffix != ".zip" and not result.artifact.endswith(".h5"):
            model = keras.saving.load_model(artifact)
        elif artifact.suffix == ".h5":
            model = _maybe_load(artifact)
        return result, model

    return run


def _maybe_load(path):
    """Load an .h5 result with Keras 3; a Keras 2 result (for tf_keras) gives None."""
    import h5py
    import keras

    with h5py.File(path, "r") as handle:
        version = handle.attrs.get("keras_version")
    version = version.decode() if isinstance(version, bytes) else str(version)
    return keras.saving.load_model(path) if not version.startswith("2.") else None
