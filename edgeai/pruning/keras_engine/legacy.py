"""Returning Keras 2 files in Keras 2's own format.

The engine prunes with Keras 3, which reads legacy ``.h5`` files written by
Keras 2 / ``tf_keras``, but ``tf_keras`` cannot read the ``.h5`` Keras 3 writes.
So for such an upload the pruned model is rebuilt in ``tf_keras`` from the
original file's own configuration, with each layer's new width copied from the
Keras 3 result by name, given the Keras 3 result's weights, and saved by
``tf_keras``. The configuration was checked by the inspection before this runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

WIDTH_KEYS = ("filters", "units", "groups", "target_shape", "num_heads", "output_shape")
# Wrappers whose inner layers carry widths of their own (named in the config).
WRAPPED = ("layer", "forward_layer", "backward_layer")


def written_by_keras2(h5_path: Path) -> bool:
    """Was this ``.h5`` written by Keras 2 (``keras_version`` 2.x)?"""
    import h5py

    with h5py.File(h5_path, "r") as handle:
        version = handle.attrs.get("keras_version")
    if isinstance(version, bytes):
        version = version.decode()
    return str(version or "").startswith("2.")


def _walk(config: Any, widths: dict[str, dict[str, Any]]) -> None:
    if isinstance(config, dict):
        name = config.get("config", {}).get("name") if isinstance(config.get("config"), dict) \
            else None
        if name in widths:
            for key, value in widths[name].items():
                if key in config["config"]:
                    config["config"][key] = list(value) if key == "target_shape" else value
        for value in config.values():
            _walk(value, widths)
    elif isinstance(config, list):
        for item in config:
            _walk(item, widths)


def save_as_keras2(original_h5: Path, pruned, out_path: Path) -> None:
    """Rebuild ``pruned`` (a Keras 3 model) in tf_keras from ``original_h5``'s config
    and save it to ``out_path`` as a Keras 2 ``.h5``. Raises on any mismatch."""
    import tf_keras

    from edgeai.pruning.keras_engine.graph import iterate_layers

    original = tf_keras.models.load_model(original_h5, compile=True)
    widths = {}
    new_layers = {}
    for layer in iterate_layers(pruned):
        new_layers[layer.name] = layer
        for part in [layer, *(getattr(layer, name) for name in WRAPPED
                              if getattr(layer, name, None) is not None)]:
            config = part.get_config()
            widths[part.name] = {k: config[k] for k in WIDTH_KEYS if k in config}
    config = original.get_config()
    _walk(config, widths)
    rebuilt = original.__class__.from_config(config)
    for layer in _iterate_tf_keras(rebuilt):
        source = new_layers.get(layer.name)
        if source is not None and layer.weights:
            layer.set_weights(source.get_weights())
    if getattr(original, "optimizer", None) is not None and getattr(original, "loss", None):
        optimizer = original.optimizer.__class__.from_config(original.optimizer.get_config())
        try:
            metrics = list(original.compiled_metrics._user_metrics or [])
        except AttributeError:  # compile settings are best effort
            metrics = None
        rebuilt.compile(optimizer=optimizer, loss=original.loss, metrics=metrics)
    if Path(out_path).suffix == ".h5":
        rebuilt.save(out_path, save_format="h5")
    else:
        rebuilt.save(out_path, save_format="tf")


def _iterate_tf_keras(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _iterate_tf_keras(layer)
