"""An upload arriving while the data dir's file system is below EDGEAI_MIN_FREE_DISK_MB
gets 507 in the guide's refusal shape, and nothing of it stays on disk (here: a reserve
set above what this disk really has free)."""
from __future__ import annotations

import io
import shutil

from sqlalchemy import func, select

from edgeai.auth import create_key
from edgeai.db import Transaction

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 4096


def headers_for(app) -> dict[str, str]:
    key = create_key(app.extensions["edgeai.db"], "reserve")
    return {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}


def files_under(data_dir) -> list[str]:
    """Every file of uploads being received and of transactions."""
    return sorted(str(p.relative_to(data_dir)) for folder in ("incoming", "jobs")
                  for p in (data_dir / folder).rglob("*") if p.is_file())


def rows(app) -> int:
    with app.extensions["edgeai.db"].session() as session:
        return session.scalar(select(func.count()).select_from(Transaction))


def upload(app):
    return app.test_client().post("/api/tf_prune?percent=0.4", headers=headers_for(app),
                                  data={"model": (io.BytesIO(H5), "m.h5")})


def test_an_upload_below_the_reserve_is_507_and_leaves_nothing(make_app, data_dir):
    free_mb = shutil.disk_usage(data_dir).free // (1024 * 1024)
    app = make_app(min_free_disk_mb=free_mb + 10_000)  # more than this disk has free
    response = upload(app)
    assert response.status_code == 507
    body = response.get_json()
    assert body["txid"] is None
    assert "short of disk space" in body["message"]
    assert "EDGEAI_MIN_FREE_DISK_MB" in body["message"] and "Retry later" in body["message"]
    assert response.headers["Retry-After"] == "60"
    assert files_under(data_dir) == [] and rows(app) == 0


def test_with_room_above_the_reserve_the_same_upload_is_stored(make_app, data_dir):
    app = make_app(min_free_disk_mb=1)
    response = upload(app)
    assert response.status_code == 200, response.get_json()
    assert rows(app) == 1 and files_under(data_dir) == [
        f"jobs/{response.get_json()['txid']}/inputs/model.upload"]
