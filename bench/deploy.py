"""Speed where it runs: pruned models in their deploy runtimes, against their MACs.

Keras ResNet50, MobileNetV2 and EfficientNetB0 (96x96x3, 10 classes, random weights)
and a ResNet-18-style torch model (3x96x96) pruned at 0.3 and 0.5 with round_to=8,
through the real engines in this process, with formats tflite and onnx (torch:
onnx) and measure on: MACs ratio, latency ratio per runtime at batch 1 (one thread),
file ratio. Goal: latency ratio <= 1.2 x MACs ratio in TFLite and ONNX Runtime.
The same for torch.export programs (.pt2, exported at batch 1 as users do) of the
ResNet-18-, MobileNetV2- and EfficientNet-style torch models, uploaded instead of a
class file.

The ONNX engine's rows (``[onnx]``): ONNX files as users bring them — ResNet-18,
MobileNetV2 and EfficientNet-style networks at full width exported with
torch.onnx.export (tests/pruning/onnx_engine/models.py), and Keras's MobileNetV2
converted with tf2onnx — pruned by the ONNX engine and timed in ONNX Runtime.

``.venv/bin/python -m bench.deploy`` prints the table on its own;
``.venv/bin/python -m bench.deploy pt2`` only the .pt2 rows, ``... onnx`` only the ONNX
engine's rows.
"""
from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

KERAS_MODELS = ("ResNet50", "MobileNetV2", "EfficientNetB0")
PERCENTS = (0.3, 0.5)
RUNTIMES = ("keras", "torch", "tflite", "onnxruntime")

RESNET18 = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            widths, layers, cin = (64, 128, 256, 512), [], 64
            for i, width in enumerate(widths):
                layers += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
                cin = width
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 10)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
""")


def _job(framework: str, inputs: dict, names: dict, out: Path, percent: float, options: dict):
    from edgeai.pruning import PruneJob

    out.mkdir(parents=True)
    return PruneJob(framework=framework, percent=percent, omitted=(), inputs=inputs,
                    input_names=names, output_dir=str(out), output_stem="tmpbench",
                    options={"round_to": 8, "measure": True, **options})


def _row(name: str, percent: float, report: dict) -> dict:
    latencies = {row["runtime"]: row["ratio"] for row in report["speed"]["latencies"]
                 if row["batch"] == 1}
    failed = [f"{fmt}: {check['detail'][:80]}" for fmt, check in report["exports"].items()
              if check["passed"] is False]
    return {"model": name, "percent": percent, "macs": report["macs_ratio"],
            "file": report["file_size_ratio"], "latency": latencies, "failed": failed,
            "seconds": sum(report["timings"].values())}


def keras_rows(tmp: Path) -> list[dict]:
    import keras

    from edgeai.pruning.keras_engine import KerasPruner

    engine = KerasPruner()
    engine.warm_up()
    rows = []
    for name in KERAS_MODELS:
        keras.utils.set_random_seed(0)
        path = tmp / f"{name}.keras"
        getattr(keras.applications, name)(weights=None, input_shape=(96, 96, 3),
                                          classes=10).save(path)
        for percent in PERCENTS:
            job = _job("tensorflow", {"model": str(path)}, {"model": path.name},
                       tmp / f"{name}-{percent}" / "out", percent,
                       {"formats": ["tflite", "onnx"]})
            rows.append(_row(name, percent, engine.prune(job).report))
    return rows


def torch_rows(tmp: Path) -> list[dict]:
    import torch

    from edgeai.pruning.torch_engine import TorchPruner

    folder = tmp / "resnet18"
    folder.mkdir()
    (folder / "model.py").write_text(RESNET18)
    namespace: dict = {}
    exec(compile(RESNET18, "model.py", "exec"), namespace)  # noqa: S102 - our own source
    torch.manual_seed(0)
    torch.save(namespace["Net"]().state_dict(), folder / "weights.pth")
    engine = TorchPruner()
    engine.warm_up()
    rows = []
    for percent in PERCENTS:
        job = _job("pytorch", {"class_def": str(folder / "model.py"),
                               "weights": str(folder / "weights.pth")},
                   {"class_def": "model.py", "weights": "weights.pth"},
                   tmp / f"torch-{percent}" / "out", percent,
                   {"formats": ["onnx"], "input_size": [3, 96, 96], "model_name": "Net"})
        rows.append(_row("ResNet-18 style (torch)", percent, engine.prune(job).report))
    return rows


def program_rows(tmp: Path) -> list[dict]:
    """The torch models exported with torch.export (batch 1) and uploaded as .pt2."""
    import torch

    from edgeai.pruning.torch_engine import TorchPruner
    from tests.pruning.torch_engine.models import EFFICIENTNET, MOBILENET_V2

    engine = TorchPruner()
    engine.warm_up()
    rows = []
    for name, source in (("ResNet-18 style", RESNET18), ("MobileNetV2 style", MOBILENET_V2[0]),
                         ("EfficientNet style", EFFICIENTNET[0])):
        namespace: dict = {}
        exec(compile(source, "model.py", "exec"), namespace)  # noqa: S102 - our own source
        torch.manual_seed(0)
        path = tmp / f"{name.split()[0]}.pt2"
        torch.export.save(torch.export.export(namespace["Net"]().eval(),
                                              (torch.randn(1, 3, 96, 96),)), path)
        for percent in PERCENTS:
            job = _job("pytorch", {"model": str(path)}, {"model": path.name},
                       tmp / f"pt2-{path.stem}-{percent}" / "out", percent,
                       {"formats": ["onnx"]})
            rows.append(_row(f"{name} (.pt2)", percent, engine.prune(job).report))
    return rows


def onnx_rows(tmp: Path) -> list[dict]:
    """The ONNX engine on real exports (see the module docstring)."""
    import keras

    from edgeai.pruning.keras_engine.deploy import to_onnx
    from edgeai.pruning.onnx_engine import OnnxPruner
    from tests.pruning.onnx_engine.models import family

    folder = tmp / "onnx"
    folder.mkdir()
    models = {f"{label} [onnx]": family(name, folder / f"{name}.onnx", (3, 96, 96), **size)
              for label, name, size in (("ResNet-18 (torch)", "resnet18", {"width": 64}),
                                        ("MobileNetV2 (torch)", "mobilenet_v2", {"width": 1.0}),
                                        ("EfficientNet-s (torch)", "efficientnet",
                                         {"width": 1.0}))}
    keras.utils.set_random_seed(0)
    path = folder / "keras_mobilenet_v2.onnx"
    path.write_bytes(to_onnx(keras.applications.MobileNetV2(weights=None,
                                                            input_shape=(96, 96, 3), classes=10)))
    models["MobileNetV2 (tf2onnx) [onnx]"] = path
    engine = OnnxPruner()
    engine.warm_up()
    rows = []
    for label, model in models.items():
        for percent in PERCENTS:
            job = _job("onnx", {"model": str(model)}, {"model": model.name},
                       tmp / f"onnx-{model.stem}-{percent}" / "out", percent, {})
            rows.append(_row(label, percent, engine.prune(job).report))
    return rows


def table(rows: list[dict]) -> str:
    """The deploy table: one line per model and percent."""
    head = (f"{'model':<30} {'pct':>4} {'MACs':>6} " + " ".join(f"{r:>11}" for r in RUNTIMES)
            + f" {'file':>6}  goal (latency <= 1.2 x MACs in tflite/onnxruntime)")
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = " ".join(f"{row['latency'][r]:>11.2f}" if r in row["latency"] else f"{'':>11}"
                         for r in RUNTIMES)
        deploy = [row["latency"][r] for r in ("tflite", "onnxruntime") if r in row["latency"]]
        met = all(ratio <= 1.2 * row["macs"] for ratio in deploy)
        note = ("met" if met else "NOT met") + (f"; {'; '.join(row['failed'])}"
                                                if row["failed"] else "")
        lines.append(f"{row['model']:<30} {row['percent']:>4} {row['macs']:>6.2f} {cells} "
                     f"{row['file']:>6.2f}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the deploy table: every engine's rows, or only ``pt2``'s or ``onnx``'s."""
    only = (argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="edgeai-bench-deploy-") as tmp:
        if only == ["pt2"]:
            rows = program_rows(Path(tmp))
        elif only == ["onnx"]:
            rows = onnx_rows(Path(tmp))
        else:
            rows = (keras_rows(Path(tmp)) + torch_rows(Path(tmp)) + program_rows(Path(tmp))
                    + onnx_rows(Path(tmp)))
    print()
    print("Latency ratios (pruned / original) at batch 1, one thread; MACs and file ratios:")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
