"""The toolbox: pinned Kubernetes-related binaries in labctl's cache, built from Go modules or downloaded.

    from labctl.toolbox import binary, install, installed, COMPONENTS, GROUPS
    binary("kube-apiserver")      # Path, or ToolboxError when it is not installed (stat only)
    install(["sim"])              # builds or downloads what is missing, verifies, returns name -> Path
"""

from labctl.toolbox.components import COMPONENTS, GROUPS, KUBERNETES_VERSION, Component
from labctl.toolbox.install import install
from labctl.toolbox.store import binary, installed

__all__ = ["COMPONENTS", "GROUPS", "KUBERNETES_VERSION", "Component", "binary", "install", "installed"]
