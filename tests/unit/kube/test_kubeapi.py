"""The test API server speaks the real protocol: kubectl and the kubernetes client both work against it."""

from __future__ import annotations

import shutil
import subprocess
import time

import orjson
import pytest
from kubernetes import client

from tests.support.kubeapi import LEASES, PODS, POOL_V1, KubeApiServer
from tests.unit.kube.conftest import NS, pod, pool

kubectl = shutil.which("kubectl")


def run_kubectl(server: KubeApiServer, tmp_path, *args: str) -> str:
    r = subprocess.run(
        [kubectl, f"--server={server.url}", f"--cache-dir={tmp_path}/cache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin"},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(kubectl is None, reason="kubectl is not installed")
def test_kubectl_get_and_watch(kubeapi, tmp_path):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    assert "vllm-0" in run_kubectl(kubeapi, tmp_path, "get", "pods")
    doc = orjson.loads(run_kubectl(kubeapi, tmp_path, "get", "infpool", "pool", "-o", "json"))
    assert doc["spec"]["targetPorts"] == [{"number": 8000}] and doc["kind"] == "InferencePool"
    assert run_kubectl(kubeapi, tmp_path, "get", "pods", "-l", "app=vllm", "-o", "name").split() == ["pod/vllm-0"]
    assert "inferenceobjectives" in run_kubectl(kubeapi, tmp_path, "api-resources")

    watch = subprocess.Popen(
        [kubectl, f"--server={kubeapi.url}", f"--cache-dir={tmp_path}/cache", "get", "pods", "--watch", "-o", "name"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin"},
    )
    try:
        deadline = time.monotonic() + 20
        while kubeapi.watch_count(PODS) == 0:  # kubectl lists, then watches from the list's resourceVersion
            assert time.monotonic() < deadline and watch.poll() is None, watch.stderr.read() if watch.poll() else ""
            time.sleep(0.05)
        kubeapi.create(PODS, pod("vllm-1", "10.0.0.2"))
        kubeapi.delete(PODS, NS, "vllm-0")
        lines = []
        while len(lines) < 3 and time.monotonic() < deadline:
            lines.append(watch.stdout.readline().strip())
        assert lines == ["pod/vllm-0", "pod/vllm-1", "pod/vllm-0"]  # listed, added, deleted
    finally:
        watch.terminate()
        watch.wait(5)
    assert any("watch=true" in path and "resourceVersion=" in path for _, path in kubeapi.requests)


def test_client_list_watch_bookmarks_410_and_conflicts(kubeapi):
    cfg = client.Configuration()
    cfg.host = kubeapi.url
    core = client.CoreV1Api(client.ApiClient(cfg))
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    listed = core.list_namespaced_pod(NS)
    rv = listed.metadata.resource_version
    assert [p.metadata.name for p in listed.items] == ["vllm-0"]

    kubeapi.create(PODS, pod("vllm-1", "10.0.0.2"))
    resp = core.list_namespaced_pod(
        NS, watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=2, _preload_content=False
    )
    events = [orjson.loads(line) for line in resp.data.splitlines() if line]
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "vllm-1"
    assert {e["type"] for e in events[1:]} == {"BOOKMARK"}  # the stream ended after timeoutSeconds

    kubeapi.compact()
    resp = core.list_namespaced_pod(NS, watch=True, resource_version=rv, _preload_content=False)
    gone = orjson.loads(resp.data.splitlines()[0])
    assert gone["type"] == "ERROR" and gone["object"]["code"] == 410

    lease = kubeapi.create(LEASES, {"metadata": {"name": "l", "namespace": NS}, "spec": {"holderIdentity": "a"}})
    coord = client.CoordinationV1Api(client.ApiClient(cfg))
    lease["spec"]["holderIdentity"] = "b"
    coord.replace_namespaced_lease("l", NS, lease)
    with pytest.raises(client.ApiException) as err:  # stale resourceVersion
        coord.replace_namespaced_lease("l", NS, lease)
    assert err.value.status == 409
