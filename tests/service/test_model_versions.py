"""Model versions and uploads on a chosen model, against a real ``amvad serve``: an upload scored on the
model ``?model=`` names (and 404 naming an unknown one), a second registration under a name becoming its
current version that a camera on the name follows while a camera on ``name@1`` stays, rollback and roll
forward, versions kept and deleted only when no camera uses them, and the flat layout of older state
directories read as version 1."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from websockets.sync.client import connect

from tests.support.servers import receive, running_service, ws_url

pytestmark = pytest.mark.integration


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def svc(tiny_model, tiny_model_b, tmp_path_factory):
    """A service of its own on the tiny model, whose state directory holds ``legacy.onnx`` in the flat layout
    of the registry before versions."""
    home = tmp_path_factory.mktemp("versions")
    (home / "state" / "models").mkdir(parents=True)
    shutil.copy(tiny_model_b, home / "state" / "models" / "legacy.onnx")
    with running_service(home, tiny_model) as service:
        yield service


def register(service, path, name: str):
    with open(path, "rb") as fh:
        return service.http.post("/v1/models", params={"name": name}, files={"file": (path.name, fh)})


def upload(service, clip, **params):
    with open(clip, "rb") as fh:
        return service.http.post("/v1/clips", params={"wait": "true", **params}, files={"file": (clip.name, fh)})


def test_an_upload_is_scored_on_the_model_it_names(svc, tiny_model, tiny_model_b, sample_mp4):
    # given a registered model beside the service's own (a different method and file)
    assert register(svc, tiny_model_b, "lobby").status_code == 201
    # when the same clip is uploaded with and without ?model=
    default, named = upload(svc, sample_mp4), upload(svc, sample_mp4, model="lobby")
    assert default.status_code == 200 and named.status_code == 200, (default.text, named.text)
    d, n = default.json()["result"], named.json()["result"]
    # then each result says which model scored it, and the scores are that model's
    assert d["model"] == {"name": str(tiny_model), "version": None, "sha256": sha256(tiny_model)}
    assert n["model"] == {"name": "lobby", "version": 1, "sha256": sha256(tiny_model_b)}
    assert named.json()["model"] == n["model"]
    assert (d["method"], n["method"]) == ("amsrc", "comemory") and d["frames"] == n["frames"] == 30
    assert d["scores"] != n["scores"]
    assert upload(svc, sample_mp4, model="lobby@1").json()["result"]["scores"] == n["scores"]
    # and an unknown model or version is refused before the body is read, naming it
    r = upload(svc, sample_mp4, model="nosuch")
    assert r.status_code == 404 and "unknown model 'nosuch'" in r.json()["error"] and "lobby" in r.json()["error"]
    r = upload(svc, sample_mp4, model="lobby@7")
    assert r.status_code == 404 and "'lobby' has no version 7" in r.json()["error"]


def test_a_camera_on_a_name_follows_its_new_version_and_name_at_n_pins_one(svc, tiny_model, tiny_model_b,
                                                                          sample_mp4, tmp_path):
    v1, v2 = sha256(tiny_model_b), sha256(tiny_model)
    first = register(svc, tiny_model_b, "gate")
    assert first.status_code == 201 and first.json()["version"] == 1 and first.json()["ref"] == "gate@1"
    for cam, model in (("follower", "gate"), ("pinned", "gate@1")):
        r = svc.http.post("/v1/cameras", json={"id": cam, "url": sample_mp4.as_uri(), "model": model})
        assert r.status_code == 201 and r.json()["model_sha256"] == v1, r.text
    try:
        # when a second file is registered under the name: version 2, current at once
        second = register(svc, tiny_model, "gate")
        assert second.status_code == 201, second.text
        assert (second.json()["version"], second.json()["current"], second.json()["cameras"]) == (2, True, ["follower"])
        # then the camera on the name runs it from its next frames, the pinned one stays on version 1
        cams = {c: svc.http.get(f"/v1/cameras/{c}").json() for c in ("follower", "pinned")}
        assert cams["follower"]["model_sha256"] == v2 and cams["follower"]["model"] == "gate"
        assert cams["pinned"]["model_sha256"] == v1 and cams["pinned"]["model"] == "gate@1"
        with connect(ws_url(svc, "follower")) as ws:
            svc.wait_for(lambda: any(m["score"] is not None for m in receive(ws, 3)), 20, "scores on version 2")
        # the name lists its versions, oldest first; both files are kept
        listed = svc.http.get("/v1/models/gate").json()
        assert listed["version"] == 2 and listed["sha256"] == v2
        versions = [(v["version"], v["current"], v["sha256"]) for v in listed["versions"]]
        assert versions == [(1, False, v1), (2, True, v2)]
        assert svc.http.get("/v1/models/gate@1").json()["sha256"] == v1
        assert {m["name"]: m["versions"] for m in svc.http.get("/v1/models").json()}["gate"] == 2
        # the same file again is not a new version; a bundled name cannot be replaced
        again = register(svc, tiny_model, "gate")
        assert again.status_code == 409 and "already version 2" in again.json()["error"]
        assert register(svc, tiny_model_b, "ped2").status_code == 409
        # rollback makes version 1 current again and the follower goes back; ?version= goes forward
        back = svc.http.post("/v1/models/gate/rollback")
        assert back.status_code == 200, back.text
        assert (back.json()["version"], back.json()["previous"], back.json()["cameras"]) == (1, 2, ["follower"])
        assert svc.http.get("/v1/cameras/follower").json()["model_sha256"] == v1
        assert svc.http.post("/v1/models/gate/rollback").status_code == 409  # nothing before version 1
        assert svc.http.post("/v1/models/gate/rollback", params={"version": 9}).status_code == 404
        forward = svc.http.post("/v1/models/gate/rollback", params={"version": 2})
        assert forward.status_code == 200 and forward.json()["version"] == 2
        assert svc.http.get("/v1/cameras/follower").json()["model_sha256"] == v2
        # no version a camera uses can be deleted: the pinned one, the current one, the whole name
        for ref in ("gate@1", "gate@2", "gate"):
            r = svc.http.delete(f"/v1/models/{ref}")
            assert r.status_code == 409 and "used by camera(s)" in r.json()["error"], (ref, r.text)
        svc.http.delete("/v1/cameras/pinned")
        r = svc.http.delete("/v1/models/gate@1")
        assert r.status_code == 200 and r.json()["files"] == ["gate@1.onnx"]
        assert [v["version"] for v in svc.http.get("/v1/models/gate").json()["versions"]] == [2]
        assert svc.http.get("/v1/models/gate@1").status_code == 404
    finally:
        svc.http.delete("/v1/cameras/follower")
        svc.http.delete("/v1/cameras/pinned")
    assert svc.http.delete("/v1/models/gate").status_code == 200
    assert svc.http.get("/v1/models/gate").status_code == 404


def test_a_model_of_the_flat_layout_is_read_as_version_1(svc, tiny_model_b, sample_mp4):
    described = svc.http.get("/v1/models/legacy")
    assert described.status_code == 200, described.text
    assert [v["ref"] for v in described.json()["versions"]] == ["legacy@1"]
    assert described.json()["sha256"] == sha256(tiny_model_b)
    assert upload(svc, sample_mp4, model="legacy").json()["result"]["model"]["version"] == 1
