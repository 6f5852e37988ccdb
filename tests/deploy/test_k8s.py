"""Kubernetes manifests (kustomize) offline: they parse, the kustomization's files exist, probes, GPU,
sharding settings agree, the PrometheusRule carries the shipped rules, and the shard init step really
splits a camera list into disjoint shards the service accepts."""

from __future__ import annotations

import os
import subprocess
import sys

from amvad.service.config import load_settings
from tests.support.deploy import DEPLOY, RULES, load_yaml, load_yaml_all

K8S = DEPLOY / "k8s"


def manifests() -> dict[str, dict]:
    kust = load_yaml(K8S / "kustomization.yaml")
    docs = {}
    for name in kust["resources"]:
        assert (K8S / name).is_file(), f"kustomization lists missing {name}"
        for doc in load_yaml_all(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
            docs[doc["kind"]] = doc
    for gen in kust["configMapGenerator"]:
        for f in gen["files"]:
            assert (K8S / f).is_file(), f"configMapGenerator lists missing {f}"
    return docs


def test_statefulset_probes_gpu_state_and_sharding():
    docs = manifests()
    sts = docs["StatefulSet"]
    spec = sts["spec"]["template"]["spec"]
    (app,) = spec["containers"]
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"] for p in app["ports"]}
    assert app["readinessProbe"]["httpGet"]["port"] in port_names
    assert app["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in app["env"]}
    assert "secretKeyRef" in env["AMVAD_API_KEY"]["valueFrom"]
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    assert mounts[env["AMVAD_STATE_DIR"]["value"]] in {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    (init,) = spec["initContainers"]
    init_env = {e["name"]: e for e in init["env"]}
    assert int(init_env["AMVAD_SHARDS"]["value"]) == sts["spec"]["replicas"], "AMVAD_SHARDS must equal replicas"
    assert init_env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert app["args"][-1] == init["command"][-1], "the service reads the config the init step writes"
    svc = docs["Service"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_prometheusrule_carries_the_shipped_rules():
    assert manifests()["PrometheusRule"]["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_shard_step_splits_cameras_disjointly_into_valid_configs(tmp_path):
    cameras = load_yaml(K8S / "cameras.yaml")["cameras"]
    replicas = 3
    seen = []
    for ordinal in range(replicas):
        out = tmp_path / f"service-{ordinal}.yaml"
        res = subprocess.run([sys.executable, str(K8S / "shard.py"), str(K8S / "cameras.yaml"), str(out)],
                             env={**os.environ, "POD_NAME": f"amvad-{ordinal}", "AMVAD_SHARDS": str(replicas)},
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        settings = load_settings(out)  # the service accepts the written config
        ids = [c.id for c in settings.cameras]
        assert ids == [c["id"] for i, c in enumerate(cameras) if i % replicas == ordinal]
        seen += ids
    assert sorted(seen) == sorted(c["id"] for c in cameras)
    # a pod outside the shard count refuses to start instead of serving nothing
    res = subprocess.run([sys.executable, str(K8S / "shard.py"), str(K8S / "cameras.yaml"), str(tmp_path / "x")],
                         env={**os.environ, "POD_NAME": "amvad-3", "AMVAD_SHARDS": "3"}, capture_output=True, text=True)
    assert res.returncode != 0 and "AMVAD_SHARDS" in res.stderr
