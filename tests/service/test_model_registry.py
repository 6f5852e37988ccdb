"""The model registry refuses what would stall the shared engine: metadata out of the contract's bounds, or a
frame over the engine's per-model budget. Nothing of a refused upload is registered, and its errors carry
their HTTP status. The last test does it all through a real ``amvad serve``."""

from __future__ import annotations

import shutil

import pytest

from amvad.models.registry import resolve_model
from amvad.runtime.engine import EngineConfig
from amvad.runtime.errors import Conflict, Invalid, NotFound
from amvad.service.config import ServiceSettings
from amvad.service.model_registry import InvalidModel, ModelConflict, ModelRegistry, UnknownModel, upgrade_layout
from amvad.service.state import StatePaths
from tests.support.model_files import with_metadata
from tests.support.servers import add_camera, running_service

MILLION_ITERATIONS = {"name": "tvl1", "iterations": 1_000_000}
SAYS_WHICH = r"tvl1 parameter 'iterations' must be an int in \[1, 1000\], got 1000000"


def test_registry_errors_carry_their_status_and_keep_their_builtin_bases():
    assert issubclass(UnknownModel, NotFound) and issubclass(UnknownModel, LookupError) and UnknownModel.status == 404
    assert issubclass(InvalidModel, Invalid) and issubclass(InvalidModel, ValueError) and InvalidModel.status == 422
    assert issubclass(ModelConflict, Conflict) and issubclass(ModelConflict, RuntimeError)
    assert ModelConflict.status == 409


def test_the_registry_lives_where_state_paths_say(tmp_path):
    settings = ServiceSettings(state_dir=tmp_path, model="ped2")
    registry = ModelRegistry.from_settings(settings)
    assert registry.dir == settings.paths.models == tmp_path / "models" and registry.default == "ped2"
    assert ModelRegistry(tmp_path, "ped2").dir == registry.dir  # a bare state directory still works


def test_a_million_flow_iterations_are_refused_and_nothing_is_registered(tiny_model, tmp_path):
    registry = ModelRegistry(StatePaths(tmp_path / "state"), "ped2")
    upload = with_metadata(tiny_model, tmp_path / "upload-1a2b.onnx", flow=MILLION_ITERATIONS)
    with pytest.raises(InvalidModel, match=rf"not a usable amvad model: the upload: metadata flow: {SAYS_WHICH}"):
        registry.add("stall", upload)
    assert not registry.registered() and not registry.dir.exists() and upload.exists()


def test_a_model_over_the_engines_budget_is_refused(tiny_model, tmp_path):
    registry = ModelRegistry(StatePaths(tmp_path), "ped2", EngineConfig(device="cpu", model_budget_ms=0.01))
    upload = tmp_path / "upload.onnx"
    shutil.copy(tiny_model, upload)
    with pytest.raises(InvalidModel, match=r"needs \d+ ms .* over the engine's per-model budget of 0.01 ms"):
        registry.add("slow", upload)
    assert not registry.registered()


def test_a_model_within_bounds_and_budget_is_registered(tiny_model, tmp_path):
    registry = ModelRegistry(StatePaths(tmp_path), "ped2", EngineConfig(device="cpu"))
    upload = tmp_path / "upload.onnx"
    shutil.copy(tiny_model, upload)
    described = registry.add("lobby", upload)
    assert described["name"] == "lobby" and registry.registered() == {"lobby": tmp_path / "models" / "lobby@1.onnx"}
    assert described["version"] == 1 and not upload.exists()


def test_a_name_keeps_versions_and_a_fit_card_says_which_one_it_became(tiny_model, tiny_model_b, tmp_path):
    # given a registry that already has version 1 of "gate", and a listener that records new current versions
    registry = ModelRegistry(StatePaths(tmp_path), "ped2", EngineConfig(device="cpu"))
    heard = []
    registry.listeners.append(lambda name: heard.append(name) or [f"cam-on-{name}"])
    registry.add("gate", shutil.copy(tiny_model, tmp_path / "upload-1.onnx"))
    # when a fitted model with its card is registered under the same name
    card = "# gate: comemory model fitted with `amvad fit`\n\nThe service registers it as `gate` when the fit succeeds."
    second = registry.add("gate", shutil.copy(tiny_model_b, tmp_path / "upload-2.onnx"), card=card)
    # then it is version 2, current, both files are kept, and the card says it was registered as version 2
    assert (second["version"], second["ref"], second["cameras"]) == (2, "gate@2", ["cam-on-gate"])
    assert registry.registered() == {"gate": tmp_path / "models" / "gate@2.onnx"}
    assert [v.ref for v in registry.versions("gate")] == ["gate@1", "gate@2"] and heard == ["gate", "gate"]
    text = registry.card("gate")
    assert text.startswith(card) and "Registered by the service as `gate` version 2** (`gate@2`)" in text
    assert "rollback` makes version 1 current again" in text and "POST /v1/models`" not in text
    with pytest.raises(UnknownModel, match="no model card"):
        registry.card("gate@1")  # uploaded, not fitted
    # name@N pins a version; rollback makes the older one current again; an unknown version names the known
    assert registry.path("gate@1") == tmp_path / "models" / "gate@1.onnx"
    assert registry.rollback("gate")["version"] == 1 and registry.path("gate") == registry.path("gate@1")
    with pytest.raises(UnknownModel, match=r"'gate' has no version 5; versions: \[1, 2\]"):
        registry.path("gate@5")
    # deleting the current version makes the newest left current
    assert registry.remove("gate@1") == [tmp_path / "models" / "gate@1.onnx"]
    assert registry.path("gate") == tmp_path / "models" / "gate@2.onnx"
    with pytest.raises(ModelConflict, match="bundled"):
        registry.add("ped2", shutil.copy(tiny_model, tmp_path / "upload-3.onnx"))


def test_registered_models_of_the_flat_layout_become_version_1(tiny_model, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_model, models / "lobby.onnx")
    registry = ModelRegistry(StatePaths(tmp_path), "ped2", EngineConfig(device="cpu"))
    assert registry.registered() == {"lobby": models / "lobby@1.onnx"} and not (models / "lobby.onnx").exists()
    assert upgrade_layout(StatePaths(tmp_path)) == []  # once is enough
    assert registry.describe_name("lobby")["versions"][0]["ref"] == "lobby@1"


@pytest.mark.integration
def test_the_api_refuses_models_that_would_stall_the_engine(tiny_model, tmp_path, tmp_path_factory, sample_mp4):
    # given a service whose engine gives each model 30 ms per frame (the tiny model takes a few), on ONNX
    # Runtime + the PyTorch flow (on OpenVINO bf16, ped2 below takes ~15 ms and would pass)
    home = tmp_path_factory.mktemp("registry_service")
    with running_service(home, tiny_model, {"engine": {"model_budget_ms": 30, "backend": "onnxruntime"}}) as svc:
        def register(path, name):
            with open(path, "rb") as fh:
                return svc.http.post("/v1/models", params={"name": name}, files={"file": (path.name, fh)})

        state = home / "state"
        # when a model asking for 1,000,000 flow iterations is uploaded: 422 naming the setting, nothing kept
        r = register(with_metadata(tiny_model, tmp_path / "stall.onnx", flow=MILLION_ITERATIONS), "stall")
        assert r.status_code == 422, r.text
        assert "not a usable amvad model" in r.json()["error"] and "'iterations'" in r.json()["error"]
        assert "1000000" in r.json()["error"] and "[1, 1000]" in r.json()["error"]
        assert "stall" not in {m["name"] for m in svc.http.get("/v1/models").json()}
        assert not list((state / "models").glob("*")) and not list((state / "uploads").glob("*"))
        # when a legal model that costs more than the budget (ped2: 40-90 ms a frame on 2 CPU cores) is in the
        # folder (registered under a larger budget): a camera added on it or PATCHed to it is 422, and the
        # camera keeps its model
        (state / "models").mkdir(exist_ok=True)
        shutil.copy(resolve_model("ped2"), state / "models" / "heavy.onnx")
        before = add_camera(svc, "lobby", sample_mp4.as_uri())["model"]
        r = svc.http.patch("/v1/cameras/lobby", json={"model": "heavy"})
        assert r.status_code == 422 and "per-model budget of 30 ms" in r.json()["error"], r.text
        assert svc.http.get("/v1/cameras/lobby").json()["model"] == before
        r = svc.http.post("/v1/cameras", json={"id": "heavy-cam", "url": sample_mp4.as_uri(), "model": "heavy"})
        assert r.status_code == 422, r.text
        assert svc.http.get("/readyz").status_code == 200
        # and registering such a model is 422 (the registry measures it with the engine's settings)
        r = register(resolve_model("ped2"), "heavy-2")
        assert r.status_code == 422 and "per-model budget of 30 ms" in r.json()["error"], r.text
