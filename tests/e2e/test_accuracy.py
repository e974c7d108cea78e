"""Accuracy kept through a real gunicorn: analyze, download the plan, prune with it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.pruning.test_accuracy import Digits

pytestmark = pytest.mark.e2e


def test_analyze_then_prune_with_the_plan_and_data(live_server, tmp_path):
    trained = Digits("tensorflow", tmp_path)
    x, y = trained.data
    np.savez(tmp_path / "small.npz", x=x[:200, ..., None], y=y[:200])
    server = live_server()
    headers = server.create_key()

    def post(call: str, query: str, **files: str) -> dict:
        handles = {role: open(tmp_path / name, "rb") for role, name in files.items()}
        try:
            response = requests.post(
                f"{server.url}/api/{call}?{query}", headers=headers, timeout=60,
                files={role: (files[role], handle) for role, handle in handles.items()})
        finally:
            for handle in handles.values():
                handle.close()
        assert response.status_code == 200, response.text
        status = server.wait(response.json()["txid"], headers, timeout=600)
        assert status["status"] == "0", status
        return status

    analysis = post("tf_analyze", "target=macs:0.6", model="digits.keras",
                    dataset="small.npz")
    sensitivity = analysis["report"]["sensitivity"]
    assert analysis["filename"].endswith(".plan.json")
    assert sensitivity["plan_result"]["cost"] <= 0.6
    plan = requests.get(f"{server.url}/api/download", params={"txid": analysis["txid"]},
                        headers=headers, timeout=30)
    assert json.loads(plan.content) == sensitivity["plan"]
    (tmp_path / "plan.json").write_bytes(plan.content)

    pruned = post("tf_prune", "measure=false", model="digits.keras", dataset="small.npz",
                  plan="plan.json")
    report = pruned["report"]
    assert report["plan"] == sensitivity["plan"]
    assert report["evaluation"]["metric"] == "top1_accuracy"
    assert report["evaluation"]["after_recovery"] is not None

    with open(tmp_path / "digits.keras", "rb") as handle:
        response = requests.post(f"{server.url}/api/tf_analyze", headers=headers, timeout=60,
                                 files={"model": ("digits.keras", handle)})
    assert response.status_code == 400
    assert response.json()["message"] == "The form file 'dataset' is required (.npz)."
