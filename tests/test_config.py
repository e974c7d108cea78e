"""Settings: defaults need nothing set; bad values name the variable."""
from __future__ import annotations

import pytest

from edgeai.config import ConfigError, load_settings


def test_defaults_need_no_environment():
    settings = load_settings({})
    assert settings.auth == "on"
    assert settings.database_url.endswith("var/edgeai.sqlite3")
    assert settings.max_running_jobs >= 1


@pytest.mark.parametrize("name, value", [
    ("EDGEAI_AUTH", "maybe"), ("EDGEAI_MAX_UPLOAD_MB", "lots"), ("EDGEAI_JOB_TIMEOUT", "0"),
    ("EDGEAI_STALE_SECONDS", "-1"), ("EDGEAI_RUN_JOBS", "sometimes"),
    ("EDGEAI_METRICS", "everyone"), ("EDGEAI_STATUS_WAITS", "-1"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_values_are_parsed():
    settings = load_settings({"EDGEAI_DATA_DIR": "/tmp/x", "EDGEAI_AUTH": "GATEWAY",
                              "EDGEAI_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.0/8",
                              "EDGEAI_JOB_MEMORY_MB": "2048"})
    assert settings.auth == "gateway"
    assert settings.trusted_proxies == ("10.0.0.1", "10.0.0.0/8")
    assert settings.database_url == "sqlite:////tmp/x/edgeai.sqlite3"
    assert settings.job_memory_mb == 2048


def test_the_disk_reserve_is_a_gigabyte_unless_set():
    assert load_settings({}).min_free_disk_mb == 1024
    assert load_settings({"EDGEAI_MIN_FREE_DISK_MB": "0"}).min_free_disk_mb == 0
    with pytest.raises(ConfigError, match="EDGEAI_MIN_FREE_DISK_MB=-1 must be at least 0"):
        load_settings({"EDGEAI_MIN_FREE_DISK_MB": "-1"})
