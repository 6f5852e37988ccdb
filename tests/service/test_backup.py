"""Backup and restore (service/backup.py, ``GET /v1/backup``, ``amvad backup``/``restore``): an archive taken
from a running ``amvad serve`` restores into a fresh one with the same cameras, webhooks, models,
statistics and events; the SQLite copy is consistent while rows are written; restore refuses a non-empty
state directory and archives that are damaged or would write outside it."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import pytest

from amvad.cli.main import main
from amvad.runtime.errors import Conflict, Invalid
from amvad.service.api.backup import Cancelled, ChunkPipe
from amvad.service.backup import BadArchive, NotEmpty, Snapshot, backup_to_file, restore
from amvad.service.config import load_settings
from amvad.service.event_store import EventStore
from amvad.service.state import StatePaths
from tests.support.servers import running_service

LOW, HIGH = -1e9, 1e9
EVENTS = {"min_duration_s": 0.2, "cooldown_s": 0.5, "pre_roll_s": 0.5, "post_roll_s": 0.5}


def small_state(root: Path) -> StatePaths:
    """A state directory with one of each kind of file (no service needed)."""
    paths = StatePaths(root)
    EventStore(paths.events_db).close_db()
    paths.api_cameras.write_text(json.dumps({"cameras": [{"id": "cam", "url": "file:///x.mp4"}]}))
    paths.models.mkdir()
    (paths.models / "lobby.onnx").write_bytes(b"onnx" * 100)
    paths.camera_stats("cam").parent.mkdir()
    paths.camera_stats("cam").write_text('{"stats": {"count": 3}}')
    paths.evidence("cam").mkdir(parents=True)
    (paths.evidence("cam") / "1.jpg").write_bytes(b"\xff\xd8" + b"j" * 50)
    return paths


def tar_of(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return path


def members_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_errors_carry_their_status():
    assert issubclass(BadArchive, Invalid) and BadArchive.status == 422
    assert issubclass(NotEmpty, Conflict) and NotEmpty.status == 409


def test_restore_refuses_a_state_directory_that_is_not_empty(tmp_path):
    archive = tmp_path / "b.tar.gz"
    backup_to_file(small_state(tmp_path / "state"), archive)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(NotEmpty, match="not empty"):
        restore(archive, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if ".restore-" in p.name] == []


@pytest.mark.parametrize("name", ["../evil", "state/../../evil", "/tmp/amvad-evil", "state/recordings/x/evil",
                                  "state/.hidden", "other"])
def test_restore_refuses_members_outside_the_state_directory(tmp_path, name):
    archive = tar_of(tmp_path / "bad.tar.gz", [(name, b"x"), ("manifest.json", b'{"format": 1, "members": {}}')])
    with pytest.raises(BadArchive, match="outside the state directory|not part of an amvad state"):
        restore(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/amvad-evil").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar.gz"]  # no half-restored folder left


def test_restore_refuses_links_and_changed_or_foreign_archives(tmp_path):
    link = tarfile.TarInfo("state/models/a.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(BadArchive, match="not a regular file"):
        restore(tar_of(tmp_path / "link.tar.gz", [link]), tmp_path / "t1")
    good = tmp_path / "good.tar.gz"
    backup_to_file(small_state(tmp_path / "state"), good)
    members = members_of(good)
    members["state/models/lobby.onnx"] = b"ONNX" * 100  # same size, other bytes
    with pytest.raises(BadArchive, match="does not match its manifest"):
        restore(tar_of(tmp_path / "changed.tar.gz", list(members.items())), tmp_path / "t2")
    del members["manifest.json"]
    with pytest.raises(BadArchive, match="no manifest.json"):
        restore(tar_of(tmp_path / "nomanifest.tar.gz", list(members.items())), tmp_path / "t3")
    (tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadArchive):
        restore(tmp_path / "cut.tar.gz", tmp_path / "t4")
    (tmp_path / "text.tar.gz").write_text("hello")
    with pytest.raises(BadArchive, match="not a readable amvad backup"):
        restore(tmp_path / "text.tar.gz", tmp_path / "t5")
    assert not any((tmp_path / f"t{i}").exists() for i in range(1, 6))


def test_a_backup_restores_byte_for_byte_with_private_files_kept_private(tmp_path):
    paths = small_state(tmp_path / "state")
    os.chmod(paths.api_cameras, 0o600)  # as the service writes it: it holds camera credentials
    archive = tmp_path / "b.tar.gz"
    manifest = backup_to_file(paths, archive, config={"model": "ped2"})
    assert archive.stat().st_mode & 0o777 == 0o600
    assert list(members_of(archive))[-1] == "manifest.json"
    assert manifest["contents"] == {"events": 0, "cameras": 1, "webhooks": 0, "models": 1, "statistics": 1,
                                    "evidence_files": 1}
    res = restore(archive, tmp_path / "new")
    new = StatePaths(tmp_path / "new")
    for f in (paths.api_cameras, paths.models / "lobby.onnx", paths.camera_stats("cam"),
              paths.evidence("cam") / "1.jpg"):
        assert (new.root / f.relative_to(paths.root)).read_bytes() == f.read_bytes()
    assert new.api_cameras.stat().st_mode & 0o777 == 0o600
    assert res["config"] == str(new.restored_config)
    assert "state_dir: " + str(new.root) in new.restored_config.read_text()
    no_evidence = tmp_path / "n.tar.gz"
    assert backup_to_file(paths, no_evidence, evidence=False)["evidence"] is False
    assert not any(n.startswith("state/events/") for n in members_of(no_evidence))


def test_the_database_copy_is_consistent_while_rows_are_written(tmp_path):
    # given the service's event database and a writer committing batches of 10 rows as fast as it can
    paths = StatePaths(tmp_path / "state")
    EventStore(paths.events_db).close_db()
    stop, batches = threading.Event(), [0]

    def write() -> None:
        db = sqlite3.connect(paths.events_db, isolation_level=None, timeout=5)
        while not stop.is_set():
            db.execute("BEGIN")
            for i in range(10):
                db.execute("INSERT INTO events (camera, threshold, start, start_frame, peak_score, peak_frame) "
                           "VALUES ('cam', 1.0, ?, ?, 2.0, ?)", (time.time(), i, i))
            db.execute("COMMIT")
            batches[0] += 1
        db.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while batches[0] < 5:
            time.sleep(0.01)
        for n in range(3):
            # when a backup is taken mid-write and restored
            before = batches[0]
            manifest = backup_to_file(paths, tmp_path / f"b{n}.tar.gz")
            assert batches[0] > before, "the writer was not blocked by the backup"
            restore(tmp_path / f"b{n}.tar.gz", tmp_path / f"r{n}")
            # then the copy is a whole database holding whole transactions only
            db = sqlite3.connect(StatePaths(tmp_path / f"r{n}").events_db)
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            db.close()
            assert count > 0 and count % 10 == 0 and count == manifest["contents"]["events"]
    finally:
        stop.set()
        writer.join(5)


def test_the_http_stream_delivers_the_whole_archive_and_stops_when_the_client_goes(tmp_path):
    paths = small_state(tmp_path / "state")
    (paths.models / "big.onnx").write_bytes(os.urandom(3 << 20))  # incompressible: several chunks
    # given a reader that takes every chunk, then the archive is whole
    with Snapshot(paths) as snap:
        pipe = ChunkPipe(depth=1)
        writer = threading.Thread(target=lambda: (snap.write(pipe), pipe.close()))
        writer.start()
        chunks = list(iter(pipe.get, None))
        writer.join(5)
    assert members_of_bytes(b"".join(chunks))["state/models/big.onnx"] == (paths.models / "big.onnx").read_bytes()
    # given a reader that goes away after one chunk, then the writer stops instead of waiting for it forever
    errors = []
    with Snapshot(paths) as snap:
        pipe = ChunkPipe(depth=1)

        def write() -> None:
            try:
                snap.write(pipe)
            except Cancelled as exc:
                errors.append(exc)
        writer = threading.Thread(target=write)
        writer.start()
        assert pipe.get()
        pipe.cancelled.set()
        writer.join(5)
    assert not writer.is_alive() and len(errors) == 1 and pipe.get() is None


# -- against real servers --------------------------------------------------------------------------------
def snapshot_api(svc) -> dict:
    """What a restore must bring back, as the API shows it."""
    cams = {c["id"]: {k: c[k] for k in ("url", "model", "threshold")} for c in svc.http.get("/v1/cameras").json()}
    models = {m["name"]: m["sha256"] for m in svc.http.get("/v1/models").json() if not m["bundled"]}
    return {"cameras": cams, "webhooks": svc.http.get("/v1/webhooks").json(), "models": models,
            "events": svc.http.get("/v1/events", params={"camera": "cam"}).json()}


@pytest.mark.integration
def test_a_backup_of_a_running_service_restores_into_a_fresh_one(tiny_model, sample_mp4, tmp_path_factory, capsys):
    src, dst = tmp_path_factory.mktemp("backup_src"), tmp_path_factory.mktemp("backup_dst")
    with running_service(src, tiny_model, {"events": EVENTS}) as svc:
        # given a camera with running statistics and one finished event with its evidence, a webhook and
        # a registered model
        r = svc.http.post("/v1/cameras", json={"id": "cam", "url": sample_mp4.as_uri(), "threshold": HIGH})
        assert r.status_code == 201, r.text
        stats_file = StatePaths(src / "state").camera_stats("cam")
        svc.wait_for(lambda: stats_file.is_file() and json.loads(stats_file.read_text())["stats"]["count"] >= 20,
                     60, "running statistics on disk")
        assert svc.http.patch("/v1/cameras/cam", json={"threshold": LOW}).status_code == 200
        svc.wait_for(lambda: svc.http.get("/v1/events").json(), 30, "an event to start")
        assert svc.http.patch("/v1/cameras/cam", json={"threshold": HIGH}).status_code == 200
        svc.wait_for(lambda: (e := svc.http.get("/v1/events").json()) and all(x["end"] and x["clip"] and x["snapshot"]
                                                                              for x in e), 30, "the event's evidence")
        r = svc.http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": "s3", "cameras": ["none"]})
        assert r.status_code == 201, r.text
        with open(tiny_model, "rb") as fh:  # a copy of the bundled ped2 would do, but takes ~20 s to measure
            r = svc.http.post("/v1/models", params={"name": "lobby"}, files={"file": ("lobby.onnx", fh)})
        assert r.status_code == 201, r.text
        before = snapshot_api(svc)
        # when it is backed up over HTTP (and without evidence), and with the CLI, while it runs
        anon = svc.http.get("/v1/backup", headers={"X-API-Key": "wrong"})
        assert anon.status_code == 401
        r = svc.http.get("/v1/backup")
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip", r.text
        assert "attachment" in r.headers["content-disposition"]
        (src / "http.tar.gz").write_bytes(r.content)
        lean = members_of_bytes(svc.http.get("/v1/backup", params={"evidence": "false"}).content)
        assert json.loads(lean["manifest.json"])["evidence"] is False
        assert not any(n.startswith("state/events/") for n in lean)
        capsys.readouterr()
        assert main(["backup", "--config", str(src / "service.yaml"), "--out", str(src / "cli.tar.gz")]) == 0
        cli = capsys.readouterr()
        assert "backup: " in cli.err and " files, " in cli.err
    archived = members_of(src / "http.tar.gz")
    manifest = json.loads(archived["manifest.json"])
    assert manifest["contents"] == {"events": len(before["events"]), "cameras": 1, "webhooks": 1, "models": 1,
                                    "statistics": 1, "evidence_files": 2 * len(before["events"])}
    assert "api_key" not in archived["config.yaml"].decode() and "test-key-123" not in archived["config.yaml"].decode()
    assert json.loads(cli.out)["contents"]["cameras"] == 1

    # then it restores into a new state directory
    assert main(["restore", str(src / "http.tar.gz"), "--state-dir", str(dst / "state")]) == 0
    assert json.loads(capsys.readouterr().out)["contents"] == manifest["contents"]
    restore(src / "cli.tar.gz", dst / "from-cli")  # the CLI's archive restores too
    restored = load_settings(StatePaths(dst / "state").restored_config)  # the config it carried, pointing here
    assert restored.state_dir == (dst / "state").resolve() and restored.api_key is None
    assert restored.events.min_duration_s == EVENTS["min_duration_s"]
    restored_stats = json.loads(StatePaths(dst / "state").camera_stats("cam").read_text())
    assert restored_stats == json.loads(archived["state/cameras/cam.json"])

    # and a fresh service on it has the same cameras, webhooks, models and events, and goes on from the
    # saved statistics
    with running_service(dst, tiny_model, {"events": EVENTS}) as fresh:
        after = snapshot_api(fresh)
        assert after == before
        event = before["events"][0]
        clip = fresh.http.get(f"/v1/cameras/cam/events/{event['id']}/clip.mp4")
        assert clip.status_code == 200 and clip.content == archived[f"state/events/cam/{event['clip']}"]
        stats_file = StatePaths(dst / "state").camera_stats("cam")
        first = restored_stats["stats"]["count"]
        later = fresh.wait_for(lambda: (c := json.loads(stats_file.read_text())["stats"]["count"]) != first and c,
                               30, "the restored camera to save its statistics")
        assert later > first, "the camera started from its saved statistics, not from zero"


def members_of_bytes(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_restore_cli_errors_exit_2(tmp_path, capsys):
    archive = tmp_path / "b.tar.gz"
    backup_to_file(small_state(tmp_path / "state"), archive)
    assert main(["restore", str(archive), "--state-dir", str(tmp_path / "state"), "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err
    (tmp_path / "bad.tar.gz").write_bytes(b"no")
    assert main(["restore", str(tmp_path / "bad.tar.gz"), "--state-dir", str(tmp_path / "n"), "--quiet"]) == 2
    assert "not a readable amvad backup" in capsys.readouterr().err
    assert main(["backup", "--state-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o.tar.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["backup", "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "o.tar.gz")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["files"] == 6 and "backup: 6/6 files" in out.err  # 5 and config.yaml
