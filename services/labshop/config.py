"""Configuration from environment variables: parsed once at start, refused with a clear message when wrong."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx


class ConfigError(Exception):
    """An environment variable holds a value the service cannot use."""


class Env:
    """Typed reads of one environment (os.environ by default), each with a default and bounds."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str:
        return self.environ.get(name, "").strip()

    def text(self, name: str, default: str = "") -> str:
        return self.raw(name) or default

    def seconds(self, name: str, default: float, *, maximum: float | None = None) -> float:
        raw = self.raw(name)
        if raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
        if not value >= 0:  # also refuses nan
            raise ConfigError(f"{name} must not be negative, got {raw!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum:g} seconds, got {raw!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.raw(name)
        if raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f"{name} must be {bounds}, got {raw!r}")
        return value

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=0, maximum=65535)

    def url(self, name: str, default: str = "") -> str:
        """An http(s) base URL such as http://catalog or http://catalog.shop.svc:80, or '' when unset."""
        raw = self.raw(name) or default
        if raw == "":
            return ""
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL:
            raise ConfigError(f"{name} is not a URL, got {raw!r}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"{name} must be an http:// or https:// URL with a host, got {raw!r}")
        return raw.rstrip("/")

    def words(self, name: str) -> frozenset[str]:
        """A comma- or space-separated list."""
        return frozenset(w for w in self.raw(name).replace(",", " ").split() if w)


@dataclass(frozen=True)
class Common:
    """What every service reads: where to listen, how to log, and how to start and stop."""

    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    version: str = "dev"
    startup_seconds: float = 0.5
    not_ready_file: str = "/tmp/not-ready"
    shutdown_delay_seconds: float = 2.0
    shutdown_timeout_seconds: float = 10.0
    response_delay_seconds: float = 0.0

    @classmethod
    def from_env(cls, env: Env) -> Common:
        level = env.text("LOG_LEVEL", "info").lower()
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"LOG_LEVEL must be debug, info, warning or error, got {level!r}")
        return cls(
            host=env.text("HOST", "0.0.0.0"),
            port=env.port("PORT", 8080),
            log_level=level,
            version=env.text("APP_VERSION", "dev"),
            startup_seconds=env.seconds("STARTUP_SECONDS", 0.5, maximum=600),
            not_ready_file=env.text("NOT_READY_FILE", "/tmp/not-ready"),
            shutdown_delay_seconds=env.seconds("SHUTDOWN_DELAY_SECONDS", 2.0, maximum=300),
            shutdown_timeout_seconds=env.seconds("SHUTDOWN_TIMEOUT_SECONDS", 10.0, maximum=300),
            response_delay_seconds=env.seconds("RESPONSE_DELAY_SECONDS", 0.0, maximum=300),
        )
