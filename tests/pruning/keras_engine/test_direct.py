"""The pruned .keras file written directly, and the model every check runs on loaded
from it (keras_engine/direct.py): the clone rewrite, the save and the round trip's
second build of the same model become one write and one load.

The exactness tests (test_exactness.py) prove the shipped file itself for every coupler
(they load it with keras.saving.load_model and compare it with the original whose
pruned filters are zero); these pin what is particular to writing it directly.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from edgeai.pruning import PruneJob, PruningError
from edgeai.pruning.keras_engine import KerasPruner, direct

L = keras.layers


def _model(compiled: bool = False):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 10, 3))
    a = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn1")(a))
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.Add()([a, x])
    x = L.Conv2D(12, 3, name="conv3")(x)
    outputs = L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    if compiled:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])
        model.fit(np.random.default_rng(0).normal(size=(8, 10, 10, 3)),
                  np.zeros((8, 4)), epochs=1, verbose=0)
    return model


def _job(tmp_path: Path, model, **options) -> PruneJob:
    path = tmp_path / "net.keras"
    model.save(path)
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    return PruneJob(framework="tensorflow", percent=0.5, omitted=(), inputs={"model": str(path)},
                    input_names={"model": "net.keras"}, output_dir=str(out),
                    output_stem="tmpdirect01", options={"measure": False, **options})


def test_the_shipped_file_is_the_model_the_checks_ran_on(tmp_path):
    """No separate save, no second load: the round trip says the model was the file's,
    and the file loads as Keras loads it, narrowed, with the user's own initializers."""
    job = _job(tmp_path, _model())
    result = KerasPruner().prune(job)
    trip = result.report["verification"]["round_trip"]
    assert trip["passed"] and "the pruned model is this file" in trip["detail"], trip
    assert result.report["verification"]["exactness"]["passed"]
    assert not [w for w in result.report["warnings"] if "saver" in w]
    shipped = keras.saving.load_model(Path(job.output_dir) / result.artifact)
    assert shipped.get_layer("conv3").filters == 6 and shipped.get_layer("conv1").filters == 4
    assert shipped.get_layer("conv3").get_config()["kernel_initializer"]["class_name"] == \
        "GlorotUniform"
    assert sorted(p.name for p in Path(job.output_dir).iterdir()) == ["tmpdirect01.keras"]


def test_a_compiled_model_keeps_its_training_setup_with_fresh_optimizer_state(tmp_path):
    """As Keras's own saver writes it after compiling the pruned model: the user's
    optimizer, loss and metrics, optimizer slots of the pruned shapes; it loads
    compiled without a warning and trains."""
    job = _job(tmp_path, _model(compiled=True))
    result = KerasPruner().prune(job)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shipped = keras.saving.load_model(Path(job.output_dir) / result.artifact)
    assert isinstance(shipped.optimizer, keras.optimizers.Adam)
    assert shipped.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    shapes = {tuple(v.shape) for v in shipped.trainable_variables}
    slots = [v for v in shipped.optimizer.variables if v.shape.rank]
    assert slots and all(tuple(v.shape) in shapes for v in slots)
    assert all(not np.any(v.numpy()) for v in slots)  # fresh, as after compile
    history = shipped.fit(np.ones((4, 10, 10, 3)), np.zeros((4, 4)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_wrong_file_fails_the_job_names_the_layer_and_leaves_nothing(tmp_path, monkeypatch):
    """Two kept filters of conv3 swapped in what is written: the exactness check runs on
    the file's model, so the job fails naming conv3, and the written file is removed."""
    sliced = direct._sliced

    def swapped(model, removal):
        values = sliced(model, removal)
        kernel = model.get_layer("conv3").kernel
        value = values[id(kernel)].copy()
        value[..., [0, 1]] = value[..., [1, 0]]
        values[id(kernel)] = value
        return values

    monkeypatch.setattr(direct, "_sliced", swapped)
    job = _job(tmp_path, _model())
    with pytest.raises(PruningError) as caught:
        KerasPruner().prune(job)
    assert "first layer that differs: conv3" in str(caught.value)
    assert list(Path(job.output_dir).iterdir()) == []


def test_a_failed_direct_write_falls_back_to_the_keras_saver_and_says_so(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no room for this layout")

    monkeypatch.setattr(direct, "write", broken)
    job = _job(tmp_path, _model())
    result = KerasPruner().prune(job)
    assert any("own saver: writing it directly failed (ValueError: no room for this layout)"
               in w for w in result.report["warnings"]), result.report["warnings"]
    assert result.report["verification"]["round_trip"]["detail"] == "loaded back: keras"
    assert keras.saving.load_model(Path(job.output_dir) / result.artifact) \
        .get_layer("conv3").filters == 6


def test_a_fine_tuned_model_is_saved_again_and_loaded_back(tmp_path):
    """Fine-tuning changes the file's model in place: its file is written again by the
    saver and proven by loading it back, as for any model built in memory."""
    rng = np.random.default_rng(1)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(size=(64, 10, 10, 3)).astype("float32"),
             y=rng.integers(0, 4, 64))
    job = _job(tmp_path, _model(), finetune_epochs=1, recover=False)
    job.inputs["dataset"] = str(data)
    result = KerasPruner().prune(job)
    assert result.report["verification"]["round_trip"]["detail"] == "loaded back: keras"
    assert result.report["evaluation"]["after_finetune"] is not None


def _prune(tmp_path: Path, model) -> tuple[dict, Path]:
    job = _job(tmp_path, model)
    result = KerasPruner().prune(job)
    return result.report, Path(job.output_dir) / result.artifact


def test_a_backbone_inside_the_model_is_written_directly(tmp_path):
    """Transfer learning's shape: a functional backbone called on the model's input, a
    head on its features. The backbone keeps its input width, so the file is written
    directly, nested config and all; the exactness check ran on the file's model."""
    keras.utils.set_random_seed(5)
    image = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(image)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Conv2D(12, 3, name="body")(L.ReLU()(x))
    backbone = keras.Model(image, L.GlobalAveragePooling2D()(x), name="backbone")
    inputs = keras.Input((10, 10, 3))
    outputs = L.Dense(3, name="head")(L.Dense(6, name="neck")(backbone(inputs)))
    report, shipped = _prune(tmp_path, keras.Model(inputs, outputs))
    assert "the pruned model is this file" in report["verification"]["round_trip"]["detail"]
    assert report["verification"]["exactness"]["passed"]
    model = keras.saving.load_model(shipped)
    assert model.get_layer("backbone").get_layer("body").filters == 6
    assert model.get_layer("neck").units == 3


def test_a_nested_model_that_loses_input_channels_keeps_the_clone_rewrite(tmp_path):
    """A head sub-model reading pruned features: its Input would need narrowing, which
    the clone rewrite does; the direct write declines without a warning."""
    keras.utils.set_random_seed(6)
    features = keras.Input((8,))
    head = keras.Model(features, L.Dense(3, name="out")(L.Dense(5, name="mid")(features)),
                       name="head")
    inputs = keras.Input((10, 10, 3))
    x = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, name="conv")(inputs))
    report, shipped = _prune(tmp_path, keras.Model(inputs, head(x)))
    assert report["verification"]["round_trip"]["detail"] == "loaded back: keras"
    assert not [w for w in report["warnings"] if "saver" in w]
    assert keras.saving.load_model(shipped).get_layer("conv").filters == 4


def test_which_files_and_models_are_written_directly():
    assert direct.eligible(_model(), "h5") == "a h5 file is written by its own saver"
    assert direct.eligible(_model(), "keras") is None

    class Custom(keras.Model):
        def call(self, x):
            return x

    assert direct.eligible(Custom(), "keras") == "a Custom model"


def test_the_skipset_workaround_gives_keras_the_sets_it_builds_itself(tmp_path):
    """loading.cache_saving_skipsets stores, under the key Keras looks them up by, the
    very sets Keras builds for each walk: in a thread of its own (Keras keeps them per
    thread), each set equals the one Keras builds without it, and a model saved with
    the sets cached is the same file, variable for variable."""
    import threading

    import h5py
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    from edgeai.pruning.keras_engine import loading

    model = _model(compiled=True)
    found: dict = {}

    def walk(cached: bool) -> None:
        built = {kind: saving_lib.get_attr_skipset(kind) for kind in loading.SKIPSET_KINDS}
        if cached:
            loading.cache_saving_skipsets()
            found["sets"] = {kind: (global_state.get_global_attribute(
                f"saving_attr_skiplist_{kind}"), built[kind]) for kind in built}
        model.save(tmp_path / f"{cached}.keras")

    for cached in (False, True):
        thread = threading.Thread(target=walk, args=(cached,))
        thread.start()
        thread.join()
    assert all(got == built for got, built in found["sets"].values())

    def variables(path):
        import io
        import zipfile

        with zipfile.ZipFile(path) as archive, \
                h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as handle:
            out = {}
            handle.visititems(lambda name, item: out.__setitem__(name, item[()])
                              if isinstance(item, h5py.Dataset) else None)
            return out

    plain, cached = variables(tmp_path / "False.keras"), variables(tmp_path / "True.keras")
    assert plain.keys() == cached.keys() and len(plain) > 10
    assert all(np.array_equal(plain[name], cached[name]) for name in plain)
