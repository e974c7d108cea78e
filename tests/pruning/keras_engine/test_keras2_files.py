"""Files written by Keras 2 (tf_keras): pruned and returned loadable by tf_keras."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import pytest

BUILD = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tf_keras as k
    m = k.Sequential([k.layers.Conv2D(16, 3, activation="relu", input_shape=(28, 28, 1)),
                      k.layers.BatchNormalization(), k.layers.MaxPooling2D(),
                      k.layers.Conv2D(32, 3), k.layers.Flatten(),
                      k.layers.Dense(20, activation="relu"),
                      k.layers.Dense(10, activation="softmax")])
    m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    m.save(sys.argv[1], save_format=sys.argv[2])
""")

CHECK = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tf_keras as k
    m = k.models.load_model(sys.argv[1])
    assert m.predict(np.zeros((2, 28, 28, 1)), verbose=0).shape == (2, 10)
    print([l.filters for l in m.layers if hasattr(l, "filters")], m.optimizer is not None)
""")


def run(code, *args, cwd=None):
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_keras2_h5_comes_back_as_keras2_h5(prune_file, tmp_path):
    path = tmp_path / "k2.h5"
    run(BUILD, path, "h5")
    result, _ = prune_file(path, 0.4)
    artifact = tmp_path / "work" / "out" / result.artifact
    assert run(CHECK, artifact).strip() == "[10, 19] True"


@pytest.mark.slow
def test_keras2_savedmodel_zip_comes_back_as_savedmodel_zip(prune_file, tmp_path):
    saved = tmp_path / "export" / "k2_model"
    run(BUILD, saved, "tf")
    archive = tmp_path / "k2_model.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in saved.rglob("*"):
            handle.write(path, str(path.relative_to(saved.parent)))
    result, _ = prune_file(archive, 0.4)
    returned = tmp_path / "work" / "out" / result.artifact
    unpacked = tmp_path / "returned"
    with zipfile.ZipFile(returned) as handle:
        handle.extractall(unpacked)
        top = {name.split("/")[0] for name in handle.namelist()}
    assert len(top) == 1
    assert run(CHECK, unpacked / top.pop()).strip() == "[10, 19] True"


TIME_DISTRIBUTED = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tf_keras as k
    inputs = k.Input((5, 12))
    x = k.layers.TimeDistributed(k.layers.Dense(16, activation="relu"), name="td")(inputs)
    x = k.layers.TimeDistributed(k.layers.Dense(8), name="td2")(x)
    model = k.Model(inputs, k.layers.Dense(3)(k.layers.Flatten()(x)))
    model.save(sys.argv[1], save_format="h5")
""")


def test_keras2_time_distributed_h5_comes_back_as_keras2_h5(prune_file, tmp_path):
    """A TimeDistributed(Dense) of a tf_keras .h5 is pruned (its wrapped layer's width
    is carried into the Keras 2 rebuild) and tf_keras loads the result."""
    path = tmp_path / "td.h5"
    run(TIME_DISTRIBUTED, path)
    result, _ = prune_file(path, 0.5)
    widths = {row["name"]: row["channels_after"] for row in result.report["layers"]}
    assert widths["td"] == 8 and widths["td2"] == 4
    out = tmp_path / "work" / "out" / result.artifact
    shape = run(textwrap.dedent("""
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import numpy as np, tf_keras as k
        m = k.models.load_model(sys.argv[1])
        print(m.get_layer("td").layer.units, m.predict(np.zeros((2, 5, 12)), verbose=0).shape)
    """), out)
    assert shape.split() == ["8", "(2,", "3)"]
