"""Reading a Keras file's configuration ourselves before any Keras loader sees it.

Keras deserialisation can run code (``Lambda`` layers carry Python bytecode;
several safe-mode bypasses — CVE-2024-3660, CVE-2025-1550, CVE-2025-8747,
CVE-2025-9905, CVE-2025-9906 — used custom modules, ``TFSMLayer``,
``TorchModuleWrapper`` or config keys that switch unsafe deserialisation on).
So the JSON config of a ``.keras`` (``config.json``) or ``.h5``
(``model_config``) is walked here first, and anything outside Keras's own layers
is refused. Archives are unpacked with checks on paths, links, sizes and ratio.
A Keras 2 SavedModel's graph is checked op by op (:func:`check_saved_model_ops`).
These checks are early, friendly errors; the sandbox is the wall.
"""
from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgeai.pruning.base import PruningError, UnsafeInputError

FORBIDDEN_CLASSES = {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer",
                     "__lambda__", "function", "TFOpLambda", "SlicingOpLambda"}
FORBIDDEN_KEYS = {"safe_mode", "enable_unsafe_deserialization", "unsafe_deserialization"}
ALLOWED_MODULE_PREFIXES = ("keras", "tf_keras", "tensorflow.python.keras")
MAX_ENTRIES = 2000
MAX_UNPACKED = 2 << 30
MAX_RATIO = 200


def _check_node(node: Any, where: str) -> None:
    if isinstance(node, dict):
        for key in node:
            if isinstance(key, str) and key.lower() in FORBIDDEN_KEYS:
                raise UnsafeInputError(f"The model config sets '{key}' ({where}); refused.")
        class_name = node.get("class_name")
        if isinstance(class_name, str):
            if class_name in FORBIDDEN_CLASSES:
                raise UnsafeInputError(
                    f"The model contains a {class_name} layer ({where}), which holds Python code "
                    "that would run when loaded; it is refused. Replace it with built-in layers.")
            module = node.get("module")
            if module is not None and not (isinstance(module, str) and module.split(".")[0] in
                                           ALLOWED_MODULE_PREFIXES):
                raise UnsafeInputError(f"The model refers to {module}.{class_name} ({where}); "
                                       "only Keras's own layers are accepted.")
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered:
                raise UnsafeInputError(f"The model uses the custom object '{registered}' "
                                       f"({where}); only Keras's own layers are accepted.")
        for key, value in node.items():
            _check_node(value, f"{where}/{node.get('name', key) if key == 'config' else key}"
                        if isinstance(value, (dict, list)) else where)
    elif isinstance(node, list):
        for item in node:
            _check_node(item, where)


def check_config(config: Any) -> None:
    """Refuse a model config that would load code or switch safe mode off."""
    _check_node(config, "model")


def inspect_keras_file(path: Path) -> dict:
    """Read and check ``config.json`` of a ``.keras`` archive; return it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise PruningError("The .keras file has no config.json; is it a Keras 3 file?")
            info = archive.getinfo("config.json")
            if info.file_size > 64 << 20:
                raise UnsafeInputError("config.json is larger than 64 MB; refused.")
            config = json.loads(archive.read("config.json"))
    except zipfile.BadZipFile:
        raise PruningError("The .keras file is not a valid Keras archive (not a zip).") from None
    except json.JSONDecodeError:
        raise PruningError("The .keras file's config.json is not valid JSON.") from None
    check_config(config)
    return config


def inspect_h5_file(path: Path) -> dict:
    """Read and check the ``model_config`` attribute of an ``.h5`` model; return it."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            version = handle.attrs.get("keras_version")
    except OSError:
        raise PruningError("The .h5 file is not a valid HDF5 file.") from None
    if raw is None:
        raise PruningError("The .h5 file holds no model_config: it has weights only. Save the "
                           "whole model with model.save('model.h5').")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise PruningError("The .h5 file's model_config is not valid JSON.") from None
    check_config(config)
    if isinstance(version, bytes):
        version = version.decode()
    config["_edgeai_keras_version"] = str(version or "")
    return config


def safe_extract(archive_path: Path, dest: Path) -> list[Path]:
    """Unpack a zip into ``dest`` with checks; return the files written.

    Refuses absolute paths, ``..``, links, duplicate names, more than
    :data:`MAX_ENTRIES` entries, more than :data:`MAX_UNPACKED` bytes actually
    written, or a compression ratio above :data:`MAX_RATIO`.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile:
        raise PruningError("The .zip upload is not a valid zip archive.") from None
    written: list[Path] = []
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise UnsafeInputError(f"The zip has {len(infos)} entries; at most {MAX_ENTRIES}.")
        seen = set()
        total = 0
        compressed = max(1, Path(archive_path).stat().st_size)
        for info in infos:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise UnsafeInputError(f"The zip entry '{name[:200]}' points outside the "
                                       "archive; refused.")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeInputError(f"The zip entry '{name[:200]}' is a link; refused.")
            key = "/".join(parts).lower()
            if key in seen:
                raise UnsafeInputError(f"The zip has '{name[:200]}' twice; refused.")
            seen.add(key)
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as out:
                while True:
                    chunk = source.read(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > MAX_UNPACKED or total > compressed * MAX_RATIO:
                        raise UnsafeInputError(
                            "The zip unpacks to too much data (more than "
                            f"{MAX_UNPACKED >> 20} MB or {MAX_RATIO}x its size); refused.")
                    out.write(chunk)
            written.append(target)
    return written


# Graph ops a model has no business running: files, processes, Python, summaries.
# (SaveV2/RestoreV2/MergeV2Checkpoints stay: every SavedModel restores its own
# variables with them.)
FORBIDDEN_OPS = {
    "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "PyFunc", "PyFuncStateless",
    "EagerPyFunc", "ImmutableConst", "Save", "SaveSlices", "Restore", "RestoreSlice",
    "ShardedFilespec", "WholeFileReader", "WholeFileReaderV2", "TextLineReader",
    "TextLineReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2",
    "TFRecordReader", "TFRecordReaderV2", "LMDBReader", "IdentityReader", "IdentityReaderV2",
    "ReaderReadV2", "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "DebugIdentity", "DebugIdentityV2", "DebugNumericSummary",
    "Copy", "CopyHost",
}


def check_saved_model_ops(saved_model_dir: Path) -> None:
    """Refuse a SavedModel whose graphs use file, Python or summary ops, or print to a file.

    Raises UnsafeInputError naming the op.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and kin
        raise PruningError("saved_model.pb is not a valid SavedModel.") from None
    for meta in proto.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        for node in nodes:
            op = node.op
            if op in FORBIDDEN_OPS or "Dataset" in op or op.endswith("Reader"):
                raise UnsafeInputError(f"The SavedModel's graph uses the op {op} (node "
                                       f"{node.name[:80]}), which reads or writes files or runs "
                                       "Python; it is refused.")
            if op == "PrintV2":
                stream = node.attr["output_stream"].s.decode(errors="replace")
                if stream not in ("stderr", "stdout", "log(info)", "log(warning)",
                                  "log(error)"):
                    raise UnsafeInputError(f"The SavedModel prints to {stream[:80]!r}; refused.")
