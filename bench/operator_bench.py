"""The Microservice operator against a trivial kopf operator, on the same sim cluster, in the same run.

- latency: Microservices created one at a time; time from the create request to the Deployment appearing
  (the baseline: to its one ConfigMap appearing), seen through a watch. p50 and p99.
- burst: 200 Microservices created at once by 8 clients; time until all 200 are Ready (their status says so for
  the current generation), and until all 200 Deployments exist (the baseline: all 200 ConfigMaps).
- memory: the operator's resident set after the burst, and its peak (VmHWM).
- the floor: the same Deployments and Services applied directly by a client, no operator at all: what the
  cluster itself costs (on a busy machine most of the burst time is the API server's, not the operator's).

The baseline is the smallest useful kopf operator (one handler: on create, create one owned ConfigMap), so the
ratio shows what the real reconcile (validation, two children by server-side apply, status, events, drift
watching) costs over kopf itself.

    python bench/operator_bench.py [--latency-samples N] [--burst N] [--kubeconfig FILE --context NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
LABCTL = str(VENV_BIN / "labctl")

NAMESPACES: list[str] = []  # deleted at the end when the cluster is not the benchmark's own

BASELINE = '''
import kopf
import kubernetes


@kopf.on.startup()
def configure(settings, **_):
    settings.peering.standalone = True
    settings.scanning.disabled = True


@kopf.on.create("labctl.dev", "v1alpha1", "microservices")
def create(name, namespace, body, **_):
    config_map = {"metadata": {"name": name}, "data": {"image": body["spec"]["image"]}}
    kopf.adopt(config_map, owner=body)
    kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, config_map)
'''


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Seen:
    """When each object of a kind was first seen (ADDED) in a namespace, or first seen passing `ready`."""

    def __init__(self, client, api_version: str, kind: str, namespace: str, ready=None) -> None:
        self.times: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False
        self._args = (client, api_version, kind, namespace, ready)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        time.sleep(0.3)  # the watch is open before anything is created

    def _run(self) -> None:
        from labctl.errors import LabError

        client, api_version, kind, namespace, ready = self._args
        while not self.stop:
            try:
                items, rv = client.list(api_version, kind, namespace)
                for item in items:
                    self._note(item, ready)
                for event in client.watch(api_version, kind, namespace, resource_version=rv, timeout_seconds=30):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._note(event["object"], ready)
                    if self.stop:
                        return
            except LabError:  # a watch cut short under load: list again, nothing is missed
                time.sleep(0.2)

    def _note(self, obj: dict, ready) -> None:
        name = obj["metadata"]["name"]
        if name in self.times or (ready is not None and not ready(obj)):
            return
        with self.cond:
            self.times[name] = time.perf_counter()
            self.cond.notify_all()

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        with self.cond:
            while not all(n in self.times for n in names):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


def microservice_reconciled(obj: dict) -> bool:
    """The operator has done its part: children made and the status written for the current generation (Ready,
    or waiting on the cluster's controllers to roll the pods out)."""
    status = obj.get("status") or {}
    reasons = {c.get("type"): c.get("reason") for c in status.get("conditions") or []}
    return (status.get("observedGeneration") == obj["metadata"].get("generation")
            and reasons.get("Ready") in ("Available", "RollingOut") and reasons.get("Degraded") == "AsExpected")


def microservice_ready(obj: dict) -> bool:
    status = obj.get("status") or {}
    return (status.get("observedGeneration") == obj["metadata"].get("generation")
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []))


def microservice(name: str) -> dict:
    return {"apiVersion": "labctl.dev/v1alpha1", "kind": "Microservice", "metadata": {"name": name},
            "spec": {"image": "labctl.local/hello:1.0", "replicas": 1}}


def new_namespace(client, name: str) -> str:
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def drop_namespace(client, namespace: str, timeout: float = 180) -> None:
    client.delete("v1", "Namespace", namespace)
    deadline = time.monotonic() + timeout
    while client.get("v1", "Namespace", namespace) and time.monotonic() < deadline:
        time.sleep(0.5)


def create(client, namespace: str, name: str) -> None:
    obj = microservice(name)
    obj["metadata"]["namespace"] = namespace
    client.create(obj)


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def measure(label: str, client, child: tuple[str, str], with_ready: bool, samples: int, burst: int) -> dict:
    """Latency and burst for whichever operator is running now."""
    run = f"{os.getpid()}-{int(time.time())}"
    ns = new_namespace(client, f"bench-{label}-lat-{run}")
    NAMESPACES.append(ns)
    seen = Seen(client, *child, ns)
    settled = Seen(client, "labctl.dev/v1alpha1", "Microservice", ns, microservice_ready) if with_ready else None
    latencies = []
    for i in range(samples):
        name = f"m{i:03d}"
        started = time.perf_counter()
        create(client, ns, name)
        if not seen.wait([name], 30):
            raise SystemExit(f"{label}: no {child[1]} for {name} within 30s")
        latencies.append(seen.times[name] - started)
        # One at a time: the previous one has settled (Ready), so this measures a reconcile, not a queue.
        if settled is not None and not settled.wait([name], 30):
            raise SystemExit(f"{label}: {name} not Ready within 30s")
        time.sleep(0.05)
    seen.stop = True
    if settled is not None:
        settled.stop = True
    drop_namespace(client, ns)  # the sim nodes hold 330 pods: the burst gets them all

    ns = new_namespace(client, f"bench-{label}-burst-{run}")
    NAMESPACES.append(ns)
    names = [f"b{i:03d}" for i in range(burst)]
    children = Seen(client, *child, ns)
    ready = Seen(client, "labctl.dev/v1alpha1", "Microservice", ns, microservice_ready) if with_ready else None
    reconciled = (Seen(client, "labctl.dev/v1alpha1", "Microservice", ns, microservice_reconciled)
                  if with_ready else None)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: create(client, ns, n), names))
    created = time.perf_counter()
    if not children.wait(names, 300):
        raise SystemExit(f"{label}: only {len(children.times)}/{burst} {child[1]}s after 300s")
    result = {
        "latency_p50_ms": ms(statistics.median(latencies)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "latency_samples": samples, "burst": burst, "burst_create_s": round(created - started, 2),
        "burst_children_s": round(max(children.times.values()) - started, 2),
    }
    if reconciled is not None:
        if not reconciled.wait(names, 300):
            raise SystemExit(f"{label}: only {len(reconciled.times)}/{burst} reconciled after 300s")
        result["burst_reconciled_s"] = round(max(reconciled.times.values()) - started, 2)
        reconciled.stop = True
    if ready is not None:
        # Ready also waits for the controller-manager, the scheduler and kwok to roll 200 pods out; on a busy
        # machine kwok's node heartbeats can lapse, and pods marked not ready then stay so: say how many made it.
        if ready.wait(names, 120):
            result["burst_ready_s"] = round(max(ready.times.values()) - started, 2)
        else:
            result["burst_ready_s"] = None
            result["burst_ready_count"] = len(ready.times)
        ready.stop = True
    children.stop = True
    return result


def direct_children(namespace: str, name: str) -> list[dict]:
    """The Deployment and Service the operator would make for a Microservice, without the Microservice."""
    from labctl_operator import model

    ms = microservice(name)
    ms["metadata"].update(namespace=namespace, uid="none", generation=1)
    children = [model.desired_deployment(ms), model.desired_service(ms)]
    for child in children:
        del child["metadata"]["ownerReferences"]
    return children


def deployment_available(obj: dict) -> bool:
    status = obj.get("status") or {}
    return (status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
            and (status.get("availableReplicas") or 0) >= (obj.get("spec") or {}).get("replicas", 1))


def measure_direct(client, samples: int, burst: int) -> dict:
    """The floor: no operator at all, a client applying the same Deployment and Service itself."""
    run = f"{os.getpid()}-{int(time.time())}"
    ns = new_namespace(client, f"bench-direct-lat-{run}")
    NAMESPACES.append(ns)
    seen = Seen(client, "apps/v1", "Deployment", ns)
    available = Seen(client, "apps/v1", "Deployment", ns, deployment_available)
    latencies = []
    for i in range(samples):
        name = f"m{i:03d}"
        started = time.perf_counter()
        for child in direct_children(ns, name):
            client.apply(child)
        if not seen.wait([name], 30) or not available.wait([name], 30):
            raise SystemExit(f"direct: {name} not available within 30s")
        latencies.append(seen.times[name] - started)
        time.sleep(0.05)
    seen.stop = available.stop = True
    drop_namespace(client, ns)

    ns = new_namespace(client, f"bench-direct-burst-{run}")
    NAMESPACES.append(ns)
    names = [f"b{i:03d}" for i in range(burst)]
    services = Seen(client, "v1", "Service", ns)
    available = Seen(client, "apps/v1", "Deployment", ns, deployment_available)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: [client.apply(c) for c in direct_children(ns, n)], names))
    if not services.wait(names, 300):
        raise SystemExit("direct: Services missing after 300s")
    result = {"latency_p50_ms": ms(statistics.median(latencies)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
              "burst_children_s": round(max(services.times.values()) - started, 2)}
    result["burst_ready_s"] = (round(max(available.times.values()) - started, 2) if available.wait(names, 120)
                               else None)
    services.stop = available.stop = True
    drop_namespace(client, ns)
    return result


def start(argv: list[str], env: dict, log: Path, started: list[subprocess.Popen],
          ready_port: int | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(proc)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{argv[2]} exited: {log.read_text()[-2000:]}")
        if ready_port is not None:
            from labctl.addons import probe

            if probe(ready_port, "/readyz")[0] == 200:
                return proc
        elif "Initial authentication has finished" in log.read_text(errors="replace"):
            time.sleep(1.0)  # its watches open right after
            return proc
        time.sleep(0.2)
    raise SystemExit(f"{argv} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-samples", type=int, default=100, help="Microservices created one at a time")
    parser.add_argument("--burst", type=int, default=200, help="Microservices created at once")
    parser.add_argument("--kubeconfig", help="use the cluster of this kubeconfig instead of a new sim cluster")
    parser.add_argument("--context", default="labctl-sim", help="its context (with --kubeconfig)")
    args = parser.parse_args()

    from labctl import addons
    from labctl.kube.client import Client
    from labctl.providers import procs

    work = Path(tempfile.mkdtemp(prefix="labctl-bench-operator-"))
    env = {**os.environ, "LABCTL_STATE_DIR": str(work / "state"), "KUBECONFIG": str(work / "kubeconfig")}
    own_cluster = not args.kubeconfig
    procs_started: list[subprocess.Popen] = []
    try:
        if own_cluster:
            print("bringing up a sim cluster for the benchmark …", file=sys.stderr)
            subprocess.run([LABCTL, "up", "--provider", "sim"], env=env, check=True, capture_output=True)
            kubeconfig, context = work / "state" / "clusters" / "sim" / "kubeconfig", "labctl-sim"
        else:
            kubeconfig, context = Path(args.kubeconfig), args.context
        client = Client.from_kubeconfig(kubeconfig, context)
        addons.apply_crds(client)

        # kopf's own login reads the current context of $KUBECONFIG.
        config = yaml.safe_load(kubeconfig.read_text())
        config["current-context"] = context
        (work / "baseline-kubeconfig").write_text(yaml.safe_dump(config))
        (work / "baseline.py").write_text(BASELINE)
        base_env = {**env, "KUBECONFIG": str(work / "baseline-kubeconfig")}
        print("baseline: a trivial kopf operator (one ConfigMap per Microservice) …", file=sys.stderr)
        baseline = start([sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                          str(work / "baseline.py")], base_env, work / "baseline.log", procs_started)
        base = measure("kopf", client, ("v1", "ConfigMap"), False, args.latency_samples, args.burst)
        base["rss_mb"], base["peak_rss_mb"] = (round(b / 2**20) for b in rss(baseline.pid))
        stop(baseline)
        # The operator resumes every Microservice it finds at start: it starts on an empty cluster, as the
        # baseline did.
        for ns in NAMESPACES:
            drop_namespace(client, ns)

        print("the floor: the same Deployments and Services applied directly, no operator …", file=sys.stderr)
        direct = measure_direct(client, args.latency_samples, args.burst)

        print("the labctl operator …", file=sys.stderr)
        port = procs.free_ports(1)[0]
        ours_proc = start([sys.executable, "-m", "labctl_operator", "--kubeconfig", str(kubeconfig), "--context",
                           context, "--health-port", str(port)], env, work / "operator.log", procs_started,
                          ready_port=port)
        ours = measure("labctl", client, ("apps/v1", "Deployment"), True, args.latency_samples, args.burst)
        ours["rss_mb"], ours["peak_rss_mb"] = (round(b / 2**20) for b in rss(ours_proc.pid))
        stop(ours_proc)
    finally:
        for proc in procs_started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if own_cluster:
            subprocess.run([LABCTL, "down"], env=env, capture_output=True)
        else:
            for ns in NAMESPACES:
                client.delete("v1", "Namespace", ns)  # already gone: False, no error

    rows = [
        ("create → child present, p50", "latency_p50_ms", "ms", 200),
        ("create → child present, p99", "latency_p99_ms", "ms", None),
        (f"{args.burst} at once → all children", "burst_children_s", "s", None),
        (f"{args.burst} at once → all reconciled", "burst_reconciled_s", "s", 30),
        (f"{args.burst} at once → all Ready", "burst_ready_s", "s", None),
        ("RSS after the burst", "rss_mb", "MB", 150),
        ("peak RSS", "peak_rss_mb", "MB", None),
    ]
    def cell(value, unit: str, width: int) -> str:
        return f"{'-' if value is None else value!s:>{width}} {unit:<2}"

    print(f"\n{'':<34} {'labctl':>10} {'kopf baseline':>14} {'ratio':>7} {'no operator':>13} {'ratio':>6}  target")
    for title, key, unit, target in rows:
        mine, theirs, floor = ours.get(key), base.get(key), direct.get(key)
        ratio = f"{mine / theirs:.1f}x" if mine and theirs else "-"
        over_floor = f"{mine / floor:.1f}x" if mine and floor else "-"
        goal = f"≤ {target} {unit}" + (" ✓" if mine is not None and mine <= target else " ✗") if target else ""
        print(f"{title:<34} {cell(mine, unit, 7)} {cell(theirs, unit, 11)} {ratio:>7} {cell(floor, unit, 10)} "
              f"{over_floor:>6}  {goal}")
    if ours.get("burst_ready_s") is None:
        print(f"only {ours.get('burst_ready_count')}/{args.burst} became Ready within 120 s of the burst (pods marked "
              "not ready by the node lifecycle controller when kwok's heartbeats lapse stay so on sim)")
    print(f"(latency over {args.latency_samples} Microservices created one at a time; the baseline's child is a "
          "ConfigMap, ours a Deployment and a Service with status; reconciled: children made and status written "
          "for the current generation; no operator: a client applying the same Deployment and Service directly, "
          "the floor this cluster sets; same cluster, same run)")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "operator.json").write_text(json.dumps({"labctl": ours, "kopf_baseline": base, "no_operator": direct},
                                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
