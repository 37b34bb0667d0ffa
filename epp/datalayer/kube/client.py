"""An API client from the options: --kube-api-server, then --kubeconfig, then in-cluster, then ~/.kube/config."""

from __future__ import annotations

import os

import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from epp.options import Options


class KubeConfigError(RuntimeError):
    """No usable cluster configuration; the message says what was tried."""


def api_client(opts: Options) -> client.ApiClient:
    cfg = client.Configuration()
    try:
        if opts.kubeconfig:
            config.load_kube_config(config_file=opts.kubeconfig, client_configuration=cfg)
        elif not opts.kube_api_server:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                config.load_kube_config(client_configuration=cfg)
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(
            f"no Kubernetes configuration ({exc}); pass --kubeconfig or --kube-api-server, or run in a pod"
        ) from None
    if opts.kube_api_server:
        cfg.host = opts.kube_api_server.rstrip("/")
    # The watch threads share one client; keep enough pooled connections for all of them.
    cfg.connection_pool_maxsize = 8
    return client.ApiClient(cfg)


def served_resources(api: client.ApiClient, group: str, version: str, timeout: float = 10.0) -> set[str] | None:
    """Plural names served under group/version, or None when the group/version is not served (404).

    Other errors (API server unreachable...) raise, so the caller retries instead of deciding
    that the CRDs are absent.
    """
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    method, url, headers, body, post = api.param_serialize(
        "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    resp = api.call_api(method, url, header_params=headers, body=body, post_params=post, _request_timeout=timeout)
    if resp.status == 404:
        return None
    if resp.status >= 400:
        raise ApiException(status=resp.status, reason=resp.reason)
    doc = orjson.loads(resp.read())
    return {r["name"] for r in doc.get("resources", []) if "/" not in r["name"]}
