"""The pipeline tells :mod:`edgeai.pruning.progress` each step it takes, with a fraction
that only grows and reaches 1 when the last planned step is over."""
from __future__ import annotations

import pytest

from edgeai.pruning import progress
from edgeai.pruning.pipeline import planned_steps


@pytest.fixture
def heard():
    """What a listener hears while a test runs a job in this process."""
    news: list = []
    tracker = progress.track(lambda phase, fraction: news.append((phase, fraction)))
    yield news, tracker
    progress.track(None)


@pytest.mark.parametrize("framework", ["pytorch"], indirect=True)
def test_a_job_reports_each_step_in_order(framework, heard):
    news, tracker = heard
    job = framework.job(0.5)
    result = framework.engine_class().prune(job)
    assert [phase for phase, _ in news] == ["loading", "analysing", "pruning", "verifying",
                                            "saving", "verifying"]
    fractions = [fraction for _, fraction in news]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert tracker.done == tracker.planned == planned_steps(job) == 6
    assert tracker.fraction() == 1.0
    assert set(result.report["timings"]) == {"load", "analyse", "rewrite", "verify", "save"}


def test_the_plan_counts_the_optional_steps():
    from edgeai.pruning import PruneJob

    def job(inputs=("model",), **options):
        return PruneJob("tensorflow", 0.5, (), {role: "x" for role in inputs}, {}, "", "t",
                        options)

    assert planned_steps(job(measure=False)) == 6
    assert planned_steps(job(("model", "dataset"), formats=["tflite"])) == 6 + 2 + 1 + 1
    assert planned_steps(job(("model", "dataset"), finetune_epochs=3, measure=False)) == 9
    assert planned_steps(job(("model", "dataset"), task="analyze")) == 4


def test_fine_tuning_reports_within_its_step():
    tracker = progress.Tracker(listener=lambda *news: heard.append(news))
    heard: list = []
    tracker.plan(4)
    tracker.enter("load")
    tracker.leave()
    tracker.enter("finetune")
    tracker.within(0.5)
    tracker.within(7.0)  # clamped to the step
    assert heard == [("loading", 0.0), ("fine-tuning", 0.25), ("fine-tuning", 0.375),
                     ("fine-tuning", 0.5)]


@pytest.mark.parametrize("framework", ["tensorflow"], indirect=True)
def test_a_keras_job_compiles_for_timing_before_the_checks(framework, heard):
    """Timed in Keras (the default), the models are compiled once, in the measure step,
    before the checks that then run the compiled functions: one more planned step."""
    news, tracker = heard
    job = framework.job(0.5, measure=True)
    result = framework.engine_class().prune(job)
    assert [phase for phase, _ in news] == ["loading", "analysing", "pruning", "measuring",
                                            "verifying", "saving", "verifying", "measuring"]
    assert tracker.done == tracker.planned == planned_steps(job, framework.engine_class()) == 8
    assert planned_steps(job) == 7
    assert result.report["verification"]["exactness"]["passed"] is True
