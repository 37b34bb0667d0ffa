"""deploy/: the rendered manifests validate offline, agree with the chart, and start a real `epp`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.cli import parse_options
from epp.scheduling.config import load_config

# Dev dependency (pyproject `dev` extra); jsonschema comes with it.
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "deploy" / "manifests"
CHART = ROOT / "deploy" / "helm" / "epp"
K8S_VERSIONS = ("1.29.0", "1.33.0")  # gRPC probes, coordination/v1 and the rest are GA in both

# The CRDs are not in the Kubernetes schemas: check them against their published shapes (gie-epp.md §2).
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
CRD_SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "targetPorts"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["matchLabels"],
                        "properties": {
                            "matchLabels": {
                                "type": "object",
                                "minProperties": 1,
                                "maxProperties": 64,
                                "additionalProperties": {"type": "string"},
                            }
                        },
                    },
                    "targetPorts": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 8,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["number"],
                            "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}},
                        },
                    },
                    "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
                    "endpointPickerRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": _NAME,
                            "port": {
                                "type": "object",
                                "required": ["number"],
                                "properties": {"number": {"type": "integer"}},
                            },
                            "failureMode": {"enum": ["FailOpen", "FailClose"]},
                        },
                    },
                },
            }
        },
    },
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["poolRef"],
                "properties": {
                    "priority": {"type": "integer"},
                    "poolRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME},
                    },
                },
            }
        },
    },
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["parentRefs", "rules"],
                "properties": {
                    "parentRefs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "backendRefs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name"],
                                        "properties": {
                                            "group": {"type": "string"},
                                            "kind": {"type": "string"},
                                            "name": _NAME,
                                        },
                                    },
                                },
                                "timeouts": {
                                    "type": "object",
                                    "properties": {"request": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"}},
                                },
                            },
                        },
                    },
                },
            }
        },
    },
}


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str) -> dict:
    found = [d for _, d in documents() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_every_manifest_validates_against_the_kubernetes_schemas():
    docs = documents()
    kinds = {d["kind"] for _, d in docs}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "InferencePool",
        "InferenceObjective",
        "HTTPRoute",
    } <= kinds
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for name, doc in docs:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], name
        else:
            assert doc["metadata"]["namespace"] == "default", name
        crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd is not None:
            jsonschema.validate(doc, crd)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises with the offending field


def test_deployment_args_are_accepted_by_the_real_parser_and_match_the_pool(monkeypatch):
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as in a pod: binds 0.0.0.0
    opts, warnings = parse_options(container["args"])
    pool = one("InferencePool")
    assert (opts.pool_name, opts.pool_namespace) == (pool["metadata"]["name"], pool["metadata"]["namespace"])
    assert opts.pool_group == pool["apiVersion"].split("/")[0]
    assert opts.bind_address == "0.0.0.0"
    assert opts.ha_enable_leader_election == (one("Deployment")["spec"]["replicas"] > 1)
    assert warnings == []  # --tracing=false is a real flag now (docs/tracing.md)
    assert opts.tracing is False
    # The config file the args name is in the mounted ConfigMap, and it loads.
    mount = container["volumeMounts"][0]["mountPath"]
    assert opts.config_file.startswith(mount + "/")
    cm = one("ConfigMap")
    load_config(cm["data"][opts.config_file[len(mount) + 1 :]], opts.config_file)
    # Downward API env and gRPC probes on the health port with the HA service names.
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert container["readinessProbe"]["grpc"] == {"port": opts.grpc_health_port, "service": "readiness"}
    assert container["livenessProbe"]["grpc"] == {"port": opts.grpc_health_port, "service": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": opts.grpc_port, "grpc-health": opts.grpc_health_port, "metrics": opts.metrics_port}


def test_objects_refer_to_each_other():
    deployment, service, pool = one("Deployment"), one("Service"), one("InferencePool")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels == deployment["spec"]["selector"]["matchLabels"]
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    sa = one("ServiceAccount")["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa
    binding = one("RoleBinding")
    assert binding["subjects"][0]["name"] == sa and binding["roleRef"]["name"] == one("Role")["metadata"]["name"]
    granted = {
        (g, r): set(rule["verbs"])
        for rule in one("Role")["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for need in [
        ("", "pods"),
        ("inference.networking.k8s.io", "inferencepools"),
        ("inference.networking.x-k8s.io", "inferenceobjectives"),
        ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
        ("coordination.k8s.io", "leases"),
    ]:
        assert {"get", "list", "watch"} <= granted[need], need
    assert {"create", "update"} <= granted[("coordination.k8s.io", "leases")]
    for objective in (d for _, d in documents() if d["kind"] == "InferenceObjective"):
        assert objective["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
    route = one("HTTPRoute")["spec"]["rules"][0]["backendRefs"][0]
    assert (route["group"], route["kind"], route["name"]) == (
        "inference.networking.k8s.io",
        "InferencePool",
        pool["metadata"]["name"],
    )


def test_manifests_are_in_step_with_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rendered_with = yaml.safe_load((CHART / "ci" / "manifests-values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    ie = values["inferenceExtension"]
    # Every rendered file names the template it came from, and that template exists.
    for path in MANIFESTS.glob("*.yaml"):
        sources = {
            line.split("Source: ", 1)[1].strip()
            for line in path.read_text().splitlines()
            if line.startswith("# Source: ")
        }
        assert sources, path.name
        for source in sources:
            assert (CHART.parent / source).exists(), source
    deployment, pool = one("Deployment"), one("InferencePool")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (
        container["image"] == f"{ie['image']['name']}:{ie['image']['tag']}"
        and ie["image"]["tag"] == chart["appVersion"]
    )
    assert deployment["spec"]["replicas"] == rendered_with["inferenceExtension"]["replicas"]
    assert container["resources"] == ie["resources"]
    assert pool["spec"]["targetPorts"] == values["inferencePool"]["targetPorts"]
    assert pool["spec"]["selector"]["matchLabels"] == rendered_with["inferencePool"]["modelServers"]["matchLabels"]
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == ie["failureMode"] == "FailOpen"
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] == ie["extProcPort"]
    assert [
        (d["metadata"]["name"], d["spec"]["priority"]) for _, d in documents() if d["kind"] == "InferenceObjective"
    ] == [(o["name"], o["priority"]) for o in rendered_with["inferenceObjectives"]]
    # The chart's ConfigMap template carries the same default config text as the rendered one.
    template = (CHART / "templates" / "configmap.yaml").read_text()
    for line in one("ConfigMap")["data"]["default-plugins.yaml"].splitlines():
        assert line in template, line


def test_dockerfile_runs_epp_as_a_numeric_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["epp"]' in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"


def test_metrics_auth_is_granted_what_it_needs():
    """Auth is on by default in Kubernetes: the EPP must be allowed both reviews, or every scrape is a 500."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["inferenceExtension"]["monitoring"]["prometheus"]["auth"]["enabled"] is True
    deployment = one("Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metrics-endpoint-auth=false" not in args
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    granted = set()
    roles = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "ClusterRole"}
    for _, binding in documents():
        if binding["kind"] != "ClusterRoleBinding":
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in binding["subjects"]):
            continue
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            if "create" in rule["verbs"]:
                granted.update((g, r) for g in rule["apiGroups"] for r in rule["resources"])
    assert {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")} <= granted
    # The chart's ServiceMonitor hands Prometheus a token when auth is on, and the flag goes off with it.
    monitor = (CHART / "templates" / "servicemonitor.yaml").read_text()
    assert "type: Bearer" in monitor and 'nonResourceURLs: ["/metrics"]' in monitor
    assert "--metrics-endpoint-auth=false" in (CHART / "templates" / "deployment.yaml").read_text()
