"""Packaging: the migrations travel inside the package, and an installed wheel serves.

The slow case builds the wheel, installs it into a fresh venv that borrows this
venv's dependencies through a ``.pth`` file (nothing is downloaded), and runs the
``edgeai`` command and gunicorn from a folder outside the checkout.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

from edgeai.db import as_directory, migrations_dir
from tests.e2e.server import free_port

REPO = Path(__file__).resolve().parents[1]
# What the wheel's source copy leaves out: environments, caches, build output, data.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*_cache", ".hypothesis", "var",
                                    "bench-results")
UNKNOWN_TXID = {"status": "-1", "message": "No transaction submitted for txid"}


def _options() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config["options"]


def _packages_under(folder: Path, prefix: tuple[str, ...]) -> set[str]:
    return {".".join((*prefix, *init.parent.relative_to(folder).parts))
            for init in folder.rglob("__init__.py")}


def _run(command: list, env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run([str(part) for part in command], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that points Python or edgeai elsewhere."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
           and not key.startswith("EDGEAI_")}
    return dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")


def test_setup_cfg_lists_every_package():
    """`packages` is a list (find: cannot see the mapped migrations): a new package
    folder under edgeai/ that is missing from it would be missing from the wheel."""
    options = _options()
    on_disk = (_packages_under(REPO / "edgeai", ("edgeai",))
               | _packages_under(REPO / "migrations", ("edgeai", "migrations")))
    assert set(options["packages"].split()) == on_disk
    mapping = dict(line.replace(" ", "").split("=") for line in
                   options["package_dir"].strip().splitlines())
    assert mapping == {"edgeai.migrations": "migrations"}


def test_editable_install_maps_the_migrations_package_onto_the_folder():
    import edgeai.migrations

    assert Path(edgeai.migrations.__file__).resolve().parent == REPO / "migrations"
    with migrations_dir() as folder:
        assert folder.resolve() == REPO / "migrations"


def test_zipped_migrations_are_copied_to_a_real_folder(tmp_path):
    archive = tmp_path / "edgeai.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (REPO / "migrations").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(REPO).as_posix())
    with as_directory(zipfile.Path(archive, "migrations/")) as folder:
        assert folder.is_dir()
        assert (folder / "env.py").read_bytes() == (REPO / "migrations/env.py").read_bytes()
        assert (folder / "script.py.mako").is_file()
        assert (folder / "versions" / "0001_initial.py").is_file()
    assert not folder.exists()


def test_checkout_on_pythonpath_without_install_finds_its_migrations(tmp_path):
    """No install, so no edgeai.migrations package: the folder beside edgeai/ serves."""
    database = tmp_path / "edgeai.sqlite3"
    paths = dict.fromkeys([str(REPO), *(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))])
    script = textwrap.dedent(f"""
        import importlib.util
        import edgeai.db
        assert importlib.util.find_spec("edgeai.migrations") is None
        edgeai.db.upgrade_database("sqlite:///{database}")
    """)
    # -S: no site-packages processing, so the editable install's finder is not there.
    env = dict(_clean_env(), PYTHONPATH=os.pathsep.join(paths))
    _run([sys.executable, "-S", "-c", script], env, cwd=tmp_path)
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"transactions", "api_keys", "alembic_version"} <= tables


@pytest.mark.slow
@pytest.mark.e2e
def test_installed_wheel_migrates_and_serves_from_outside_the_checkout(tmp_path):
    env = _clean_env()
    # Built from a copy: an in-tree setuptools build leaves build/ and *.egg-info in
    # the checkout, and a stale build/lib would put deleted modules in the next wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", tmp_path / "wheels", source], env)
    (wheel,) = (tmp_path / "wheels").glob("edgeai-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        names = set(zipped.namelist())
    assert {"edgeai/migrations/env.py", "edgeai/migrations/script.py.mako",
            "edgeai/migrations/versions/0001_initial.py",
            "edgeai/report_page/templates/report_page/report.html"} <= names

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "venv", venv], env)
    new_site = Path(_run([python, "-c", "import sysconfig; "
                          "print(sysconfig.get_paths()['purelib'])"], env).strip())
    # The dependencies come from this venv (a .pth line appends its site-packages).
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (new_site / "edgeai-test-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert REPO not in elsewhere.parents
    env = dict(env, EDGEAI_DATA_DIR=str(tmp_path / "var"), EDGEAI_RUN_JOBS="off")
    # What the server imports: the same interpreter, environment and folder.
    found = json.loads(_run([python, "-c", "import edgeai, edgeai.migrations, json, os, sys; "
                             "print(json.dumps([edgeai.__file__, edgeai.migrations.__file__, "
                             "[os.path.abspath(p) for p in sys.path]]))"], env, cwd=elsewhere))
    assert Path(found[0]).parent == new_site / "edgeai"
    assert Path(found[1]).parent == new_site / "edgeai" / "migrations"
    assert str(REPO) not in found[2]

    assert "newest schema" in _run([venv / "bin" / "edgeai", "db", "upgrade"], env, elsewhere)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "gunicorn.log", "wb") as log:
        # The wheel is installed without dependencies, so the venv has no gunicorn
        # script of its own; `-m gunicorn` runs the same code under the venv's Python.
        server = subprocess.Popen(
            [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--worker-class", "gthread", "--threads", "2", "--graceful-timeout", "5",
             "--no-control-socket", "edgeai:create_app()"],
            cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "gunicorn did not answer /healthz"
                try:
                    if requests.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            assert requests.get(url + "/api/swagger.json", timeout=10).json()["paths"]
            key = json.loads(_run([venv / "bin" / "edgeai", "keys", "create", "x"], env,
                                  elsewhere))
            headers = {"X-IBM-Client-Id": key["client_id"],
                       "X-IBM-Client-Secret": key["client_secret"]}
            unknown = requests.get(url + "/api/status", params={"txid": str(uuid.uuid4())},
                                   headers=headers, timeout=10)
            assert unknown.status_code == 404
            assert unknown.json() == UNKNOWN_TXID
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(15)
