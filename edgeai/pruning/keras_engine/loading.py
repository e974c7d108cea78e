"""Loading by format (after inspection) and saving in the format that came in."""
from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgeai.pruning.base import PruningError
from edgeai.pruning.keras_engine import inspection, legacy

FORMATS = (".h5", ".hdf5", ".keras", ".zip")


@dataclass
class KerasFile:
    """A loaded model and how to write it back."""

    model: object
    kind: str  # "keras", "h5", "zip-keras", "zip-savedmodel"
    compile_config: dict | None
    source: Path | None = None
    graph: Any = None  # the engine's channel graph, once analysed


SKIPSET_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def cache_saving_skipsets() -> None:
    """Work around a Keras 3 bug that costs every .keras save and load: for each object
    its weight walk visits, ``saving_lib.get_attr_skipset`` builds a throwaway object to
    list the attributes to skip, and caches the set under ``saving_attr_skipset_*`` but
    looks it up under ``saving_attr_skiplist_*`` — so it is built again for every layer
    (Keras's own save of a ResNet50: 0.97 s, 0.37 s with the set found). Store each set
    under the key it is looked up by: the same sets, so the same walk. Keras keeps them
    per thread; where Keras finds its own (a fixed release) or its internals moved,
    nothing is done."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib

        for kind in SKIPSET_KINDS:
            key = f"saving_attr_skiplist_{kind}"
            if global_state.get_global_attribute(key) is None:
                skipset = saving_lib.get_attr_skipset(kind)
                if global_state.get_global_attribute(key) is None:
                    global_state.set_global_attribute(key, skipset)
    except Exception:  # noqa: BLE001 - an optimisation only
        return


def load(path: str, client_name: str, workdir: Path) -> KerasFile:
    """Inspect, then load ``path`` by the extension of ``client_name``.

    Raises PruningError (UnsafeInputError for refused content) with the formats
    supported and the name received.
    """
    import keras

    cache_saving_skipsets()
    suffix = PurePosixPath(client_name.lower()).suffix
    if suffix not in FORMATS:
        raise PruningError(f"Model files must be {', '.join(FORMATS)}; got {client_name!r}.")
    source = Path(path)
    if suffix == ".zip":
        unpacked = workdir / "unpacked"
        unpacked.mkdir(exist_ok=True)
        files = inspection.safe_extract(source, unpacked)
        keras_files = [f for f in files if f.suffix == ".keras"]
        if len(keras_files) == 1:
            inspection.inspect_keras_file(keras_files[0])
            return _load_keras3(keras_files[0], "zip-keras")
        saved = [f.parent for f in files if f.name == "saved_model.pb"]
        if len(saved) == 1:
            return _load_saved_model(saved[0], workdir)
        raise PruningError("The .zip must hold one .keras file (or a SavedModel directory); "
                           f"it holds: {', '.join(sorted(f.name for f in files)[:10])}.")
    if suffix == ".keras":
        inspection.inspect_keras_file(source)
        local = workdir / "model.keras"  # Keras decides the format by the extension
        os.symlink(source, local)  # a link: the input belongs to the server, read-only
        return _load_keras3(local, "keras")
    inspection.inspect_h5_file(source)
    local = workdir / "model.h5"
    os.symlink(source, local)
    del keras
    loaded = _load_keras3(local, "h5")
    loaded.source = local
    return loaded


def _load_saved_model(directory: Path, workdir: Path) -> KerasFile:
    """A Keras 2 SavedModel: ops checked, loaded by tf_keras, handed to Keras 3 as an .h5.

    The SavedModel's own Keras config is then inspected like any .h5's.
    """
    inspection.check_saved_model_ops(directory)
    if not (directory / "keras_metadata.pb").is_file():
        raise PruningError("The SavedModel was not written by Keras (no keras_metadata.pb); "
                           "only Keras models can be pruned.")
    import tf_keras

    try:
        original = tf_keras.models.load_model(directory, compile=True)
    except Exception as error:  # noqa: BLE001
        raise PruningError(f"tf_keras could not load the SavedModel: {type(error).__name__}: "
                           f"{str(error).splitlines()[0][:300]}") from None
    bridge = workdir / "savedmodel.h5"
    original.save(bridge, save_format="h5")
    inspection.inspect_h5_file(bridge)
    loaded = _load_keras3(bridge, "zip-savedmodel")
    loaded.source = bridge
    return loaded


def _load_keras3(path: Path, kind: str) -> KerasFile:
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=True)
    except Exception as first:  # noqa: BLE001 - retry without the training config
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as error:  # noqa: BLE001
            raise PruningError(f"Keras could not load the model: {type(error).__name__}: "
                               f"{str(error).splitlines()[0][:300]}") from first
    compile_config = None
    if getattr(model, "compiled", False):
        try:
            compile_config = model.get_compile_config()
        except Exception:  # noqa: BLE001 - compile settings are best effort
            compile_config = None
    return KerasFile(model, kind, compile_config)


def save(model, loaded: KerasFile, out_dir: str, stem: str, workdir: Path) -> str:
    """Write ``model`` in the uploaded format; return the artifact's file name."""
    if loaded.compile_config:
        try:
            model.compile_from_config(loaded.compile_config)
        except Exception:  # noqa: BLE001 - a model without its optimizer is still usable
            pass
    if loaded.kind == "h5":
        name = stem + ".h5"
        if loaded.source is not None and legacy.written_by_keras2(loaded.source):
            legacy.save_as_keras2(loaded.source, model, Path(out_dir) / name)
        else:
            model.save(os.path.join(out_dir, name))
        return name
    if loaded.kind == "keras":
        name = stem + ".keras"
        model.save(os.path.join(out_dir, name))
        return name
    name = stem + ".zip"
    if loaded.kind == "zip-savedmodel":
        directory = workdir / stem
        legacy.save_as_keras2(loaded.source, model, directory)
        with zipfile.ZipFile(os.path.join(out_dir, name), "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(directory.rglob("*")):
                if path.is_file():
                    archive.write(path, str(path.relative_to(workdir)))
    else:
        inner = workdir / "pruned.keras"
        model.save(inner)
        with zipfile.ZipFile(os.path.join(out_dir, name), "w", zipfile.ZIP_STORED) as archive:
            archive.write(inner, stem + ".keras")
    shutil.rmtree(workdir / "unpacked", ignore_errors=True)
    return name


def load_back(path: Path, workdir: Path) -> Any:
    """A saved artifact loaded the way its user loads it: ``keras.models.load_model``
    for Keras 3 files, ``tf_keras.models.load_model`` for Keras 2 ones (an .h5, or the
    SavedModel inside a .zip). Training configuration is not compiled."""
    import keras

    suffix = path.suffix.lower()
    if suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    if suffix == ".h5":
        if legacy.written_by_keras2(path):
            import tf_keras

            return tf_keras.models.load_model(path, compile=False)
        return keras.saving.load_model(path, compile=False)
    unpacked = workdir / "round-trip"
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir()
    files = inspection.safe_extract(path, unpacked)
    inner = [f for f in files if f.suffix == ".keras"]
    if inner:
        return keras.saving.load_model(inner[0], compile=False)
    import tf_keras

    saved = next(f.parent for f in files if f.name == "saved_model.pb")
    return tf_keras.models.load_model(saved, compile=False)
