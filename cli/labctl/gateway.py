"""The `gateway-api` add-on: the Gateway API's CRDs everywhere, and Traefik as its implementation where pods run.

The CRDs are the standard channel of the `sigs.k8s.io/gateway-api` Go module at a pinned version (the module
proxy checks the module's hash against the checksum database; the files are cached under labctl's cache, so a
second cluster needs no network). On local and kind, Traefik runs in `labctl-system` from an image of the
toolbox's binary, with RBAC for what its Gateway provider reads and the statuses it writes, and one entrypoint
`web` on :8000: Gateways of the class `traefik` listen on port 8000 and are reached through the Service
`labctl-system/traefik`. On sim (no pods) the class exists but nothing programs it: status checks say so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from labctl import paths
from labctl.errors import EnvironmentProblem
from labctl.providers.base import Progress, quiet

GATEWAY_API_VERSION = "v1.4.0"
MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
NAMESPACE = "labctl-system"
TRAEFIK = "traefik"
WEB_PORT = 8000
MANAGED_BY = {"app.kubernetes.io/managed-by": "labctl"}


def crd_cache() -> Path:
    return paths.cache_dir() / "gateway-api" / GATEWAY_API_VERSION


def crd_objects(progress: Progress = quiet) -> list[dict]:
    """The standard channel's CRDs, labelled as labctl's (fetched once from the Go module proxy)."""
    import yaml

    cache = crd_cache() / "standard.yaml"
    if not cache.is_file():
        folder = _module_dir(progress) / "config" / "crd" / "standard"
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise EnvironmentProblem(f"{MODULE}@{GATEWAY_API_VERSION} has no CRDs in config/crd/standard")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("\n---\n".join(f.read_text() for f in files))
        tmp.replace(cache)
    objects = []
    for doc in yaml.safe_load_all(cache.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(MANAGED_BY)
            objects.append(doc)
    return objects


def _module_dir(progress: Progress) -> Path:
    from labctl.toolbox.gobuild import _build_env, go_binary

    go = go_binary()
    if go is None:
        raise EnvironmentProblem(f"the Gateway API CRDs come from the Go module {MODULE}, and Go is not installed",
                                 hint="install Go (https://go.dev/dl), as the toolbox needs it too")
    progress(f"fetching the Gateway API CRDs ({MODULE}@{GATEWAY_API_VERSION})")
    cmd = [go, "mod", "download", "-json", f"{MODULE}@{GATEWAY_API_VERSION}"]
    done = subprocess.run(cmd, env=_build_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, cwd=paths.cache_dir() if paths.cache_dir().is_dir() else None)
    try:
        info = json.loads(done.stdout)
    except ValueError:
        info = {}
    if done.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"cannot fetch {MODULE}@{GATEWAY_API_VERSION}: {detail}",
                                 hint="is the Go module proxy reachable? (go env GOPROXY)")
    return Path(info["Dir"])


def gateway_class() -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS, "labels": dict(MANAGED_BY)},
        "spec": {"controllerName": CONTROLLER_NAME,
                 "description": "Traefik, run by labctl in labctl-system; listeners on port 8000"},
    }


def traefik_image() -> str:
    from labctl.toolbox import COMPONENTS

    return f"labctl.local/traefik:{COMPONENTS['traefik'].version}"


def traefik_objects(image: str) -> list[dict]:
    """Traefik with the Gateway API provider: ServiceAccount, least-privilege RBAC, Deployment, Service."""
    labels = {"app.kubernetes.io/name": TRAEFIK, **MANAGED_BY}
    gw = "gateway.networking.k8s.io"
    rules = [
        {"apiGroups": [""], "resources": ["namespaces", "nodes", "services", "secrets", "configmaps"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [gw], "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes",
                                           "referencegrants", "backendtlspolicies", "tcproutes", "tlsroutes"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [gw], "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status",
                                           "grpcroutes/status", "backendtlspolicies/status", "tcproutes/status",
                                           "tlsroutes/status"],
         "verbs": ["update", "patch"]},
    ]
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}
    args = [
        f"--entryPoints.web.address=:{WEB_PORT}",
        "--entryPoints.traefik.address=:9000",
        "--ping=true",
        "--ping.entryPoint=traefik",
        "--providers.kubernetesgateway=true",
        "--providers.kubernetesgateway.statusAddress.service.name=traefik",
        f"--providers.kubernetesgateway.statusAddress.service.namespace={NAMESPACE}",
        "--log.level=INFO",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TRAEFIK, "namespace": NAMESPACE,
                                                                    "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "labctl-traefik", "labels": labels}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "labctl-traefik", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "labctl-traefik"},
         "subjects": [{"kind": "ServiceAccount", "name": TRAEFIK, "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": TRAEFIK, "namespace": NAMESPACE, "labels": labels},
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": {"app.kubernetes.io/name": TRAEFIK}},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "serviceAccountName": TRAEFIK,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": TRAEFIK,
                         "image": image,
                         "imagePullPolicy": "IfNotPresent",
                         "args": args,
                         "ports": [{"name": "web", "containerPort": WEB_PORT},
                                   {"name": "admin", "containerPort": 9000}],
                         "readinessProbe": {"httpGet": {"path": "/ping", "port": "admin"}, "periodSeconds": 2},
                         "livenessProbe": {"httpGet": {"path": "/ping", "port": "admin"}, "periodSeconds": 10,
                                           "failureThreshold": 3},
                         "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                       "limits": {"cpu": "1", "memory": "256Mi"}},
                         "securityContext": restricted,
                         "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                     }],
                     "volumes": [{"name": "tmp", "emptyDir": {}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": TRAEFIK, "namespace": NAMESPACE, "labels": labels},
         "spec": {"selector": {"app.kubernetes.io/name": TRAEFIK},
                  "ports": [{"name": "web", "port": WEB_PORT, "targetPort": "web"}]}},
    ]


def ensure_gateway_api(target: Any, client: Any, progress: Progress = quiet) -> None:
    """The CRDs and the GatewayClass; Traefik too where pods run."""
    from labctl.addons import system_namespace, wait_established
    from labctl.apply import wait_ready

    crds = crd_objects(progress)
    for crd in crds:
        client.apply(crd)
    for crd in crds:
        wait_established(client, crd["metadata"]["name"])
    progress(f"Gateway API {GATEWAY_API_VERSION} CRDs applied")
    client.apply(gateway_class())
    if not target.pods_run:
        progress("no Gateway controller on this provider: routes are checked as declared")
        return
    image = ensure_traefik_image(target, progress)
    system_namespace(client)
    objects = traefik_objects(image)
    for obj in objects:
        client.apply(obj)
    wait_ready(client, objects, timeout=120)
    progress(f"Traefik ready in {NAMESPACE} (GatewayClass {GATEWAY_CLASS}, listeners on port {WEB_PORT})")


def ensure_traefik_image(target: Any, progress: Progress = quiet) -> str:
    """The image of the toolbox's traefik binary on the target's node (built by the toolbox if need be)."""
    from labctl.images.ensure import ensure_toolbox_image

    image = traefik_image()
    ensure_toolbox_image(target, image, TRAEFIK, progress)
    return image


def release_gateway_api(client: Any, progress: Progress = quiet) -> None:
    """Remove Traefik, the class and the CRDs labctl applied (CRDs without labctl's label are someone else's)."""
    for obj in reversed(traefik_objects(traefik_image())):
        meta = obj["metadata"]
        client.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    client.delete("gateway.networking.k8s.io/v1", "GatewayClass", GATEWAY_CLASS)
    crds, _ = client.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    for crd in crds:
        meta = crd.get("metadata") or {}
        if meta.get("name", "").endswith(".gateway.networking.k8s.io") and \
                (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "labctl":
            client.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", meta["name"])
    progress("Traefik, the GatewayClass and the Gateway API CRDs removed")
