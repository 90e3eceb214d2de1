"""labctl's probe program: the requests in $PROBES (a JSON list), made from inside the cluster.

Prints one line `LABCTL-PROBE-RESULTS <json list>`, a result per request, and exits 0; a request that fails
is a result ({"error": ...}), not a crash. Requests (all with `timeout` in seconds and `retry`):
  {"kind": "dns", "name": "orders"}                       -> {"addresses": [...]} | {"error"}
  {"kind": "http", "url", "method", "headers", "body", "token_file"}
                                                          -> {"status", "body", "headers", "elapsed_ms"} | {"error"}
  {"kind": "tcp", "host", "port", "settle"}               -> {"connected": bool, "elapsed_ms", "error"}
  {"kind": "grpc_health", "host", "port", "service"}      -> {"status": "SERVING" ...} | {"error"}
`retry`: connection-level failures are tried again until the timeout (HTTP statuses are answers, not failures).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

MARKER = "LABCTL-PROBE-RESULTS "
BODY_LIMIT = 65536


def _until(deadline: float, retry: bool, attempt):
    """Run attempt() until it returns a result without "error", or the deadline passes (when retrying)."""
    while True:
        result = attempt(max(0.2, deadline - time.monotonic()))
        if "error" not in result or not retry or time.monotonic() + 0.5 >= deadline:
            return result
        time.sleep(0.5)


def dns(req: dict, deadline: float) -> dict:
    def attempt(_left: float) -> dict:
        try:
            infos = socket.getaddrinfo(req["name"], None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            return {"error": f"{e.strerror or e}"}
        addresses = sorted({info[4][0] for info in infos})
        return {"addresses": addresses}
    return _until(deadline, req.get("retry", True), attempt)


def http(req: dict, deadline: float) -> dict:
    headers = dict(req.get("headers") or {})
    if req.get("token_file"):
        with open(req["token_file"], encoding="utf-8") as f:
            headers["Authorization"] = "Bearer " + f.read().strip()
    body = req.get("body")
    data = body.encode() if isinstance(body, str) else None
    if data is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json" if data[:1] in (b"{", b"[") else "text/plain"

    def attempt(left: float) -> dict:
        request = urllib.request.Request(req["url"], data=data, headers=headers, method=req.get("method") or "GET")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=left) as resp:
                status, raw, got = resp.status, resp.read(BODY_LIMIT), dict(resp.headers)
        except urllib.error.HTTPError as e:  # a status is an answer
            status, raw, got = e.code, e.read(BODY_LIMIT), dict(e.headers)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            return {"error": f"cannot connect: {reason}"}
        elapsed = (time.perf_counter() - start) * 1000
        return {"status": status, "body": raw.decode("utf-8", errors="replace"), "headers": got,
                "elapsed_ms": elapsed}
    return _until(deadline, req.get("retry", True), attempt)


def tcp(req: dict, deadline: float) -> dict:
    if req.get("settle"):
        time.sleep(float(req["settle"]))

    def attempt(left: float) -> dict:
        start = time.perf_counter()
        try:
            with socket.create_connection((req["host"], int(req["port"])), timeout=min(left, 5.0)):
                pass
        except socket.timeout:
            return {"connected": False, "error": "no answer (timed out: dropped?)"}
        except OSError as e:
            return {"connected": False, "error": e.strerror or str(e)}
        return {"connected": True, "elapsed_ms": (time.perf_counter() - start) * 1000}
    return _until(deadline, req.get("retry", True), attempt)


def grpc_health(req: dict, deadline: float) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def attempt(left: float) -> dict:
        with grpc.insecure_channel(f"{req['host']}:{int(req['port'])}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=req.get("service") or ""),
                                    timeout=min(left, 5.0))
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    return {"status": "SERVICE_UNKNOWN"}
                return {"error": f"{code.name}: {e.details()}"}
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}
    return _until(deadline, req.get("retry", True), attempt)


ACTIONS = {"dns": dns, "http": http, "tcp": tcp, "grpc_health": grpc_health}


def main() -> int:
    try:
        requests = json.loads(os.environ.get("PROBES", "[]"))
    except ValueError:
        print(MARKER + json.dumps([]), flush=True)
        print("PROBES is not JSON", file=sys.stderr)
        return 2
    results = []
    for req in requests:
        deadline = time.monotonic() + float(req.get("timeout", 10))
        try:
            results.append(ACTIONS[req["kind"]](req, deadline))
        except Exception as e:  # one failing request must not lose the others' results
            results.append({"error": f"{type(e).__name__}: {e}"})
    print(MARKER + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
