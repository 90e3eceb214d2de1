"""The local provider (a real node), measured on this machine, each figure beside a baseline of the same run.

- `up` to node Ready and DNS ready: in a new state dir (certificates, node images imported) and warm (after
  `down`);
- memory of the whole idle cluster (control plane, node components, their pods' processes);
- an image rebuild after a one-line change (the shop's image: pip layer cached) against the same build without
  cache;
- a lab's workloads applied and all Ready (`labctl solve`), and `labctl check` with its probe Pods.

Skipped with one line where the local provider cannot run (not Linux, not root, packages missing). Results go
to bench/results/local.json.

    python bench/local_bench.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LABCTL = str(Path(sys.executable).parent / "labctl")


def run(argv: list[str], env: dict, check: bool = True) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(argv)}` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


def cluster_rss_mib(state_root: Path) -> float:
    """RSS of every process whose command line names the state dir, and of all their descendants (pods)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    roots = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[pid] = int(fields.get("PPid", "0").strip() or 0)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
        if str(state_root) in cmdline:
            roots.add(pid)
    counted = set()
    for pid in parents:
        p = pid
        while p and p not in roots:
            p = parents.get(p, 0)
        if p:
            counted.add(pid)
    return sum(rss[p] for p in counted) / 1024


def main() -> None:
    from labctl.providers.local import can_run
    from labctl.providers.node import host

    problem = host.platform_problem() or ("missing: " + ", ".join(host.missing_requirements())
                                          if host.missing_requirements() else None)
    if problem or not can_run():
        print(f"local benchmark skipped: {problem or 'the local toolbox is not installed (labctl toolbox install local)'}")
        return
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-local-"))
    env = {**os.environ, "LABCTL_STATE_DIR": str(work / "state"), "KUBECONFIG": str(work / "kubeconfig")}
    env.pop("LABCTL_LABS_DIR", None)
    ctx = ["--context", "labctl-local"]
    results: dict[str, float] = {}
    try:
        results["up_cold_s"], _ = run([LABCTL, "up", "--provider", "local"], env)
        run([LABCTL, "down"], env)
        results["up_warm_s"], _ = run([LABCTL, "up", "--provider", "local"], env)
        time.sleep(20)
        results["idle_cluster_rss_mib"] = round(cluster_rss_mib(work / "state"), 1)

        app = work / "app"
        shutil.copytree(REPO / "services", app, ignore=shutil.ignore_patterns("__pycache__"))
        build = [LABCTL, "image", "build", str(app), "-t", "labctl.local/bench:1.0", "-q", *ctx]
        run(build, env)  # the base image and every layer cached
        source = app / "labshop" / "catalog.py"
        source.write_text(source.read_text() + "\n# one more line\n")
        results["rebuild_one_line_s"], _ = run(build, env)
        source.write_text(source.read_text() + "\n# and another\n")
        results["rebuild_no_cache_s"], _ = run([*build, "--no-cache"], env)

        run([LABCTL, "start", "service-discovery", *ctx], env)  # builds the lab's images once
        results["solve_to_pods_ready_s"], _ = run([LABCTL, "solve", "service-discovery", "--yes", *ctx], env)
        results["check_with_probe_pods_s"], out = run([LABCTL, "check", "service-discovery", *ctx], env)
    finally:
        subprocess.run([LABCTL, "down"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    results = {k: round(v, 2) for k, v in results.items()}
    print(f"\n{'local provider':<34} {'measured':>10} {'baseline':>22} {'ratio':>7}")
    print(f"{'up, warm (node + DNS ready)':<34} {results['up_warm_s']:>9.1f}s {'new state dir ' + format(results['up_cold_s'], '.1f') + 's':>22} "
          f"{results['up_cold_s'] / results['up_warm_s']:>6.1f}x   (goal ≤ 15 s)")
    print(f"{'image rebuild, one-line change':<34} {results['rebuild_one_line_s']:>9.1f}s "
          f"{'no-cache ' + format(results['rebuild_no_cache_s'], '.1f') + 's':>22} "
          f"{results['rebuild_no_cache_s'] / results['rebuild_one_line_s']:>6.1f}x   (goal ≤ 5 s)")
    print(f"{'solve service-discovery, pods ready':<34} {results['solve_to_pods_ready_s']:>9.1f}s")
    print(f"{'check service-discovery (probes)':<34} {results['check_with_probe_pods_s']:>9.1f}s")
    print(f"{'idle cluster memory (RSS)':<34} {results['idle_cluster_rss_mib']:>8.0f}MiB")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "local.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
