"""round_to never takes channels from a group the plan leaves alone.

With round_to=8, a group of 10 channels "at 0" was rounded to the nearest multiple of 8
and lost 2 channels: a user's plan file that did not name it pruned it anyway, and the
latency search (which builds its plans from per-group fractions, unnamed groups at 0)
shipped a model rewritten without those 2 channels while the plan it reported — and
the exactness check masked — removed them: EfficientNetB0's squeeze-and-excite groups
(10 filters) failed the job in `bench.latency` ("first layer that differs:
block3b_se_reduce").
"""
from __future__ import annotations

import json
from pathlib import Path

import keras

from edgeai.pruning import PruneJob
from edgeai.pruning.keras_engine import KerasPruner
from edgeai.pruning.plan import make_plan

L = keras.layers


def _model_file(tmp_path: Path) -> Path:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(10, 3, padding="same", name="ten")(inputs)
    x = L.Conv2D(16, 3, padding="same", name="sixteen")(L.ReLU()(x))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(x)))
    path = tmp_path / "net.keras"
    model.save(path)
    return path


def test_a_group_at_zero_keeps_every_channel_whatever_round_to(tmp_path):
    engine = KerasPruner()
    job = PruneJob(framework="tensorflow", percent=0.5, omitted=(),
                   inputs={"model": str(_model_file(tmp_path))},
                   input_names={"model": "net.keras"}, output_dir=str(tmp_path), output_stem="x",
                   options={})
    loaded = engine.load(job, tmp_path)
    analysis = engine.analyse(loaded)
    plan = make_plan(analysis, 0.0, (), engine.separator, 8, {"sixteen": 0.5})
    assert set(plan.removal) == {"sixteen"} and len(plan.removal["sixteen"]) == 8
    assert plan.status["ten"][0].value == "unchanged"
    # Asked for, a group of 10 is still rounded to a multiple of 8 (the rule's purpose).
    assert len(make_plan(analysis, 0.1, (), engine.separator, 8).removal["ten"]) == 2


def test_a_plan_file_naming_one_group_leaves_the_others_whole(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sixteen": 0.5}))
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    job = PruneJob(framework="tensorflow", percent=0.5, omitted=(),
                   inputs={"model": str(_model_file(tmp_path)), "plan": str(plan)},
                   input_names={"model": "net.keras", "plan": "plan.json"},
                   output_dir=str(out), output_stem="x",
                   options={"round_to": 8, "measure": False})
    result = KerasPruner().prune(job)
    widths = {row["name"]: row["channels_after"] for row in result.report["layers"]}
    assert widths["ten"] == 10 and widths["sixteen"] == 8
    assert result.report["verification"]["exactness"]["passed"]
