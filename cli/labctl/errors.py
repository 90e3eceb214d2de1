"""Domain errors. Each carries the exit code the CLI returns and a hint for the learner.

Exit codes (documented in `labctl --help` and the README):
  0  success; for `check`, every verifiable check passes
  1  `check`: at least one check fails; `solve`: what was applied did not become ready in time
  2  bad usage, a bad lab definition, or a kube context labctl did not create
  3  the cluster cannot be reached, or the API failed mid-run
  4  the environment cannot do it: a toolbox build or download failed, a provider cannot start
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECKS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_ENVIRONMENT = 4


class LabError(Exception):
    """Base of every error labctl reports to a person as one line (plus an optional hint)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LabError):
    """The command line asks for something that cannot be done as asked."""


class LabDefinitionError(LabError):
    """A lab.yaml (or a template it names) is invalid."""


class ContextRefused(LabError):
    """The kube context is not one labctl created and the user did not name it."""


class NotReady(LabError):
    """Applied workloads did not become ready in time: the lab's state, not the command line, is wrong."""

    exit_code = EXIT_CHECKS_FAILED


class ClusterUnreachable(LabError):
    """The API server cannot be reached or failed mid-run."""

    exit_code = EXIT_UNREACHABLE


class EnvironmentProblem(LabError):
    """This machine cannot do what was asked (a build failed, a provider cannot start here)."""

    exit_code = EXIT_ENVIRONMENT


class ToolboxError(EnvironmentProblem):
    """A pinned binary is missing, or building/downloading/verifying it failed."""


class ProviderError(EnvironmentProblem):
    """A cluster provider failed to start, stop or report."""
