"""Accuracy kept, on real data: scikit-learn's digits (8x8, 10 classes), both frameworks.

A small CNN is trained here (seeded, a few seconds) on 1200 digits and the other 597
go to the job as its dataset; the job reports the metric on a held-out fifth of
those. Pruned at 0.5: the metric drops, recovery (no training) brings most of it
back, fine-tuning more; a segmentation-style model is measured per element; bad
datasets are refused with a message; an analysis recommends a per-group plan that a
prune then takes.
"""
from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgeai.pruning import PruneJob, PruningError, UnsafeInputError

TORCH_DIGITS = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.fc1 = nn.Linear(32, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
""")


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype("float32"), data.target.astype("int64")


class Digits:
    """A trained model of one framework, its held-back data, and jobs on them."""

    def __init__(self, framework: str, folder: Path, order: int = 0):
        """``order``: 0 for the digits as scikit-learn ships them, else the seed of a
        shuffle (another training set and another held-out set; the benchmark's
        recovery figure over several splits)."""
        self.framework, self.folder = framework, folder
        x, y = digits()
        if order:
            shuffle = np.random.default_rng(order).permutation(len(x))
            x, y = x[shuffle], y[shuffle]
        self.train(x[:1200], y[:1200])
        self.data = (x[1200:], y[1200:])
        if framework == "tensorflow":
            np.savez(folder / "digits.npz", x=self.data[0][..., None], y=self.data[1])
        else:
            import torch

            torch.save((torch.tensor(self.data[0][:, None]), torch.tensor(self.data[1])),
                       folder / "digits.pth")

    def train(self, x, y):
        if self.framework == "tensorflow":
            import keras

            keras.utils.set_random_seed(0)
            L = keras.layers
            model = keras.Sequential([
                keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", name="conv1"),
                L.BatchNormalization(momentum=0.9), L.ReLU(),
                L.Conv2D(32, 3, padding="same", name="conv2"), L.BatchNormalization(momentum=0.9),
                L.ReLU(), L.MaxPooling2D(), L.GlobalAveragePooling2D(),
                L.Dense(32, activation="relu", name="fc1"), L.Dense(10, name="fc2")])
            model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x[..., None], y, epochs=10, batch_size=32, verbose=0)
            model.save(self.folder / "digits.keras")
            return
        import torch

        namespace: dict = {}
        exec(compile(TORCH_DIGITS, "model.py", "exec"), namespace)
        (self.folder / "model.py").write_text(TORCH_DIGITS)
        torch.manual_seed(0)
        model = namespace["Net"]()
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        xs, ys = torch.tensor(x[:, None]), torch.tensor(y)
        for _ in range(10):
            model.train()
            order = torch.randperm(len(xs))
            for start in range(0, len(xs), 32):
                batch = order[start:start + 32]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
                optimizer.step()
        torch.save(model.eval().state_dict(), self.folder / "weights.pth")

    def engine(self):
        if self.framework == "tensorflow":
            from edgeai.pruning.keras_engine import KerasPruner

            return KerasPruner()
        from edgeai.pruning.torch_engine import TorchPruner

        return TorchPruner()

    def job(self, percent: float, dataset: Path | None = None, plan: Path | None = None,
            **options) -> PruneJob:
        out = self.folder / f"job-{uuid.uuid4().hex[:6]}" / "out"
        out.mkdir(parents=True)
        if self.framework == "tensorflow":
            inputs = {"model": self.folder / "digits.keras",
                      "dataset": dataset or self.folder / "digits.npz"}
        else:
            inputs = {"class_def": self.folder / "model.py",
                      "weights": self.folder / "weights.pth",
                      "dataset": dataset or self.folder / "digits.pth"}
            options = {"input_size": [1, 8, 8], "model_name": "Net", **options}
        if plan is not None:
            inputs["plan"] = plan
        return PruneJob(framework=self.framework, percent=percent, omitted=(),
                        inputs={k: str(v) for k, v in inputs.items()},
                        input_names={k: Path(v).name for k, v in inputs.items()},
                        output_dir=str(out), output_stem="tmpdigits",
                        options={"measure": False, **options})


@pytest.fixture(scope="module", params=["tensorflow", "pytorch"])
def trained(request, tmp_path_factory):
    return Digits(request.param, tmp_path_factory.mktemp(f"digits-{request.param}"))


def test_recovery_then_fine_tuning_win_back_the_accuracy(trained):
    """Held-out accuracy: high before; pruning at 0.5 costs a lot; recovery (no training)
    wins most of it back; two epochs of fine-tuning win more."""
    result = trained.engine().prune(trained.job(0.5, finetune_epochs=2))
    evaluation = result.report["evaluation"]
    assert evaluation["metric"] == "top1_accuracy" and evaluation["higher_is_better"]
    assert evaluation["samples"] == 119 and evaluation["calibration_samples"] == 478
    assert evaluation["before"] >= 0.85
    assert evaluation["after_prune"] < evaluation["before"] - 0.1
    assert evaluation["after_recovery"] > evaluation["after_prune"] + 0.1
    assert evaluation["after_finetune"] >= evaluation["after_recovery"]
    assert len(evaluation["epochs"]) == 2
    recovery = evaluation["recovery"]  # BatchNorm re-estimation is kept only if it helps
    assert recovery["batchnorm"] + recovery.get("batchnorm_rejected", 0) == 2
    assert recovery["refit"] and recovery["seconds"] > 0
    assert result.report["accuracy_before"] == evaluation["before"]
    assert result.report["accuracy_after"] == evaluation["after_finetune"]
    assert result.report["verification"]["round_trip"]["passed"] is True


def test_fine_tuning_without_recovery_ships_the_fine_tuned_model(trained):
    """recover=false with finetune_epochs: the rewrite itself is trained (in place), and
    the round trip compares the saved file with it as trained, not as rewritten (every
    such job failed the round trip before)."""
    result = trained.engine().prune(trained.job(0.5, recover=False, finetune_epochs=1))
    evaluation = result.report["evaluation"]
    assert evaluation["after_recovery"] is None and len(evaluation["epochs"]) == 1
    assert evaluation["after_finetune"] > evaluation["after_prune"]
    assert result.report["verification"]["round_trip"]["passed"] is True


def test_recover_false_ships_the_model_as_rewritten(trained):
    result = trained.engine().prune(trained.job(0.5, recover=False))
    evaluation = result.report["evaluation"]
    assert evaluation["after_recovery"] is None and evaluation["recovery"] is None
    assert result.report["accuracy_after"] == evaluation["after_prune"]


def test_labels_that_do_not_fit_are_not_measured_and_the_prune_finishes(trained, tmp_path):
    """Labels of the wrong shape (the segmentation bug): 'not measured', the job is done."""
    x, y = trained.data
    wrong = np.stack([y, y, y], axis=1)
    if trained.framework == "tensorflow":
        path = tmp_path / "wrong.npz"
        np.savez(path, x=x[..., None], y=wrong)
    else:
        import torch

        path = tmp_path / "wrong.pth"
        torch.save((torch.tensor(x[:, None]), torch.tensor(wrong)), path)
    result = trained.engine().prune(trained.job(0.5, dataset=path))
    detail = result.report["evaluation"]["detail"]
    assert detail.startswith("not measured: labels of shape [") and "do not fit" in detail
    assert result.report["params_after"] < result.report["params_before"]


def test_an_analysis_recommends_a_plan_that_a_prune_takes(trained, tmp_path):
    """Each group's sensitivity at 0.1..0.9; a plan meeting macs:0.6; sent back as the
    prune's plan file, the prune uses exactly those ratios. (200 samples: every cell of
    the table is a rewrite, a recovery and a measurement.)"""
    x, y = trained.data[0][:200], trained.data[1][:200]
    if trained.framework == "tensorflow":
        small = tmp_path / "small.npz"
        np.savez(small, x=x[..., None], y=y)
    else:
        import torch

        small = tmp_path / "small.pth"
        torch.save((torch.tensor(x[:, None]), torch.tensor(y)), small)
    job = trained.job(0.0, dataset=small, task="analyze", target={"metric": "macs", "keep": 0.6})
    analysis = trained.engine().prune(job)
    result = analysis.report["sensitivity"]
    assert result["ratios"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert {group["group"] for group in result["groups"]} >= {"conv2", "fc1"}
    for group in result["groups"]:
        assert len(group["metric"]) == 9 and group["cost"][0] > group["cost"][-1]
    assert result["plan_result"]["cost"] <= 0.6
    assert result["uniform"]["cost"] <= result["plan_result"]["cost"]
    assert analysis.artifact.endswith(".plan.json")
    plan_file = Path(job.output_dir) / analysis.artifact
    assert json.loads(plan_file.read_text()) == result["plan"]
    pruned = trained.engine().prune(trained.job(0.0, dataset=small, plan=plan_file))
    assert pruned.report["plan"] == result["plan"]
    assert pruned.report["macs_ratio"] == pytest.approx(result["plan_result"]["cost"], abs=1e-3)


def test_a_plan_naming_an_unknown_layer_is_refused_with_a_suggestion(trained, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"conv22": 0.5}))
    with pytest.raises(PruningError, match=r"conv22 \(did you mean conv2\?\)"):
        trained.engine().prune(trained.job(0.0, plan=path))


@pytest.mark.parametrize("content, error, message", [
    ({"x": np.array([object(), object()], dtype=object), "y": np.zeros(2)}, UnsafeInputError,
     "Python objects"),
    ({"x": np.zeros((4, 9, 9, 1), np.float32), "y": np.zeros(4, np.int64)}, PruningError,
     "do not fit the model's input"),
    ({"x": np.zeros((4, 8, 8, 1), np.float32)}, PruningError, "has no array y"),
    ({"x": np.zeros((4, 8, 8, 1), np.float32), "y": np.zeros(3)}, PruningError,
     "x has 4 samples but y has 3"),
])
def test_a_bad_npz_is_refused(tmp_path, content, error, message):
    """Keras datasets: pickled arrays are never loaded; wrong shapes and missing arrays
    are refused, saying what to send."""
    folder = tmp_path / "bad"
    folder.mkdir()
    if "x" in content and content["x"].dtype == object:
        np.savez(folder / "bad.npz", **content, allow_pickle=True)
    else:
        np.savez(folder / "bad.npz", **content)
    digits_ = Digits.__new__(Digits)
    digits_.framework, digits_.folder = "tensorflow", folder
    import keras

    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="c"),
                      keras.layers.Flatten(), keras.layers.Dense(2)]).save(folder / "digits.keras")
    with pytest.raises(error, match=message):
        digits_.engine().prune(digits_.job(0.5, dataset=folder / "bad.npz"))


def test_a_segmentation_model_is_measured_per_element(tmp_path):
    """Dense class maps (N, H, W, C) against labels (N, H, W): per-element accuracy, and
    the prune finishes (the old evaluation failed the whole job on such a model)."""
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", name="c1"),
                              L.ReLU(), L.Conv2D(3, 1, name="classes")])
    folder = tmp_path / "seg"
    folder.mkdir()
    model.save(folder / "digits.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "digits.npz", x=rng.random((60, 8, 8, 1), dtype=np.float32),
             y=rng.integers(0, 3, (60, 8, 8)))
    digits_ = Digits.__new__(Digits)
    digits_.framework, digits_.folder = "tensorflow", folder
    result = digits_.engine().prune(digits_.job(0.5))
    evaluation = result.report["evaluation"]
    assert evaluation["metric"] == "element_accuracy"
    assert 0 <= evaluation["before"] <= 1 and evaluation["after_prune"] is not None
