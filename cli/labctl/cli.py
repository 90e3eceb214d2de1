"""The `labctl` command line: learner verbs over labs, checks and a cluster."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click

from labctl import __version__, errors, paths
from labctl.errors import LabError, UsageError

EXIT_CODES_HELP = """\b
Exit codes:
  0  success; for `check`: every verifiable check passes
  1  `check`: at least one check fails; `solve`: what it applied did not become ready in time
  2  bad usage, a bad lab definition, or a kube context labctl did not create
  3  the cluster cannot be reached, or the API failed mid-run
  4  this machine cannot do it (a toolbox build failed, a provider cannot start)
"""

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# Command groups that live with their subsystem, imported only when used: `labctl check` stays fast.
LAZY_COMMANDS = {
    "toolbox": ("labctl.toolbox.cmd", "toolbox"),
    "image": ("labctl.images.cmd", "image"),
    "operator": ("labctl.operator_cmd", "operator"),
}


def _lazy_command(name: str) -> click.Command | None:
    import importlib

    module_name, attr = LAZY_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None  # a subsystem this installation does not ship
        raise
    return getattr(module, attr)


class Group(click.Group):
    """Turns labctl's domain errors into one line and the documented exit code; no traceback reaches a learner."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LabError as e:
            _fail(e)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        # in the order they are defined (learner verbs first), then the subsystems' groups
        return list(self.commands) + [n for n in LAZY_COMMANDS if n not in self.commands]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            command = _lazy_command(name)
            if command is not None:
                self.add_command(command, name)
        return super().get_command(ctx, name)


def _fail(e: LabError) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + str(e), err=True)
    if e.hint:
        click.echo(click.style("hint: ", fg="yellow") + e.hint, err=True)
    sys.exit(e.exit_code)


def context_option(f: Callable) -> Callable:
    return click.option(
        "--context", envvar="LABCTL_CONTEXT", metavar="NAME",
        help="Kube context to act on; labctl only touches contexts it created unless you name one here "
             "[env: LABCTL_CONTEXT].",
    )(f)


def yes_option(f: Callable) -> Callable:
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(f)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "--version", prog_name="labctl", message="%(prog)s %(version)s")
def main() -> None:
    """Hands-on Kubernetes labs that teach microservices architecture.

    \b
    Start here:
      labctl list                     the labs in study order
      labctl start containerization   a cluster, the lab's namespace and its starting state
      labctl check                    what passes, what fails and why
      labctl hint                     the next hint for the first failing check
    """


# -- helpers ----------------------------------------------------------------------------------------------------

def _labs():
    from labctl.labs import all_labs

    return all_labs()


def _state():
    from labctl import state as state_mod

    st = state_mod.load()
    if st.warning:
        click.echo(click.style("warning: ", fg="yellow") + st.warning, err=True)
    return st


def _lab_for(arg: str | None, st):
    from labctl.labs import resolve_lab

    labs = _labs()
    if arg:
        return resolve_lab(arg, labs)
    if not st.current_lab:
        raise UsageError("no lab is started", hint="`labctl list` shows the labs; `labctl start LAB` starts one")
    return resolve_lab(st.current_lab, labs)


def _next_lab(st):
    labs = _labs()
    if not labs:
        raise UsageError("no labs found", hint=f"labs are read from {paths.labs_dir()}")
    for lab in labs:
        if not st.data.get("labs", {}).get(lab.slug, {}).get("completed_at"):
            return lab
    return labs[0]


def _connect(st, context: str | None):
    from labctl import session

    target = session.resolve(st, context)
    return target, session.connect(target)


def _progress(msg: str) -> None:
    click.echo(click.style("• ", fg="cyan") + msg, err=True)


def _confirm(what: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{what} needs confirmation", hint="add --yes to confirm without a prompt")
    click.confirm(what + " Continue?", abort=True)


MARK = {"pass": ("✓", "green"), "fail": ("✗", "red"), "not-verifiable": ("?", "yellow")}


# -- learner verbs ----------------------------------------------------------------------------------------------

@main.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
def list_cmd(output: str) -> None:
    """The labs in study order, with difficulty, estimated time and your progress."""
    labs = _labs()
    st = _state()
    rows = []
    for lab in labs:
        record = st.data.get("labs", {}).get(lab.slug, {})
        if record.get("completed_at"):
            progress = "done"
        elif record.get("declared_complete_at"):
            progress = "declared state done"
        elif record.get("started_at"):
            progress = f"{len(record.get('passed', []))}/{len(lab.checks)} checks"
        else:
            progress = ""
        rows.append({"number": lab.number, "slug": lab.slug, "title": lab.title, "difficulty": lab.difficulty,
                     "minutes": lab.minutes, "progress": progress, "current": lab.slug == st.current_lab})
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    width = max([len(r["title"]) for r in rows] + [5])
    click.echo(f"  {'#':>2}  {'LAB':<{width}}  {'DIFFICULTY':<12} {'TIME':>7}  PROGRESS")
    for r in rows:
        pointer = click.style("▶", fg="cyan") if r["current"] else " "
        click.echo(f"{pointer} {r['number']:>2}  {r['title']:<{width}}  {r['difficulty']:<12} "
                   f"{str(r['minutes']) + ' min':>7}  {r['progress']}")
    click.echo(f"\nStart one with `labctl start <slug or number>` (for example `labctl start {rows[0]['slug']}`)."
               if rows else "No labs found.")


@main.command()
@click.argument("lab", required=False)
@click.option("--provider", type=click.Choice(["kind", "local", "sim", "existing"]),
              help="Cluster provider when no cluster is up yet [default: the best available].")
@context_option
def start(lab: str | None, provider: str | None, context: str | None) -> None:
    """Start LAB (slug, number or unique prefix; default: the next lab not completed, in study order).

    Brings a cluster up if none is, creates the lab's namespace and deploys its starting state.
    """
    from labctl import apply, render, state as state_mod

    st = _state()
    chosen = _lab_for(lab, st) if lab else _next_lab(st)
    if not st.cluster and not context and not os.environ.get("LABCTL_CONTEXT"):
        _up(st, provider, None, [])
    target, client = _connect(st, context)
    _ensure_images(chosen, target)
    _ensure_addons(chosen, target, client)
    objects = render.render_objects([chosen.path / f for f in chosen.deploy], chosen.path, chosen.values,
                                    chosen.namespace)
    apply.ensure_namespace(client, chosen.namespace, slug=chosen.slug, pod_security=chosen.pod_security)
    apply.apply_objects(client, objects, origin=f"labs/{chosen.path.name}")
    record = st.lab(chosen.slug)
    record.setdefault("started_at", state_mod.now())
    st.current_lab = chosen.slug
    st.save()
    readme = chosen.path / "README.md"
    click.echo(f"Started lab {chosen.number}: {chosen.title} ({chosen.difficulty}, {chosen.minutes} min) "
               f"on {target.provider} (context {target.context}).")
    click.echo(f"  namespace   {chosen.namespace}  ({len(objects)} starting objects applied)")
    click.echo(f"  guide       {readme}")
    if not target.pods_run:
        click.echo("  note        pods are simulated on sim: declared state is checked, behaviour checks are "
                   "reported as not verifiable")
    click.echo("\nNext: read the guide, change things with `labctl kubectl`, then run `labctl check`.")


def _ensure_images(lab, target) -> None:
    if not target.pods_run or not lab.images:
        return
    try:
        from labctl.images import ensure_images
    except ImportError:
        raise errors.EnvironmentProblem(
            f"lab {lab.slug} needs images, and this labctl cannot build images for the {target.provider} provider",
            hint="use `labctl up --provider sim` to work on declared state",
        ) from None
    ensure_images(lab, target, progress=_progress)


def _ensure_addons(lab, target, client) -> None:
    """Cluster-wide parts a lab declares under `requires:` (an operator, CRDs), shared by the labs that use them."""
    required = lab.raw.get("requires") or []
    if not required:
        return
    from labctl.addons import ensure_addons

    ensure_addons(lab, required, target, client, progress=_progress)


@main.command()
@click.argument("lab", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json", "junit"]), default="text", show_default=True,
              help="text for people, json for scripts, junit for classrooms and CI.")
@click.option("--junit-file", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="With -o junit: write the XML here instead of standard output.")
@click.option("-w", "--watch", is_flag=True,
              help="Re-check on every relevant change in the cluster (Kubernetes watches); stops when all pass "
                   "or on Ctrl-C.")
@context_option
def check(lab: str | None, output: str, junit_file: str | None, watch: bool, context: str | None) -> None:
    """Run LAB's checks (default: the current lab): ✓/✗ per check with the reason.

    Exits 0 when every verifiable check passes, 1 when one fails.
    """
    from labctl import runner

    st = _state()
    chosen = _lab_for(lab, st)
    target, client = _connect(st, context)
    outcomes = runner.run(client, chosen, chosen.namespace, pods_run=target.pods_run)
    _record(st, chosen, outcomes, target)
    if not watch:
        _print_outcomes(chosen, outcomes, target, output, junit_file)
        sys.exit(_exit_for(outcomes))
    _watch(client, chosen, target, st, outcomes)


def _exit_for(outcomes) -> int:
    return errors.EXIT_CHECKS_FAILED if any(o.state == "fail" for o in outcomes) else errors.EXIT_OK


def _watch(client, chosen, target, st, outcomes) -> None:
    from labctl import runner
    from labctl.checks import FetchKey

    _print_outcomes(chosen, outcomes, target, "text", None)
    if _exit_for(outcomes) == 0:
        sys.exit(0)
    keys = runner.plan(chosen, chosen.namespace)
    if any(c.type in runner.ACTING for c in chosen.checks):
        keys.add(FetchKey("discovery.k8s.io/v1", "EndpointSlice", chosen.namespace))
    stop = threading.Event()
    # A scenario patches and restarts workloads, and puts them back: those changes must not start another run.
    muted = threading.Event()
    acts = target.pods_run and any(c.type == "scenario" for c in chosen.checks)
    click.echo(click.style("watching the cluster for changes; Ctrl-C to stop", dim=True))
    previous = {o.check.id: o.state for o in outcomes}
    try:
        for _ in runner.changes(client, keys, stop, muted=muted):
            if acts:
                muted.set()
            outcomes = runner.run(client, chosen, chosen.namespace, pods_run=target.pods_run)
            if acts:
                threading.Timer(2.0, muted.clear).start()  # the last pods of a put-back rollout are still going
            _record(st, chosen, outcomes, target)
            now = {o.check.id: o.state for o in outcomes}
            if now != previous:
                click.echo(click.style(f"\n— {time.strftime('%H:%M:%S')} —", dim=True))
                _print_outcomes(chosen, outcomes, target, "text", None)
                previous = now
            if _exit_for(outcomes) == 0:
                stop.set()
                sys.exit(0)
    except KeyboardInterrupt:
        stop.set()
        click.echo("\nstopped watching")
        sys.exit(_exit_for(outcomes))


def _record(st, chosen, outcomes, target) -> None:
    from labctl import state as state_mod

    record = st.lab(chosen.slug)
    record["passed"] = [o.check.id for o in outcomes if o.state == "pass"]
    if not any(o.state == "fail" for o in outcomes):
        if all(o.state == "pass" for o in outcomes):
            record.setdefault("completed_at", state_mod.now())
            record.setdefault("completed_on", target.provider)
        else:
            record.setdefault("declared_complete_at", state_mod.now())
    try:
        st.save()
    except OSError as e:
        click.echo(click.style("warning: ", fg="yellow") + f"progress not saved: {e}", err=True)


def _print_outcomes(chosen, outcomes, target, output: str, junit_file: str | None) -> None:
    from labctl import runner

    counts = runner.summary(outcomes)
    if output == "json":
        click.echo(json.dumps({
            "lab": chosen.slug, "number": chosen.number, "provider": target.provider, "context": target.context,
            "summary": counts,
            "checks": [{"id": o.check.id, "title": o.check.title, "state": o.state, "reason": o.result.reason}
                       for o in outcomes],
        }, indent=2))
        return
    if output == "junit":
        xml = _junit(chosen, outcomes)
        if junit_file:
            Path(junit_file).write_text(xml)
            click.echo(f"wrote {junit_file}", err=True)
        else:
            click.echo(xml)
        return
    click.echo(click.style(f"Lab {chosen.number}: {chosen.title}", bold=True)
               + f" — {counts['pass']}/{len(outcomes)} checks pass")
    first_fail = None
    for o in outcomes:
        mark, colour = MARK[o.state]
        line = f"  {click.style(mark, fg=colour)} {o.check.title}"
        if o.state != "pass":
            line += click.style(f" — {o.result.reason}", fg=None if o.state == "fail" else "yellow")
        click.echo(line)
        if o.state == "fail" and first_fail is None:
            first_fail = o
    if counts["not-verifiable"]:
        n = counts["not-verifiable"]
        click.echo(click.style(f"{n} {'check' if n == 1 else 'checks'} not verifiable on {target.provider}"
                               " (pods do not run there): they pass only on a provider with real pods", fg="yellow"))
    if first_fail:
        click.echo(f"\nNext: fix “{first_fail.check.title}”. Stuck? `labctl hint`.")
    elif counts["not-verifiable"]:
        click.echo("\nDeclared state complete.")
    else:
        click.echo(click.style("\nAll checks pass. Well done!", fg="green", bold=True)
                   + " Read the interview angle in the guide, then `labctl list` for the next lab.")


def _junit(chosen, outcomes) -> str:
    from xml.sax.saxutils import quoteattr

    counts = {"fail": 0, "not-verifiable": 0}
    cases = []
    for o in outcomes:
        name = quoteattr(o.check.title)
        attrs = f'classname={quoteattr("labctl." + chosen.slug)} name={name} id={quoteattr(o.check.id)}'
        if o.state == "pass":
            cases.append(f"    <testcase {attrs}/>")
        elif o.state == "fail":
            counts["fail"] += 1
            cases.append(f"    <testcase {attrs}>\n      <failure message={quoteattr(o.result.reason)}/>\n    </testcase>")
        else:
            counts["not-verifiable"] += 1
            cases.append(f"    <testcase {attrs}>\n      <skipped message={quoteattr(o.result.reason)}/>\n    </testcase>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
            f'  <testsuite name={quoteattr("labctl " + chosen.slug)} tests="{len(outcomes)}" '
            f'failures="{counts["fail"]}" skipped="{counts["not-verifiable"]}" errors="0">\n'
            + "\n".join(cases) + "\n  </testsuite>\n</testsuites>\n")


@main.command()
@click.argument("check_id", metavar="[CHECK]", required=False)
@click.option("--lab", "lab", metavar="LAB", help="Lab to hint for [default: the current lab].")
@context_option
def hint(check_id: str | None, lab: str | None, context: str | None) -> None:
    """Reveal the next hint level for CHECK, or for the first failing check."""
    from labctl import runner

    st = _state()
    chosen = _lab_for(lab, st)
    by_id = {c.id: c for c in chosen.checks}
    if check_id:
        if check_id not in by_id:
            raise UsageError(f"lab {chosen.slug} has no check {check_id!r}",
                             hint="checks: " + ", ".join(by_id))
        target_check = by_id[check_id]
    else:
        target, client = _connect(st, context)
        outcomes = runner.run(client, chosen, chosen.namespace, pods_run=target.pods_run)
        failing = [o for o in outcomes if o.state == "fail"]
        if not failing:
            click.echo("Every verifiable check passes: no hint needed.")
            return
        target_check = failing[0].check
    record = st.lab(chosen.slug)
    level = min(record["hint_levels"].get(target_check.id, 0) + 1, len(target_check.hints))
    record["hint_levels"][target_check.id] = level
    st.save()
    click.echo(click.style(f"Hint {level}/{len(target_check.hints)} for “{target_check.title}” ({target_check.id}):",
                           bold=True))
    click.echo(target_check.hints[level - 1].rstrip())
    if level < len(target_check.hints):
        click.echo(click.style("\nRun `labctl hint` again for more.", dim=True))


@main.command()
@click.argument("lab", required=False)
@yes_option
@click.option("--timeout", default=180, show_default=True, type=click.IntRange(1), metavar="SECONDS",
              help="How long to wait for the solution's workloads to be ready.")
@context_option
def solve(lab: str | None, yes: bool, timeout: int, context: str | None) -> None:
    """Apply LAB's reference solution (your objects are saved first)."""
    from labctl import apply, render

    st = _state()
    chosen = _lab_for(lab, st)
    _confirm(f"This applies the reference solution of lab {chosen.slug} over your work in {chosen.namespace}.", yes)
    target, client = _connect(st, context)
    objects = render.render_objects([chosen.path / f for f in chosen.solution], chosen.path, chosen.values,
                                    chosen.namespace)
    _ensure_images(chosen, target)
    saved = apply.backup(client, chosen.namespace, apply.lab_kinds(objects), reason="solve")
    if saved:
        click.echo(f"saved your objects to {saved}")
    apply.ensure_namespace(client, chosen.namespace, slug=chosen.slug, pod_security=chosen.pod_security)
    apply.apply_objects(client, objects, origin=f"labs/{chosen.path.name}/solution")
    _progress(f"applied {len(objects)} objects; waiting for workloads to be ready")
    started = time.monotonic()
    apply.wait_ready(client, objects, timeout=timeout)
    apply.wait_endpoints(client, objects)
    _wait_checks(client, chosen, target, chosen.raw.get("solve_wait") or [],
                 timeout=max(1.0, timeout - (time.monotonic() - started)))
    click.echo(f"Solution of lab {chosen.number} applied. Run `labctl check` to see every check pass.")


def _wait_checks(client, lab, target, ids: list[str], *, timeout: float) -> None:
    """Wait until the named checks pass (or cannot be verified here): what a controller makes from the solution
    (an operator's children, say) is not among the applied objects `wait_ready` knows about."""
    from dataclasses import replace

    from labctl import runner

    if not ids:
        return
    # With the checks they come after (`after:`), or they would never be tried and read as "not verifiable".
    needed, todo = set(), list(ids)
    by_id = {c.id: c for c in lab.checks}
    while todo:
        check_id = todo.pop()
        if check_id not in needed and check_id in by_id:
            needed.add(check_id)
            todo.extend(by_id[check_id].spec.get("after") or [])
    wanted = replace(lab, checks=[c for c in lab.checks if c.id in needed])
    deadline = time.monotonic() + timeout
    while True:
        failing = [o for o in runner.run(client, wanted, lab.namespace, pods_run=target.pods_run) if o.state == "fail"]
        if not failing:
            return
        if time.monotonic() > deadline:
            raise errors.NotReady(f"not ready after {timeout:.0f}s: " + "; ".join(o.result.reason for o in failing),
                                  hint=f"`labctl kubectl get events -n {lab.namespace}` shows why")
        time.sleep(0.5)


@main.command()
@click.argument("lab", required=False)
@yes_option
@context_option
def reset(lab: str | None, yes: bool, context: str | None) -> None:
    """Put LAB back to its starting state: namespace emptied, starting objects re-applied (your objects saved)."""
    from labctl import apply

    st = _state()
    chosen = _lab_for(lab, st)
    _confirm(f"This deletes your objects in {chosen.namespace} and re-applies the starting state.", yes)
    target, client = _connect(st, context)
    start_objects, solution_objects = _lab_objects(chosen)
    kinds = apply.lab_kinds(start_objects + solution_objects)
    saved = apply.backup(client, chosen.namespace, kinds, reason="reset")
    if saved:
        click.echo(f"saved your objects to {saved}")
    apply.empty_namespace(client, chosen.namespace, kinds)
    for gone in apply.delete_cluster_scoped(client, solution_objects):
        click.echo(f"deleted {gone} (created by this lab)")
    apply.ensure_namespace(client, chosen.namespace, slug=chosen.slug, pod_security=chosen.pod_security)
    apply.apply_objects(client, start_objects, origin=f"labs/{chosen.path.name}")
    record = st.lab(chosen.slug)
    record.update({"passed": [], "hint_levels": {}})
    for key in ("completed_at", "completed_on", "declared_complete_at"):
        record.pop(key, None)
    st.current_lab = chosen.slug
    st.save()
    click.echo(f"Lab {chosen.number} ({chosen.slug}) is back at its starting state.")


@main.command()
@click.argument("lab", required=False)
@yes_option
@context_option
def stop(lab: str | None, yes: bool, context: str | None) -> None:
    """Take LAB off the cluster: your objects saved, its namespace deleted, and the add-ons no other started lab
    needs removed. Your progress stays; `labctl start LAB` brings the lab back."""
    from labctl import apply
    from labctl.addons import release_addons

    st = _state()
    chosen = _lab_for(lab, st)
    _confirm(f"This deletes the namespace {chosen.namespace} and everything in it.", yes)
    target, client = _connect(st, context)
    start_objects, solution_objects = _lab_objects(chosen)
    saved = apply.backup(client, chosen.namespace, apply.lab_kinds(start_objects + solution_objects), reason="stop")
    if saved:
        click.echo(f"saved your objects to {saved}")
    apply.delete_namespace(client, chosen.namespace)
    for gone in apply.delete_cluster_scoped(client, solution_objects):
        click.echo(f"deleted {gone} (created by this lab)")
    still_started = _started_labs(client) - {chosen.slug}
    needed = {a for other in _labs() if other.slug in still_started for a in other.raw.get("requires") or []}
    release_addons([a for a in chosen.raw.get("requires") or [] if a not in needed], target, client, _progress)
    click.echo(f"Lab {chosen.number} ({chosen.slug}) is off the cluster; `labctl start {chosen.slug}` brings it back.")


def _lab_objects(chosen) -> tuple[list[dict], list[dict]]:
    """The objects of a lab's starting state and of its solution, rendered."""
    from labctl import render

    def objects(files):
        return render.render_objects([chosen.path / f for f in files], chosen.path, chosen.values, chosen.namespace)

    return objects(chosen.deploy), objects(chosen.solution)


def _started_labs(client) -> set[str]:
    """Labs whose namespace is on the cluster (labctl labels each lab namespace with its lab)."""
    namespaces, _ = client.list("v1", "Namespace", label_selector="labctl.dev/lab")
    return {ns["metadata"]["labels"]["labctl.dev/lab"] for ns in namespaces
            if not ns["metadata"].get("deletionTimestamp")}


@main.command()
@click.argument("lab")
@click.option("--solution", is_flag=True, help="Render the reference solution instead of the starting state.")
def render(lab: str, solution: bool) -> None:
    """Print the manifests `start` (or `solve`) would apply for LAB, as YAML."""
    from labctl import render as render_mod
    from labctl.labs import resolve_lab

    chosen = resolve_lab(lab, _labs())
    files = chosen.solution if solution else chosen.deploy
    objects = render_mod.render_objects([chosen.path / f for f in files], chosen.path, chosen.values,
                                        chosen.namespace)
    click.echo(render_mod.to_yaml(objects), nl=False)


# -- the cluster ------------------------------------------------------------------------------------------------

def _up(st, provider_name: str | None, context: str | None, ports: list[str]):
    from labctl.providers import OWN_CONTEXT_PROVIDERS, default_provider_name, get_provider

    if provider_name is None and context:
        # a context labctl made means its provider; any other context is a cluster someone else made
        provider_name = OWN_CONTEXT_PROVIDERS.get(context, "existing")
    name = provider_name or default_provider_name()
    provider = get_provider(name, context if name == "existing" else None, ports=ports)
    started = time.monotonic()
    _progress(f"bringing up a {name} cluster" + (f" on context {context}" if name == "existing" else ""))
    provider.up(progress=_progress)
    st.cluster = {"provider": provider.name, "context": provider.context,
                  "kubeconfig": str(provider.kubeconfig_path)}
    st.save()
    note = "" if provider.pods_run else " — pods are simulated: behaviour checks are reported as not verifiable"
    click.echo(f"Cluster ready in {time.monotonic() - started:.1f} s: provider {provider.name}, "
               f"context {provider.context}{note}")
    return provider


@main.command()
@click.option("--provider", type=click.Choice(["kind", "local", "sim", "existing"]), envvar="LABCTL_PROVIDER",
              help="kind (Docker), local (a real node; Linux, root), sim (simulated nodes) or existing (a context "
                   "you name) [default: kind, else local, else sim; env: LABCTL_PROVIDER].")
@context_option
@click.option("--ports", multiple=True, metavar="HOST:NODE",
              help="kind only: map a host port to a node port (for the gateway lab), e.g. 8080:80. Repeatable or "
                   "comma-separated. Default: none.")
def up(provider: str | None, context: str | None, ports: tuple[str, ...]) -> None:
    """Bring up a lab cluster (a no-op when it is already up)."""
    st = _state()
    recorded = st.cluster or {}
    if recorded and provider and recorded.get("provider") != provider:
        raise UsageError(f"a {recorded['provider']} cluster is already up (context {recorded['context']})",
                         hint=f"`labctl down` first, then `labctl up --provider {provider}`")
    if not provider and not context and recorded:
        provider = recorded.get("provider")
        context = recorded.get("context") if provider == "existing" else None
    _up(st, provider, context, [p.strip() for v in ports for p in v.split(",") if p.strip()])
    click.echo("Next: `labctl list`, then `labctl start <lab>`.")


@main.command()
@context_option
def down(context: str | None) -> None:
    """Stop the lab cluster and remove what it created (lab namespaces go with it).

    A cluster named with --context that labctl did not create is left as it is.
    """
    from labctl.providers import OWN_CONTEXT_PROVIDERS, get_provider

    st = _state()
    recorded = st.cluster or {}
    if context:
        name = OWN_CONTEXT_PROVIDERS.get(context, "existing")
        provider = get_provider(name, context if name == "existing" else None)
    elif recorded:
        provider = get_provider(recorded["provider"], recorded["context"] if recorded["provider"] == "existing" else None)
    else:
        # the progress file may be gone while processes still run: look for labctl's own local clusters
        running = [p for p in (get_provider("sim"), _local_provider()) if p is not None and p.is_up()]
        if not running:
            click.echo("No labctl cluster is up.")
            return
        provider = running[0]
    if provider.name != "existing":
        _stop_host_operator(provider)
    provider.down(progress=_progress)
    if recorded.get("context") == provider.context:
        st.cluster = None
        st.save()
    if provider.name != "existing":
        click.echo(f"Cluster {provider.context} is down.")


def _stop_host_operator(provider) -> None:
    """The control-loops operator runs beside a sim cluster as a host process: it goes down with the cluster."""
    from labctl.addons import stop_host_operator
    from labctl.session import Target

    target = Target(provider.name, provider.context, Path(provider.kubeconfig_path), provider.pods_run)
    if stop_host_operator(target):
        _progress("stopped the control-loops operator")


def _local_provider():
    from labctl.providers import get_provider, local_available

    if not local_available():
        return None
    try:
        return get_provider("local")
    except LabError:
        return None


@main.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
def status(output: str) -> None:
    """The cluster (provider, context, each component's health), the current lab and progress.

    Exits 3 when a cluster is recorded but its API server does not answer.
    """
    from labctl.providers import get_provider
    from labctl.providers.display import format_status, status_json

    st = _state()
    cluster_status = None
    if st.cluster:
        provider = get_provider(st.cluster["provider"], st.cluster["context"]
                                if st.cluster["provider"] == "existing" else None)
        cluster_status = provider.status()
    record = st.data.get("labs", {}).get(st.current_lab, {}) if st.current_lab else {}
    progress = None
    if st.current_lab:
        progress = {"lab": st.current_lab, "passed": len(record.get("passed", [])),
                    "hint_levels": record.get("hint_levels", {}), "completed_at": record.get("completed_at"),
                    "declared_complete_at": record.get("declared_complete_at")}
    if output == "json":
        click.echo(json.dumps({"cluster": status_json(cluster_status) if cluster_status else None,
                               "progress": progress}, indent=2))
    else:
        click.echo(format_status(cluster_status) if cluster_status else "Cluster: none — `labctl up` brings one up")
        if progress:
            done = (" — done" if progress["completed_at"]
                    else " — declared state done" if progress["declared_complete_at"] else "")
            click.echo(f"Lab: {st.current_lab}: {progress['passed']} checks passing at the last check{done}")
        else:
            click.echo("Lab: none started — `labctl list`")
    if cluster_status is not None and not cluster_status.api_reachable:
        sys.exit(errors.EXIT_UNREACHABLE)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                                "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@context_option
def kubectl(args: tuple[str, ...], context: str | None) -> None:
    """Run the toolbox's kubectl (matched to the server) on labctl's cluster: labctl kubectl get pods -A."""
    from labctl import session

    st = _state()
    target = session.resolve(st, context)
    from labctl.toolbox import binary

    exe = str(binary("kubectl"))
    argv = [exe, "--kubeconfig", str(target.kubeconfig), "--context", target.context, *args]
    sys.stdout.flush()
    os.execv(exe, argv)


@main.command()
def doctor() -> None:
    """What this machine has for labctl (python, kubectl, docker, kind, go, cluster), each with a fix hint."""
    from labctl import doctor as doctor_mod

    results = doctor_mod.run(_state())
    for r in results:
        mark = {"ok": click.style("✓", fg="green"), "warn": click.style("!", fg="yellow"),
                "fail": click.style("✗", fg="red")}[r.level]
        click.echo(f"{mark} {r.name:<14} {r.detail}")
        if r.level != "ok" and r.fix:
            click.echo(click.style(f"  {'':<14} fix: {r.fix}", dim=True))
    best = doctor_mod.best_provider(results)
    click.echo(f"\nBest provider here: {best}" if best else "\nNo provider can run here.")
    sys.exit(0 if best else errors.EXIT_ENVIRONMENT)


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(labctl completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(main, {}, "labctl", "_LABCTL_COMPLETE").source())
