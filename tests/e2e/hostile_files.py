"""Builders of hostile uploads for the end-to-end hostile-input suite.

Every builder that carries code makes that code write a *canary* file when it
runs. The canary lives in a folder the sandbox user may write to, so a canary
that does not exist after a job proves the code did not run (rather than that
it ran and was denied the write).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import textwrap
import zipfile
from pathlib import Path

from tests.e2e.guide import GUIDE_NET_SOURCE


def make_canary_dir(path: Path) -> Path:
    """Create ``path`` writable by anyone (the sandbox runs as ``nobody``)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o1777)
    return path


class CanaryWriter:
    """Unpickling an instance runs ``exec`` of code that writes ``canary``."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (exec, (f"open({self.canary!r}, 'w').write('pwned')",))


def write_pickle_bomb(path: Path, canary: Path, legacy: bool = False) -> Path:
    """A ``torch.save`` file whose unpickling writes ``canary`` (``legacy``: the pre-1.6
    non-zip format).

    It wraps the payload in a dict next to a real tensor, the way a poisoned
    state_dict or dataset would look.
    """
    import torch

    torch.save({"conv1.weight": torch.zeros(1), "payload": CanaryWriter(canary)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def write_raw_pickle_bomb(path: Path, canary: Path) -> Path:
    """A plain ``pickle.dumps`` (not a torch zip) whose unpickling writes ``canary``."""
    path.write_bytes(pickle.dumps(CanaryWriter(canary), protocol=2))
    return path


def write_npz_object_bomb(path: Path, canary: Path) -> Path:
    """An ``.npz`` whose ``x`` is an object array: loading it with pickles allowed writes
    ``canary``."""
    import numpy as np

    payload = np.empty(1, dtype=object)
    payload[0] = CanaryWriter(canary)
    with open(path, "wb") as handle:
        np.savez(handle, x=payload, y=np.zeros(1))
    return path


def safetensors_lying_header(claimed: int = 1 << 40) -> bytes:
    """A ``.safetensors`` whose 8-byte header length claims ``claimed`` bytes."""
    return claimed.to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [1], ' \
        b'"data_offsets": [0, 99999999999]}}'


def _lambda_model(canary: Path):
    """A small functional Keras model with a Lambda layer that writes ``canary``."""
    import keras

    target = str(canary)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.Lambda(lambda t: (open(target, "w").write("x"), t)[1], name="evil")(x)
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs)


def write_keras_lambda(path: Path, canary: Path) -> Path:
    """Save a model with a canary-writing ``Lambda`` (``.keras`` or legacy ``.h5`` by suffix).

    Building the model runs the lambda once here, in the test process, so the
    canary is removed after saving.
    """
    model = _lambda_model(canary)
    model.save(path)
    canary.unlink(missing_ok=True)
    return path


def write_plain_keras(path: Path) -> Path:
    """A harmless small ``.keras`` model (Dense 8 -> 4 -> 2) to tamper with."""
    import keras

    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, activation="relu", name="dense")(inputs)
    outputs = keras.layers.Dense(2, name="out")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def rewrite_keras_config(source: Path, dest: Path, edit) -> Path:
    """Copy the ``.keras`` zip ``source`` to ``dest`` with ``config.json`` replaced by
    ``edit(config)`` (which changes the dict in place)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    return dest


def config_os_system(config: dict) -> None:
    """Make the first Dense layer claim to be ``os.system``."""
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["module"] = "os"
            layer["class_name"] = "system"
            layer["registered_name"] = None
            return
    raise AssertionError("no Dense layer in config")


def config_unsafe_mode(config: dict) -> None:
    """Switch unsafe deserialisation on from inside the file."""
    config["safe_mode"] = False
    config["config"]["safe_mode"] = False


def write_zip_slip(path: Path, escape_to: Path) -> Path:
    """A zip whose entries climb out of the unpack folder: a deep ``../`` chain and
    the absolute path ``escape_to``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/" + "../" * 12 + "tmp/zipslip-canary", b"escaped")
        archive.writestr("../../canary", b"escaped")
        info = zipfile.ZipInfo("/" + str(escape_to).lstrip("/"))
        archive.writestr(info, b"escaped")
    return path


def write_zip_bomb(path: Path, unpacked_mb: int = 1024) -> Path:
    """A ~1 MB zip holding ``model.keras``: ``unpacked_mb`` MiB of zeros."""
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("model.keras", "w", force_zip64=True) as entry:
            for _ in range(unpacked_mb):
                entry.write(zeros)
    return path


def random_bytes(size: int = 4096, seed: int = 1) -> bytes:
    """Deterministic noise (not a valid file of any kind)."""
    import random

    return random.Random(seed).randbytes(size)


# -- class files -----------------------------------------------------------------

def _net_with(init_code: str, header: str = "") -> str:
    """The guide's ``Net`` with ``init_code`` run at the start of ``__init__``."""
    body = textwrap.indent(textwrap.dedent(init_code).strip(), " " * 8)
    source = GUIDE_NET_SOURCE.replace(
        "super(Net, self).__init__()\n",
        "super(Net, self).__init__()\n" + body + "\n", 1)
    assert body in source
    return textwrap.dedent(header) + source


def hostile_class_files(canary: Path) -> dict[str, str]:
    """Class-file sources by case id; each would write ``canary`` (or hang / eat memory)."""
    c = str(canary)
    return {
        "import_os": _net_with(f"os.system('touch {c}')", header="import os\n"),
        "from_os_import": _net_with(f"system('touch {c}')", header="from os import system\n"),
        "dunder_import": _net_with(f"__import__('os').system('touch {c}')"),
        "torch_serialization_os": _net_with(f"torch.serialization.os.system('touch {c}')"),
        "torch_C": _net_with(f"torch._C._log_api_usage_once('x'); open({c!r}, 'w')"),
        "torch_ops": _net_with(f"torch.ops.load_library({c!r})"),
        "getattr_torch": _net_with(f"getattr(torch, 'serialization').os.system('touch {c}')"),
        "builtins_open": _net_with(f"open({c!r}, 'w').write('x')"),
        "eval_string": _net_with(f"eval(\"__import__('os').system('touch {c}')\")"),
        "subclasses_escape": _net_with(
            "[k for k in ().__class__.__base__.__subclasses__() "
            f"if k.__name__ == 'Popen'][0](['touch', {c!r}])"),
        "fork_bomb": _net_with("while True:\n    os.fork()", header="import os\n"),
        "infinite_loop": _net_with("while True:\n    pass"),
        "memory_bomb": _net_with("torch.empty(64 * 2**30, dtype=torch.uint8).fill_(1)"),
    }


def guide_state_dict_bytes() -> bytes:
    """A valid state_dict of the guide's ``Net`` (so only the class file is hostile)."""
    import importlib.util
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as folder:
        module_path = Path(folder) / "guide_net_hostile.py"
        module_path.write_text(GUIDE_NET_SOURCE)
        spec = importlib.util.spec_from_file_location("guide_net_hostile", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        buffer = io.BytesIO()
        torch.save(module.Net().state_dict(), buffer)
        return buffer.getvalue()


def files_under(root: Path) -> list[Path]:
    """Every file and symlink below ``root`` (``find root -type f -o -type l``)."""
    found = []
    for folder, _dirs, names in os.walk(root):
        found.extend(Path(folder) / name for name in names)
    return found
