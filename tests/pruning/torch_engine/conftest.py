"""Run the real PyTorch engine on class files and weights written as a user would."""
from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid

import pytest
import torch


@pytest.fixture
def user_files(tmp_path):
    """``user_files(source, model_name, init=None)`` -> (paths dict, model instance).

    Writes ``model.py``, builds the model from it (in a private module name, so
    the engine's own import is separate), lets ``init`` adjust weights, and saves
    its state_dict with torch.save.
    """

    def make(source: str, model_name: str = "Net", init=None, dataset=None):
        folder = tmp_path / f"user-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        class_file = folder / "model.py"
        class_file.write_text(textwrap.dedent(source))
        name = f"user_model_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(name, class_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        model = getattr(module, model_name)().eval()
        if init is not None:
            with torch.no_grad():
                init(model)
        weights = folder / "weights.pth"
        torch.save(model.state_dict(), weights)
        paths = {"class_def": class_file, "weights": weights}
        if dataset is not None:
            paths["dataset"] = folder / "dataset.pth"
            torch.save(dataset, paths["dataset"])
        return paths, model

    return make


@pytest.fixture
def prune_torch(tmp_path):
    """``prune_torch(paths, percent, input_size, omitted=(), model_name="Net")`` -> result."""
    from edgeai.pruning import PruneJob
    from edgeai.pruning.torch_engine import TorchPruner

    def run(paths, percent, input_size, omitted=(), model_name="Net", names=None):
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        out.mkdir()
        names = names or {role: path.name for role, path in paths.items()}
        job = PruneJob(framework="pytorch", percent=percent, omitted=tuple(omitted),
                       inputs={k: str(v) for k, v in paths.items()}, input_names=names,
                       output_dir=str(out), output_stem="tmptest0001",
                       options={"input_size": (input_size if isinstance(input_size, str)
                                               else list(input_size)),
                                "model_name": model_name})
        result = TorchPruner().prune(job)
        return result, out

    return run


def load_pruned(out, result, class_dir):
    """Load the artifact as the guide does, in a fresh process, next to model.py."""
    import subprocess

    code = textwrap.dedent(f"""
        import torch, json
        model, info = torch.load({str(out / result.artifact)!r}, weights_only=False)
        print(type(model).__module__, sum(p.numel() for p in model.parameters()))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=class_dir, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()
