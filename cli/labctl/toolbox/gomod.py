"""go.mod text in and out, and the Go flags the toolbox builds with. Pure functions: no Go, no network."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BLOCK_DIRECTIVES = {"require", "replace", "exclude", "retract", "godebug", "tool", "ignore"}


@dataclass
class GoMod:
    """The directives of a go.mod that a wrapper module needs, each as its list of tokens."""

    module: str = ""
    go: str = ""
    godebug: list[list[str]] = field(default_factory=list)
    require: list[list[str]] = field(default_factory=list)
    replace: list[list[str]] = field(default_factory=list)
    exclude: list[list[str]] = field(default_factory=list)


def _tokens(line: str) -> list[str]:
    line = line.split("//", 1)[0]
    return [t.strip('"') for t in line.split()]


def parse_gomod(text: str) -> GoMod:
    """Parse the directives of a go.mod (single-line and block forms); comments are dropped."""
    mod = GoMod()
    block: str | None = None
    for raw in text.splitlines():
        tokens = _tokens(raw)
        if not tokens:
            continue
        if block is not None:
            if tokens == [")"]:
                block = None
            elif hasattr(mod, block):
                getattr(mod, block).append(tokens)
            continue
        verb, rest = tokens[0], tokens[1:]
        if rest == ["("] and verb in _BLOCK_DIRECTIVES:
            block = verb
        elif verb == "module" and rest:
            mod.module = rest[0]
        elif verb == "go" and rest:
            mod.go = rest[0]
        elif verb in ("godebug", "require", "replace", "exclude"):
            getattr(mod, verb).append(rest)
    return mod


def is_local_path(target: str) -> bool:
    """A replace target that names a folder rather than a module (`./x`, `../x`, `/x`)."""
    return target.startswith(("./", "../", "/")) or target in (".", "..")


def staging_version(version: str) -> str:
    """The version Kubernetes publishes its staging modules under: v1.37.2 -> v0.37.2."""
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)(.*)", version)
    if not m:
        raise ValueError(f"not a Kubernetes v1.x version: {version!r}")
    return f"v0.{m.group(1)}.{m.group(2)}{m.group(3)}"


def _replace_parts(tokens: list[str]) -> tuple[list[str], list[str]]:
    arrow = tokens.index("=>")
    return tokens[:arrow], tokens[arrow + 1:]


def wrapper_gomod(
    module_path: str,
    upstream_text: str,
    version: str,
    tools: list[str],
    *,
    copy: tuple[str, ...] = (),
    local_replace_version: str | None = None,
) -> str:
    """A go.mod that requires the upstream module at `version` and builds `tools` from it.

    Building from a wrapper keeps the upstream's own `go` and `godebug` lines, which decide the runtime
    defaults of the binaries. `copy` names further upstream directives to carry over ("replace", "exclude"):
    `go install` refuses modules that have them, yet the build list is only right with them.
    A replace that points into the upstream's own tree (Kubernetes' `./staging/...`) cannot be copied as is:
    with `local_replace_version` it becomes `X => X <that version>`, otherwise it is dropped because the
    upstream's require line already names the published version.
    """
    up = parse_gomod(upstream_text)
    if not up.module:
        raise ValueError("the upstream go.mod has no module line")
    lines = [f"module {module_path}", ""]
    if up.go:
        lines += [f"go {up.go}", ""]
    for tokens in up.godebug:
        lines.append("godebug " + " ".join(tokens))
    if up.godebug:
        lines.append("")
    lines += [f"require {up.module} {version}", ""]

    replaces: list[str] = []
    for tokens in up.replace:
        old, new = _replace_parts(tokens)
        if is_local_path(new[0]):
            if local_replace_version is None:
                continue
            replaces.append(f"\t{old[0]} => {old[0]} {local_replace_version}")
        elif "replace" in copy:
            replaces.append(f"\t{' '.join(old)} => {' '.join(new)}")
    if replaces:
        lines += ["replace (", *replaces, ")", ""]
    if "exclude" in copy and up.exclude:
        lines += ["exclude (", *(f"\t{' '.join(t)}" for t in up.exclude), ")", ""]
    lines += ["tool (", *(f"\t{t}" for t in sorted(tools)), ")"]
    return "\n".join(lines) + "\n"


def kubernetes_ldflags(version: str, build_date: str) -> list[str]:
    """The -X assignments upstream's build stamps into every Kubernetes binary (server and client side)."""
    m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if not m:
        raise ValueError(f"not a Kubernetes version: {version!r}")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={m.group(1)}",
            f"-X {pkg}.gitMinor={m.group(2)}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return flags


def ldflags(assignments: list[str]) -> str:
    """The -ldflags value: stripped binaries (-s -w) plus the version assignments."""
    return " ".join(["-s", "-w", *assignments])


def default_binary_name(package: str) -> str:
    """The file name `go build`/`go install` give a main package: its last path element, skipping a /vN suffix."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def escape_module_path(path: str) -> str:
    """A module path as the module proxy and module cache spell it: upper-case letters become !lower."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), path)
