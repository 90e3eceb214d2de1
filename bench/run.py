"""`labctl check` against kubectl-per-check bash scripts, on the same sim cluster, in the same run.

Two sizes: the containerization lab (its declared-state checks) and a generated lab of 100 checks over 10 kinds,
each with a generated bash script doing the same checks with one `kubectl` call per check. Every command runs
as a whole process (Python start-up and imports included), alternating labctl and baseline, and the medians
and their ratio are printed and written to bench/results/latest.json.

    python bench/run.py [--runs N] [--kubeconfig FILE]   # --kubeconfig reuses a running labctl-sim cluster
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
LABCTL = str(VENV_BIN / "labctl")

KINDS = [  # (apiVersion, kind, kubectl resource, manifest body builder)
    ("v1", "ConfigMap", "configmap", lambda n: {"data": {"key": n}}),
    ("v1", "Secret", "secret", lambda n: {"stringData": {"key": n}}),
    ("v1", "ServiceAccount", "serviceaccount", lambda n: {}),
    ("v1", "Service", "service", lambda n: {"spec": {"selector": {"app": n}, "ports": [{"port": 80}]}}),
    ("apps/v1", "Deployment", "deployment", lambda n: {"spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": n}},
        "template": {"metadata": {"labels": {"app": n}}, "spec": {"containers": [{"name": "c", "image": "x:1.0"}]}}}}),
    ("rbac.authorization.k8s.io/v1", "Role", "role", lambda n: {"rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicy", lambda n: {"spec": {"podSelector": {"matchLabels": {"app": n}}}}),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudget", lambda n: {"spec": {
        "minAvailable": 1, "selector": {"matchLabels": {"app": n}}}}),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaim", lambda n: {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    ("batch/v1", "CronJob", "cronjob", lambda n: {"spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x:1.0"}]}}}}}}),
]
PER_KIND = 10


def sh(argv: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check)


def generate_lab(root: Path) -> tuple[Path, int]:
    """A lab with 100 checks (10 kinds x 10 objects) whose start state satisfies them, and its bash twin."""
    lab = root / "labs" / "01-bench100"
    (lab / "templates").mkdir(parents=True)
    objects, checks, lines = [], [], []
    for api, kind, resource, body in KINDS:
        for i in range(PER_KIND):
            name = f"{resource[:8]}-{i}"
            objects.append({"apiVersion": api, "kind": kind, "metadata": {"name": name, "labels": {"bench": "yes"}},
                            **body(name)})
            checks.append({"id": f"{resource}-{i}", "title": f"{kind} {name} is labelled", "type": "matches",
                           "target": {"apiVersion": api, "kind": kind, "name": name},
                           "subset": {"metadata": {"labels": {"bench": "yes"}}}, "hints": ["label it bench=yes"]})
            lines.append(f'ok "$(get {resource} {name} -o jsonpath=\'{{.metadata.labels.bench}}\')" {resource}-{i}')
    (lab / "templates" / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    (lab / "lab.yaml").write_text(yaml.safe_dump({
        "format_version": 1, "title": "Bench 100", "difficulty": "Advanced", "minutes": 1,
        "summary": "100 checks over 10 kinds", "objectives": ["measure"], "prerequisites": [],
        "deploy": ["templates/objects.yaml"], "solution": ["templates/objects.yaml"], "checks": checks,
        "interview": [{"question": "q?", "answer": "a."}],
    }, sort_keys=False))
    script = root / "bench100.sh"
    script.write_text("#!/usr/bin/env bash\nset -u\nK=(\"$1\" --kubeconfig \"$2\" --context \"$3\" -n \"$4\")\n"
                      "pass=0; fail=0\nget() { \"${K[@]}\" get \"$@\" 2>/dev/null; }\n"
                      "ok() { if [ \"$1\" = yes ]; then pass=$((pass+1)); else fail=$((fail+1)); echo \"FAIL $2\"; fi; }\n"
                      + "\n".join(lines) + "\necho \"$pass passed, $fail failed\"\n[ \"$fail\" -eq 0 ]\n")
    script.chmod(0o755)
    return script, len(checks)


def timed(argv: list[str], env: dict) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def compare(name: str, ours: list[str], baseline: list[str], env: dict, runs: int, checks: int) -> dict:
    for argv in (ours, baseline):  # warm caches (page cache, discovery) and prove both pass before timing
        _, rc, out = timed(argv, env)
        if rc != 0:
            raise SystemExit(f"bench {name}: {argv[0]} failed before timing (exit {rc}):\n{out[-2000:]}")
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours, env)[0])
        b.append(timed(baseline, env)[0])
    result = {"scenario": name, "checks": checks, "runs": runs,
              "labctl_median_s": round(statistics.median(a), 4), "baseline_median_s": round(statistics.median(b), 4)}
    result["ratio"] = round(result["baseline_median_s"] / result["labctl_median_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs of each command")
    parser.add_argument("--kubeconfig", help="reuse the labctl-sim cluster of this kubeconfig")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    env = {**os.environ, "LABCTL_STATE_DIR": str(work / "state"), "KUBECONFIG": str(work / "kubeconfig")}
    env.pop("LABCTL_LABS_DIR", None)
    own_cluster = not args.kubeconfig
    try:
        if own_cluster:
            print("bringing up a sim cluster for the benchmark …", file=sys.stderr)
            sh([LABCTL, "up", "--provider", "sim"], env)
            context = "labctl-sim"
            kubeconfig = str(work / "state" / "clusters" / "sim" / "kubeconfig")
            if not Path(kubeconfig).exists():
                kubeconfig = env["KUBECONFIG"]
        else:
            context, kubeconfig = "labctl-sim", args.kubeconfig
            env["KUBECONFIG"] = kubeconfig
        kubectl = sh([sys.executable, "-c", "from labctl.toolbox import binary; print(binary('kubectl'))"], env).stdout.strip()
        base = ["--context", context]

        sh([LABCTL, "start", "containerization", *base], env)
        sh([LABCTL, "solve", "containerization", "--yes", *base], env)
        results = [compare(
            "containerization lab", [LABCTL, "check", "containerization", "-o", "json", *base],
            [str(HERE / "baseline" / "containerization.sh"), kubectl, kubeconfig, context, "lab-containerization"],
            env, args.runs, 16)]

        script, n = generate_lab(work)
        env100 = {**env, "LABCTL_LABS_DIR": str(work / "labs")}
        sh([LABCTL, "start", "bench100", *base], env100)
        results.append(compare(
            "100 checks, 10 kinds", [LABCTL, "check", "bench100", "-o", "json", *base],
            [str(script), kubectl, kubeconfig, context, "lab-bench100"], env100, args.runs, n))
    finally:
        if own_cluster:
            subprocess.run([LABCTL, "down"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'scenario':<24} {'checks':>6} {'labctl':>10} {'kubectl/check':>14} {'ratio':>7}")
    for r in results:
        print(f"{r['scenario']:<24} {r['checks']:>6} {r['labctl_median_s']:>9.3f}s {r['baseline_median_s']:>13.3f}s "
              f"{r['ratio']:>6.1f}x")
    print(f"(medians of {args.runs} alternating runs, whole processes, same cluster)")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
