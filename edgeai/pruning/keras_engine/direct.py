"""The pruned model written straight to its ``.keras`` file, then loaded from it.

The clone rewrite (:mod:`.rewrite`) builds the pruned model in memory (Keras calling
175 layers for a ResNet50), the save serialises it, and the round trip builds it a
second time from the file: the same model built twice. Here the file is written
from the original's own config with the narrowed widths and from the sliced weights,
through Keras's own weight walk (the original's, whose layout the pruned model
shares: same layers, same variables, other shapes), and the pruned model is that file
loaded as a user loads it. Every later step runs on the file's model, so the
exactness check proves the shipped file itself.

Only for Keras 3 files whose model is a functional or Sequential model of layers and
of such models nested (a backbone inside, as transfer learning builds them) whose
inputs keep their widths, and no layer keeps assets: the rest keep the clone rewrite.
"""
from __future__ import annotations

import datetime
import json
import zipfile
from pathlib import Path
from typing import Any

import keras

from edgeai.pruning.keras_engine.graph import iterate_layers
from edgeai.pruning.keras_engine.rewrite import Removal, _narrow, sliced_weights


def eligible(model: Any, kind: str, removal: Removal | None = None) -> str | None:
    """None when ``model`` can be written directly (given ``removal``, the channels it
    loses); else why not."""
    from keras.src.models.functional import Functional

    if kind != "keras":
        return f"a {kind} file is written by its own saver"
    if type(model) not in (Functional, keras.Sequential):
        return f"a {type(model).__name__} model"
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            record = removal.graph.records.get(id(layer)) if removal is not None else None
            if removal is not None and record is not None and \
                    any(not removal.alive(m).all() for m in record.in_maps or ()):
                return f"nested model {layer.name} loses input channels"
            why = eligible(layer, kind, removal)
            if why is not None:
                return why
        elif hasattr(layer, "save_assets"):
            return f"layer {layer.name} keeps assets"
    return None


def write(model: Any, removal: Removal, path: Path, compile_config: dict | None) -> None:
    """Write the pruned ``.keras`` file of ``model`` (the original) to ``path``."""
    from keras.src.saving import saving_lib
    from keras.src.saving.serialization_lib import ObjectSharingScope, serialize_keras_object

    substitutes = _sliced(model, removal)
    # The optimizer writes its variables' values, not the variables: by position.
    by_position = {"optimizer": _fresh_optimizer(model, substitutes, compile_config)} \
        if compile_config and getattr(model, "optimizer", None) is not None else {}
    with ObjectSharingScope():
        config = serialize_keras_object(model)
    _narrow_config(model, config, removal)
    metadata = {"keras_version": keras.__version__,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}

    class Store(saving_lib.H5IOStore):
        path = ""

        def make(self, path: str, metadata: dict | None = None) -> Any:
            self.path = path
            return super().make(path, metadata)

        def __setitem__(self, key: str, value: Any) -> None:
            if self.path in by_position:
                value = by_position[self.path][int(key)]
            super().__setitem__(key, substitutes.get(id(value), value))

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", json.dumps(config))
        store = Store("model.weights.h5", archive=archive, mode="w")
        try:
            saving_lib._save_state(model, weights_store=store, assets_store=None,
                                   inner_path="", visited_saveables=set())
        finally:
            store.close()


def _sliced(model: Any, removal: Removal) -> dict[int, Any]:
    """id(variable) -> its value in the pruned model, for every variable that changes."""
    records = removal.graph.records
    substitutes: dict[int, Any] = {}
    for layer in iterate_layers(model):
        weights = sliced_weights(layer, records.get(id(layer)), removal) \
            if layer.weights else None
        if weights is not None:
            for variable, value in zip(layer.weights, weights, strict=True):
                substitutes[id(variable)] = value
    return substitutes


def _fresh_optimizer(model: Any, substitutes: dict[int, Any],
                     compile_config: dict) -> list[Any]:
    """The optimizer state Keras's saver writes for the clone rewrite (compiled from the
    user's training configuration, built on the pruned variables: fresh), to be written
    in place of the original's, variable by variable."""
    optimizer = keras.optimizers.get(compile_config["optimizer"])
    stand_ins = [keras.Variable(keras.ops.zeros(substitutes[id(v)].shape if id(v) in
                                                substitutes else v.shape, v.dtype),
                                dtype=v.dtype, name=v.name)
                 for v in model.trainable_variables]
    optimizer.build(stand_ins)
    old, new = model.optimizer.variables, optimizer.variables
    if len(old) != len(new):
        raise ValueError(f"optimizer state: {len(new)} variables where the original has "
                         f"{len(old)}")
    return [variable.numpy() for variable in new]


def _narrow_config(model: Any, config: dict, removal: Removal) -> None:
    """Give each layer entry of the serialised ``config`` its pruned widths. Every layer
    is built by the loader calling it, at its new input shape (as the clone rewrite
    builds them): the build configs, which hold the old shapes, are dropped."""
    records = removal.graph.records
    layers = {layer.name: layer for layer in model.layers}
    for entry in config["config"]["layers"]:
        layer = layers.get(entry.get("name") or entry["config"].get("name"))
        if isinstance(layer, keras.Model):  # its inputs keep their widths (eligible)
            _narrow_config(layer, entry, removal)
            continue
        entry.pop("build_config", None)
        record = records.get(id(layer)) if layer is not None else None
        if record is not None:
            _narrow(layer, entry["config"], record, removal)
