"""The inspection layer alone: configs and archives refused before any loader runs."""
from __future__ import annotations

import io
import json
import zipfile

import keras
import pytest

from edgeai.pruning import PruningError, UnsafeInputError
from edgeai.pruning.keras_engine import inspection


def lambda_model(canary):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda x: (open(canary, "w").write("ran"), x)[1])(inp)
    return keras.Model(inp, keras.layers.Dense(2)(out))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layers_are_refused_and_never_run(prune_file, tmp_path, suffix):
    canary = tmp_path / "canary"
    path = tmp_path / f"lambda{suffix}"
    lambda_model(str(canary)).save(path)
    canary.unlink(missing_ok=True)  # building the model ran it once, in this test
    with pytest.raises(UnsafeInputError, match="Lambda"):
        prune_file(path, 0.5)
    assert not canary.exists()


def keras_archive(tmp_path, config):
    path = tmp_path / "crafted.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    return path


@pytest.mark.parametrize("config, needle", [
    ({"module": "os", "class_name": "system", "config": {}}, "os.system"),
    ({"module": "keras", "class_name": "Functional",
      "config": {"layers": [{"module": "keras.layers", "class_name": "TFSMLayer",
                             "config": {"filepath": "/etc"}}]}}, "TFSMLayer"),
    ({"module": "keras", "class_name": "Sequential", "config": {"safe_mode": False}},
     "safe_mode"),
    ({"module": "keras.layers", "class_name": "Dense",
      "registered_name": "evil>Backdoor", "config": {}}, "evil>Backdoor"),
    ({"module": "keras.layers", "class_name": "TorchModuleWrapper", "config": {}},
     "TorchModuleWrapper"),
    ({"class_name": "__lambda__", "config": {"code": "YWJj"}}, "__lambda__"),
])
def test_crafted_configs_are_refused(tmp_path, config, needle):
    with pytest.raises(UnsafeInputError, match=needle.replace(">", ".")):
        inspection.inspect_keras_file(keras_archive(tmp_path, config))


def test_zip_slip_link_and_bomb_are_refused(tmp_path):
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../escaped.txt", "x")
    with pytest.raises(UnsafeInputError, match="outside"):
        inspection.safe_extract(slip, tmp_path / "out1")
    assert not (tmp_path.parent / "escaped.txt").exists()

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("innocent")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeInputError, match="link"):
        inspection.safe_extract(link, tmp_path / "out2")

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (64 << 20))
    with pytest.raises(UnsafeInputError, match="too much data"):
        inspection.safe_extract(bomb, tmp_path / "out3")


@pytest.mark.parametrize("name, payload", [
    ("garbage.h5", b"\x00\x01not hdf5"), ("garbage.keras", b"PK\x03\x04broken"),
    ("garbage.zip", io.BytesIO(b"nope").getvalue()),
])
def test_random_bytes_give_a_clean_error(prune_file, tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(PruningError):
        prune_file(path, 0.4)
