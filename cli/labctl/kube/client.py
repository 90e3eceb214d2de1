"""The one place labctl talks to a Kubernetes API server.

A small REST client over urllib3: kubeconfig loading, discovery of kinds, get/list/apply/delete/watch and the
service proxy. Everything above this module receives and returns plain dicts. It is deliberately lean: importing
the official `kubernetes` package costs ~0.2–0.35 s, more than a whole `labctl check` run should take.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode

import urllib3
import yaml

from labctl.errors import ClusterUnreachable, UsageError

# (apiVersion, kind) -> (plural, namespaced). Discovery fills in everything else, once per process.
_BUILTIN: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Pod"): ("pods", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("v1", "Event"): ("events", True),
    ("v1", "Endpoints"): ("endpoints", True),
    ("v1", "LimitRange"): ("limitranges", True),
    ("v1", "ResourceQuota"): ("resourcequotas", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "Node"): ("nodes", False),
    ("v1", "PersistentVolume"): ("persistentvolumes", False),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("apps/v1", "ReplicaSet"): ("replicasets", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("batch/v1", "CronJob"): ("cronjobs", True),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("endpointslices", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("networking.k8s.io/v1", "Ingress"): ("ingresses", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("horizontalpodautoscalers", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("storage.k8s.io/v1", "StorageClass"): ("storageclasses", False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("coordination.k8s.io/v1", "Lease"): ("leases", True),
}

UNREACHABLE_HINT = "is the cluster up? run `labctl up`, or `labctl doctor` to see what is wrong"


class ApiError(Exception):
    """The API server answered with an error status (other than a missing object where that is expected)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    elapsed_ms: float
    headers: dict[str, str]


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token: str | None
    insecure: bool = False


_tmpdir: str | None = None


def _materialize(data_b64: str, suffix: str) -> str:
    """Write base64 kubeconfig data to a private file: ssl wants paths, not bytes."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.mkdtemp(prefix="labctl-kc-")
        atexit.register(shutil.rmtree, _tmpdir, True)
    fd, path = tempfile.mkstemp(dir=_tmpdir, suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    return path


def load_credentials(kubeconfig: Path, context: str) -> Credentials:
    """Read server address and credentials of `context` from a kubeconfig file."""
    try:
        config = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    except FileNotFoundError as e:
        raise ClusterUnreachable(f"kubeconfig {kubeconfig} does not exist", hint=UNREACHABLE_HINT) from e
    except yaml.YAMLError as e:
        raise UsageError(f"kubeconfig {kubeconfig} is not valid YAML: {e}") from e

    def named(section: str, name: str) -> dict:
        for entry in config.get(section) or []:
            if entry.get("name") == name:
                return entry.get(section[:-1]) or {}
        raise UsageError(
            f"kubeconfig {kubeconfig}: no {section[:-1]} named {name!r}",
            hint="`labctl kubectl config get-contexts` lists the contexts",
        )

    ctx = named("contexts", context)
    cluster = named("clusters", ctx.get("cluster", ""))
    user = named("users", ctx.get("user", "")) if ctx.get("user") else {}
    base = Path(kubeconfig).parent

    def path_or_data(file_key: str, data_key: str, section: dict, suffix: str) -> str | None:
        if section.get(data_key):
            return _materialize(section[data_key], suffix)
        if section.get(file_key):
            p = Path(section[file_key])
            return str(p if p.is_absolute() else base / p)
        return None

    return Credentials(
        server=cluster["server"].rstrip("/"),
        ca_file=path_or_data("certificate-authority", "certificate-authority-data", cluster, ".crt"),
        cert_file=path_or_data("client-certificate", "client-certificate-data", user, ".crt"),
        key_file=path_or_data("client-key", "client-key-data", user, ".key"),
        token=user.get("token"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


class Client:
    """A connection to one API server, with discovery cached for the life of the object."""

    def __init__(self, creds: Credentials, *, timeout: float = 10.0) -> None:
        self.creds = creds
        ctx = ssl.create_default_context(cafile=creds.ca_file) if not creds.insecure else ssl._create_unverified_context()
        if creds.cert_file and creds.key_file:
            ctx.load_cert_chain(creds.cert_file, creds.key_file)
        self._headers = {"Accept": "application/json", "User-Agent": "labctl"}
        if creds.token:
            self._headers["Authorization"] = f"Bearer {creds.token}"
        self._http = urllib3.PoolManager(ssl_context=ctx, maxsize=8, retries=False)
        self._timeout = timeout
        self._kinds: dict[tuple[str, str], tuple[str, bool]] = dict(_BUILTIN)
        self._discovered: set[str] = set()
        self._discovery_lock = threading.Lock()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, context: str, **kw: Any) -> "Client":
        return cls(load_credentials(kubeconfig, context), **kw)

    # -- raw requests --------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
                query: dict | None = None, timeout: float | None = None, preload: bool = True) -> Any:
        url = self.creds.server + path + (("?" + urlencode(query)) if query else "")
        try:
            return self._http.request(
                method, url, body=body, headers={**self._headers, **(headers or {})},
                timeout=urllib3.Timeout(connect=3.0, read=timeout or self._timeout), preload_content=preload,
            )
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnreachable(
                f"cannot reach the API server at {self.creds.server}: {_short(e)}", hint=UNREACHABLE_HINT
            ) from e

    def _json(self, method: str, path: str, **kw: Any) -> dict:
        resp = self.request(method, path, **kw)
        return _decode(resp, method, path)

    def raw(self, method: str, path: str, *, timeout: float = 10.0, body: bytes | None = None,
            headers: dict | None = None) -> Response:
        """A request whose answer is returned as is (the service proxy), with its duration."""
        start = time.perf_counter()
        resp = self.request(method, path, timeout=timeout, body=body, headers=headers)
        elapsed = (time.perf_counter() - start) * 1000
        return Response(resp.status, resp.data, elapsed, dict(resp.headers))

    # -- discovery -----------------------------------------------------------------------------------------

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind; asks the server's discovery once per group/version."""
        key = (api_version, kind)
        if key not in self._kinds:
            with self._discovery_lock:  # watch threads may ask for the same new kind at once
                if key not in self._kinds and api_version not in self._discovered:
                    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
                    resp = self.request("GET", path)
                    if resp.status == 200:
                        for r in json.loads(resp.data).get("resources", []):
                            if "/" not in r["name"]:
                                self._kinds.setdefault((api_version, r["kind"]), (r["name"], r["namespaced"]))
                        self._discovered.add(api_version)
        if key not in self._kinds:
            raise ApiError(404, f"the server does not know {kind} in {api_version} (is its CRD installed?)",
                           "NotFound")
        return self._kinds[key]

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        plural, namespaced = self.resource(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = f"/namespaces/{quote(namespace)}" if namespaced and namespace else ""
        return f"{prefix}{ns}/{plural}" + (f"/{quote(name)}" if name else "")

    def namespaced(self, api_version: str, kind: str) -> bool:
        return self.resource(api_version, kind)[1]

    # -- verbs ---------------------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return self._json("GET", self.path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None, *,
             label_selector: str | None = None) -> tuple[list[dict], str]:
        """All objects of a kind in a namespace (or cluster-wide), and the list's resourceVersion."""
        query = {"labelSelector": label_selector} if label_selector else None
        try:
            data = self._json("GET", self.path(api_version, kind, namespace), query=query)
        except ApiError as e:
            if e.status == 404 and e.reason == "NotFound":
                return [], ""
            raise
        items = data.get("items") or []
        for item in items:  # list items come without apiVersion/kind; checks and reasons want them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, data.get("metadata", {}).get("resourceVersion", "")

    def apply(self, obj: dict, *, field_manager: str = "labctl", force: bool = True) -> dict:
        """Server-side apply of one object."""
        meta = obj.get("metadata") or {}
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return self._json("PATCH", path, body=json.dumps(obj).encode(), query=query,
                          headers={"Content-Type": "application/apply-patch+yaml"})

    def merge_patch(self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict) -> dict:
        """A JSON merge patch (RFC 7386) of one object."""
        return self._json("PATCH", self.path(api_version, kind, namespace, name), body=json.dumps(patch).encode(),
                          headers={"Content-Type": "application/merge-patch+json"})

    def pod_log(self, namespace: str, name: str, container: str | None = None, *, limit_bytes: int = 1 << 20) -> str:
        """A pod's log (the kubelet serves it through the API server)."""
        query = {"limitBytes": str(limit_bytes), **({"container": container} if container else {})}
        resp = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log", query=query)
        if resp.status != 200:
            _decode(resp, "GET", f"pods/{name}/log")
        return resp.data.decode("utf-8", errors="replace")

    def create(self, obj: dict) -> dict:
        meta = obj.get("metadata") or {}
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self._json("POST", path, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
               propagation: str = "Background") -> bool:
        """Delete an object; False when it was already gone."""
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}).encode()
        try:
            self._json("DELETE", self.path(api_version, kind, namespace, name), body=body,
                       headers={"Content-Type": "application/json"})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def delete_collection(self, api_version: str, kind: str, namespace: str) -> None:
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}).encode()
        try:
            self._json("DELETE", self.path(api_version, kind, namespace), body=body,
                       headers={"Content-Type": "application/json"})
        except ApiError as e:
            if e.status not in (404, 405):
                raise

    def watch(self, api_version: str, kind: str, namespace: str | None = None, *, resource_version: str = "",
              timeout_seconds: int = 290) -> Iterator[dict]:
        """Events ({type, object}) of a kind in a namespace, from `resource_version`, until the server ends it."""
        query = {"watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        if resource_version:
            query["resourceVersion"] = resource_version
        resp = self.request("GET", self.path(api_version, kind, namespace), query=query,
                            timeout=timeout_seconds + 10, preload=False)
        if resp.status != 200:
            _decode(resp, "WATCH", kind)
        buffer = b""
        try:
            for chunk in resp.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ClusterUnreachable(f"the watch on {kind} broke: {_short(e)}", hint=UNREACHABLE_HINT) from e
        finally:
            resp.release_conn()

    def service_proxy(self, namespace: str, service: str, port: int | str, path: str, *, method: str = "GET",
                      timeout: float = 10.0, body: str | None = None) -> Response:
        """A plain HTTP request to a Service through the API server's service proxy (a JSON body is sent as such)."""
        target = f"{quote(service)}:{port}"
        data = body.encode() if body is not None else None
        headers = None
        if data is not None:
            headers = {"Content-Type": "application/json" if data.lstrip()[:1] in (b"{", b"[") else "text/plain"}
        return self.raw(method, f"/api/v1/namespaces/{quote(namespace)}/services/{target}/proxy/{path.lstrip('/')}",
                        timeout=timeout, body=data, headers=headers)

    def readyz(self) -> bool:
        try:
            return self.request("GET", "/readyz", timeout=3).status == 200
        except ClusterUnreachable:
            return False


def _decode(resp: Any, method: str, path: str) -> dict:
    try:
        data = json.loads(resp.data) if resp.data else {}
    except ValueError:
        data = {}
    if 200 <= resp.status < 300:
        return data
    message = data.get("message") or resp.data[:200].decode("utf-8", "replace").strip() or f"HTTP {resp.status}"
    if resp.status >= 500 and resp.status != 504:
        raise ClusterUnreachable(f"the API server failed: {message}", hint=UNREACHABLE_HINT)
    raise ApiError(resp.status, message, data.get("reason", ""))


def _short(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:160]
