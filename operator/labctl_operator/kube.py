"""The one place the operator talks to the Kubernetes API (besides kopf's own watching).

The official client loads credentials (kubeconfig, in-cluster service account with token refresh); requests are
sent as plain JSON and answered as plain dicts, so the rest of the operator never sees the client's models.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from labctl_operator import model


class ApiFailure(Exception):
    """The API server refused or failed a request."""

    def __init__(self, status: int, message: str, reason: str = "", causes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the types of details.causes, e.g. NamespaceTerminating


class TransientError(ApiFailure):
    """A failure that may heal by itself: the API is unreachable, overloaded, timing out, or in conflict."""


class RejectedError(ApiFailure):
    """The API server refused the object itself (invalid, forbidden): retrying the same request cannot help."""


# Statuses worth retrying: conflicts, gone watch windows, throttling, timeouts and server-side failures.
_TRANSIENT = {408, 409, 410, 425, 429, 500, 502, 503, 504}


def configuration(kubeconfig: str | Path | None = None, context: str | None = None) -> Any:
    """The official client's Configuration: from `kubeconfig` (and `context`), else in-cluster, else $KUBECONFIG."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                client_configuration=cfg, persist_config=False)
    return cfg


def now() -> str:
    """The current time as Kubernetes writes it: RFC 3339, UTC, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    """The requests the reconciler makes, on plain dicts."""

    def __init__(self, cfg: Any, *, timeout: float = 15.0) -> None:
        from kubernetes import client

        cfg.connection_pool_maxsize = max(getattr(cfg, "connection_pool_maxsize", 0) or 0, 16)
        self._client = client.ApiClient(cfg)
        self._pool = self._client.rest_client.pool_manager
        self._timeout = timeout
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    def close(self) -> None:
        self._client.close()

    # -- raw --------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> dict | None:
        """One request; the decoded answer, None for 404, TransientError or RejectedError otherwise."""
        _, url, headers, _, _ = self._client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()) or None,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        data = json.dumps(body).encode() if body is not None else None
        try:
            resp = self._pool.request(method, url, body=data, headers=headers, retries=False,
                                      timeout=urllib3.Timeout(connect=5.0, read=self._timeout))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(0, f"cannot reach the API server: {e}", "Unreachable") from e
        try:
            answer = json.loads(resp.data) if resp.data else {}
        except ValueError:
            answer = {}
        if 200 <= resp.status < 300:
            return answer
        if resp.status == 404:
            return None
        message = answer.get("message") if isinstance(answer, dict) else None
        message = message or resp.data[:300].decode("utf-8", "replace").strip() or f"HTTP {resp.status}"
        reason = answer.get("reason", "") if isinstance(answer, dict) else ""
        details = answer.get("details") if isinstance(answer, dict) else None
        causes = tuple(str(c.get("type", "")) for c in (details or {}).get("causes") or [] if isinstance(c, dict))
        if resp.status in _TRANSIENT or resp.status >= 500:
            raise TransientError(resp.status, message, reason, causes)
        raise RejectedError(resp.status, message, reason, causes)

    # -- objects ----------------------------------------------------------------------------------------

    @staticmethod
    def _path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return f"{prefix}/namespaces/{quote(namespace)}/{plural}" + (f"/{quote(name)}" if name else "")

    def microservice(self, namespace: str, name: str) -> dict | None:
        return self.request("GET", self._path(model.API_VERSION, model.PLURAL, namespace, name))

    def deployment(self, namespace: str, name: str) -> dict | None:
        return self.request("GET", self._path("apps/v1", "deployments", namespace, name))

    def service(self, namespace: str, name: str) -> dict | None:
        return self.request("GET", self._path("v1", "services", namespace, name))

    def list_all(self, api_version: str, kind: str, plural: str, label_selector: str | None = None) -> list[dict]:
        """Every object of a kind in all namespaces (each with its apiVersion and kind, which lists leave out)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        answer = self.request("GET", f"{prefix}/{plural}",
                              query={"labelSelector": label_selector} if label_selector else None)
        items = (answer or {}).get("items") or []
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: dict) -> dict:
        """Server-side apply as the operator's field manager, taking over fields someone changed by hand."""
        plural = {"Deployment": "deployments", "Service": "services"}[obj["kind"]]
        meta = obj["metadata"]
        answer = self.request("PATCH", self._path(obj["apiVersion"], plural, meta["namespace"], meta["name"]),
                              body=obj, query={"fieldManager": model.MANAGER, "force": "true"},
                              content_type="application/apply-patch+yaml")
        if answer is None:  # the namespace went away under the request
            raise TransientError(404, f"{obj['kind']} {meta['name']}: namespace {meta['namespace']} not found")
        return answer

    def replace(self, obj: dict) -> dict:
        """PUT the whole object (a conflict, when it changed since it was read, is a TransientError)."""
        plural = {"Deployment": "deployments", "Service": "services"}[obj["kind"]]
        meta = obj["metadata"]
        answer = self.request("PUT", self._path(obj["apiVersion"], plural, meta["namespace"], meta["name"]),
                              body=obj, query={"fieldManager": model.MANAGER})
        if answer is None:
            raise TransientError(404, f"{obj['kind']} {meta['name']} vanished while it was being replaced")
        return answer

    def patch_status(self, ms: dict, status: dict) -> dict | None:
        """Merge `status` into the Microservice's status subresource."""
        meta = ms["metadata"]
        return self.request("PATCH", self._path(model.API_VERSION, model.PLURAL, meta["namespace"], meta["name"])
                            + "/status", body={"status": status}, content_type="application/merge-patch+json")

    def post_event(self, ms: dict, kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event about the Microservice (`kubectl describe` and `kubectl events` show it)."""
        meta = ms["metadata"]
        stamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": ms.get("apiVersion", model.API_VERSION), "kind": model.KIND,
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion", "")},
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": model.MANAGER},
            "reportingComponent": f"{model.GROUP}/operator",
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", body=event)

    def server_version(self) -> dict | None:
        """GET /version: a cheap question every authenticated client may ask."""
        return self.request("GET", "/version")


def connection_info(cfg: Any) -> Any:
    """kopf's credentials, taken from the same Configuration the Api uses."""
    import kopf

    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )
