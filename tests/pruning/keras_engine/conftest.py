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
        artifact = out / result.artifact
        model = keras.saving.load_model(artifact) if artifact.suffix != ".zip" else None
        return result, model

    return run
