"""Who is calling: validating a caller's projected ServiceAccount token with the Kubernetes TokenReview API.

A caller's pod mounts a token minted for one audience (`serviceAccountToken: {audience: inventory}`) and
sends it as `Authorization: Bearer ...`. The callee never parses or verifies the JWT itself: it asks the API
server, which checks the signature, expiry, that the pod and ServiceAccount still exist, and that the token
was issued for the audience the callee names. A token minted for another audience is refused, so a token
stolen from one service cannot be replayed against another.

The callee needs permission to create TokenReviews (the `system:auth-delegator` ClusterRole). Reviews are
cached briefly by a hash of the token, so a busy callee does not ask the API server on every request.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from labshop.config import ConfigError, Env

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class Unauthenticated(Exception):
    """No token, or a token the API server does not accept for this audience (HTTP 401)."""


class Forbidden(Exception):
    """A valid token of a caller that is not on the allowed list (HTTP 403)."""


class ReviewUnavailable(Exception):
    """The API server could not be asked (HTTP 503: refusing is safer than letting an unknown caller in)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: `system:serviceaccount:<namespace>:<name>`."""

    username: str
    audiences: tuple[str, ...]


def api_server_from_env(env: Env) -> str:
    """`TOKENREVIEW_API_SERVER`, else the API server address Kubernetes gives every pod."""
    explicit = env.url("TOKENREVIEW_API_SERVER")
    if explicit:
        return explicit
    host, port = env.raw("KUBERNETES_SERVICE_HOST"), env.raw("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        raise ConfigError("AUTH_AUDIENCE is set but the API server is unknown: not in a pod "
                          "(KUBERNETES_SERVICE_HOST is unset) and TOKENREVIEW_API_SERVER is not given")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class TokenReviewer:
    """Validates callers' tokens for `audience` by asking the API server at `api_server`.

    `credentials_file` holds the reviewer's own token (its ServiceAccount's, in a pod); `ca_file` is the CA
    that signed the API server's certificate. `allowed` lists the usernames let in (empty: any valid caller).
    """

    def __init__(self, api_server: str, audience: str, *, ca_file: str | Path, credentials_file: str | Path,
                 allowed: frozenset[str] = frozenset(), cache_seconds: float = 10.0, timeout_seconds: float = 3.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.audience = audience
        self.allowed = allowed
        self.cache_seconds = cache_seconds
        self.credentials_file = Path(credentials_file)
        verify = ssl.create_default_context(cafile=str(ca_file))
        self.client = httpx.AsyncClient(base_url=api_server, verify=verify, timeout=timeout_seconds,
                                        transport=transport)
        self._cache: dict[str, tuple[float, Caller | str]] = {}

    @classmethod
    def from_env(cls, env: Env) -> TokenReviewer | None:
        """From AUTH_AUDIENCE (None when unset: no authentication), AUTH_ALLOWED_CALLERS and the pod's own
        ServiceAccount (TOKENREVIEW_API_SERVER, TOKENREVIEW_CA_FILE and TOKENREVIEW_TOKEN_FILE override it)."""
        audience = env.raw("AUTH_AUDIENCE")
        if not audience:
            return None
        return cls(
            api_server_from_env(env),
            audience,
            ca_file=env.text("TOKENREVIEW_CA_FILE", str(SA_DIR / "ca.crt")),
            credentials_file=env.text("TOKENREVIEW_TOKEN_FILE", str(SA_DIR / "token")),
            allowed=env.words("AUTH_ALLOWED_CALLERS"),
            cache_seconds=env.seconds("AUTH_CACHE_SECONDS", 10.0, maximum=300),
        )

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an `Authorization: Bearer <token>` value; Unauthenticated, Forbidden or
        ReviewUnavailable otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("a bearer token is required")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            verdict = cached[1]
        else:
            verdict = await self._review(token)
            if len(self._cache) > 1000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self.cache_seconds, verdict)
        if isinstance(verdict, str):
            raise Unauthenticated(verdict)
        if self.allowed and verdict.username not in self.allowed:
            raise Forbidden(f"{verdict.username} may not call this service")
        return verdict

    async def _review(self, token: str) -> Caller | str:
        """A Caller, or the reason the API server gave for refusing the token."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [self.audience]}}
        try:
            own = self.credentials_file.read_text().strip()
        except OSError as e:
            raise ReviewUnavailable(f"cannot read this service's own token {self.credentials_file}: {e.strerror}")
        try:
            response = await self.client.post(TOKENREVIEW_PATH, json=review,
                                              headers={"Authorization": f"Bearer {own}"})
        except httpx.HTTPError as e:
            raise ReviewUnavailable(f"cannot reach the API server: {e}") from e
        if response.status_code != 201 and response.status_code != 200:
            raise ReviewUnavailable(f"the API server refused the TokenReview: {response.status_code} "
                                    f"{_message(response)}")
        status = response.json().get("status") or {}
        if not status.get("authenticated"):
            return status.get("error") or "the token is not valid"
        audiences = tuple(status.get("audiences") or ())
        # The API server only authenticates a token for one of the audiences asked about; check anyway, so a
        # server that ignored the field cannot make this service accept a token meant for another.
        if self.audience not in audiences:
            return f"the token is not meant for {self.audience}"
        return Caller(status.get("user", {}).get("username", ""), audiences)

    async def close(self) -> None:
        await self.client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return response.text[:200]
