"""A fault switch: make a service fail or slow down on purpose, to watch what its callers do about it.

    <PREFIX>_FAULT                  none (default) | fail (answer 503 at once) | slow (wait, then answer normally)
    <PREFIX>_FAULT_DELAY_SECONDS    how long `slow` waits (default 5)

payments reads PAYMENTS_FAULT and PAYMENTS_FAULT_DELAY_SECONDS, and applies the fault to POST /payments only:
/healthz, /readyz and /metrics stay as they are, as they would for a service whose own backend (a card
processor) is failing while the process itself is fine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.responses import JSONResponse

from labshop.config import ConfigError, Env
from labshop.web import json_error

MODES = ("none", "fail", "slow")


@dataclass(frozen=True)
class Fault:
    """What the switch says: the mode, and how long `slow` waits."""

    mode: str = "none"
    delay_seconds: float = 5.0
    variable: str = "FAULT"

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> Fault:
        name = f"{prefix}_FAULT"
        mode = env.text(name, "none").lower()
        if mode not in MODES:
            raise ConfigError(f"{name} must be none, fail or slow, got {mode!r}")
        return cls(mode, env.seconds(f"{name}_DELAY_SECONDS", cls.delay_seconds, maximum=300), name)

    @property
    def on(self) -> bool:
        return self.mode != "none"

    async def inject(self) -> JSONResponse | None:
        """The answer to give instead of the real one (fail), after a wait (slow: then None), or None."""
        if self.mode == "fail":
            return json_error(503, f"failing on purpose ({self.variable}=fail)", fault="fail")
        if self.mode == "slow":
            await asyncio.sleep(self.delay_seconds)
        return None
