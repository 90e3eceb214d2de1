"""How a cluster's status reads, for people and for scripts."""

from __future__ import annotations

from labctl.providers.base import ProviderStatus


def _mb(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else "-"


def format_status(st: ProviderStatus) -> str:
    """The status as a person reads it."""
    api = "API ready" if st.api_reachable else "API not reachable"
    nodes = f", {st.nodes_ready}/{st.nodes_total} nodes Ready" if st.api_reachable else ""
    lines = [f"Cluster: {st.provider} (context {st.context}): {api}{nodes}"]
    width = max((len(c.name) for c in st.components), default=0)
    for c in st.components:
        mark = "✓" if c.healthy else "✗"
        pid = f"pid {c.pid}" if c.pid else ""
        lines.append(f"  {mark} {c.name:<{width}}  {pid:<11} {_mb(c.rss_bytes):>7}  {c.detail}".rstrip())
    if st.message:
        lines.append(st.message)
    return "\n".join(lines)


def status_json(st: ProviderStatus) -> dict:
    return {
        "provider": st.provider, "context": st.context, "exists": st.exists, "apiReachable": st.api_reachable,
        "healthy": st.healthy, "nodesReady": st.nodes_ready, "nodesTotal": st.nodes_total, "message": st.message,
        "components": [{"name": c.name, "healthy": c.healthy, "detail": c.detail, "pid": c.pid,
                        "rssBytes": c.rss_bytes} for c in st.components],
    }
