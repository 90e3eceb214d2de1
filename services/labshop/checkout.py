"""checkout: the saga orchestrator. A checkout is a saga over the participants' saga routes (see
labshop.participants): create the order (pending), reserve the stock, charge the payment, confirm the order;
when a step fails, what was done is undone in reverse order (cancel, release, refund). See labshop.saga.

POST /checkouts        {"sku", "quantity"} -> 201 completed, 409 compensated (a step failed; everything
                       done was undone), 202 not finished yet (a compensation is being retried).
                       An `Idempotency-Key` header names the checkout: sent again, it gets that checkout
                       back instead of a second one.
GET  /checkouts        the newest checkouts (?status=compensated, ?limit=N)
GET  /checkouts/{id}   one checkout: each step's outcome and compensation, and its log
GET  /saga             the steps as configured, the recovery policy, and the log (where, since when)

Environment:
  SAGA_LOG_PATH              the saga log, a SQLite file; on a volume that outlives the pod (required)
  SAGA_STEPS                 the step names in order, e.g. "create-order reserve-stock charge-payment"
  SAGA_<STEP>_URL            where the step is sent (POST): SAGA_RESERVE_STOCK_URL=http://inventory/saga/reservations
  SAGA_<STEP>_COMPENSATION_URL  where its compensation is sent (POST); without one the step cannot be undone
  SAGA_TIMEOUT_SECONDS, SAGA_RETRIES, SAGA_BACKOFF_SECONDS   the call policy of every step (defaults 5, 0, 0.1),
                             overridden per step by SAGA_<STEP>_TIMEOUT_SECONDS etc.
  SAGA_RECOVERY              resume (default) or compensate: what a restarted orchestrator does with a saga that
                             was running
  SAGA_RETRY_INTERVAL_SECONDS  how often unfinished sagas are driven on (default 10)
  SAGA_STEP_DELAY_SECONDS    test hook: a pause after each call answers, before the log records it (default 0)
plus what every service reads.

One orchestrator writes one log: it holds an exclusive lock on `<SAGA_LOG_PATH>.lock`, and a second one
started on the same volume waits, not ready, until the first has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import logs
from labshop.calls import CallPolicy, json_object
from labshop.config import Common, ConfigError, Env
from labshop.saga import (COMPENSATED, COMPLETED, RECOVERY_POLICIES, Answer, KeyReused, LogError, Orchestrator,
                          Outcome, Saga, SagaLog, Step)
from labshop.web import Built, Readiness, create_app, json_body, json_error

NAME = "checkout"

STEP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
SAGA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Answers after which the participant may have done the work: the outcome is unknown, not a refusal.
UNKNOWN_STATUS = frozenset({500, 502, 504})

STEP_CALLS = Counter("saga_step_calls_total", "Calls to saga participants, by step, phase and outcome.",
                     ["step", "phase", "outcome"])
SAGAS = Counter("sagas_total", "Checkouts answered, by the state their saga was in.", ["status"])


@dataclass(frozen=True)
class StepConfig:
    name: str
    url: str
    compensation_url: str
    policy: CallPolicy

    def to_json(self) -> dict:
        return {"name": self.name, "url": self.url, "compensation_url": self.compensation_url or None,
                "timeout_seconds": self.policy.timeout_seconds, "retries": self.policy.retries,
                "backoff_seconds": self.policy.backoff_seconds}


@dataclass(frozen=True)
class SagaConfig:
    log_path: str
    steps: tuple[StepConfig, ...]
    recovery: str
    retry_interval_seconds: float
    step_delay_seconds: float

    @classmethod
    def from_env(cls, env: Env) -> SagaConfig:
        log_path = env.text("SAGA_LOG_PATH")
        if not log_path:
            raise ConfigError("SAGA_LOG_PATH must name the saga log's file, on a volume that outlives the pod")
        if not os.path.isabs(log_path):
            raise ConfigError(f"SAGA_LOG_PATH must be an absolute path, got {log_path!r}")
        names = [w for w in env.raw("SAGA_STEPS").replace(",", " ").split() if w]
        if not names:
            raise ConfigError("SAGA_STEPS must list the saga's steps in order, e.g. \"reserve-stock charge-payment\"")
        for name in names:
            if not STEP_NAME.match(name):
                raise ConfigError(f"SAGA_STEPS: {name!r} is not a step name (lower case letters, digits and -)")
        if len(set(names)) != len(names):
            raise ConfigError(f"SAGA_STEPS names a step twice: {' '.join(names)}")
        default = CallPolicy.from_env(env, "SAGA")
        steps = []
        for name in names:
            prefix = "SAGA_" + name.upper().replace("-", "_")
            url = env.url(f"{prefix}_URL")
            if not url:
                raise ConfigError(f"{prefix}_URL must say where step {name} is sent (e.g. http://inventory/saga/...)")
            timeout = env.seconds(f"{prefix}_TIMEOUT_SECONDS", default.timeout_seconds, maximum=300)
            if timeout == 0:
                raise ConfigError(f"{prefix}_TIMEOUT_SECONDS must be more than 0 (a call without a deadline can hang)")
            policy = CallPolicy(
                timeout_seconds=timeout,
                retries=env.integer(f"{prefix}_RETRIES", default.retries, minimum=0, maximum=10),
                backoff_seconds=env.seconds(f"{prefix}_BACKOFF_SECONDS", default.backoff_seconds, maximum=60),
            )
            steps.append(StepConfig(name, url, env.url(f"{prefix}_COMPENSATION_URL"), policy))
        recovery = env.text("SAGA_RECOVERY", "resume").lower()
        if recovery not in RECOVERY_POLICIES:
            raise ConfigError(f"SAGA_RECOVERY must be {' or '.join(RECOVERY_POLICIES)}, got {recovery!r}")
        interval = env.seconds("SAGA_RETRY_INTERVAL_SECONDS", 10.0, maximum=3600)
        if interval == 0:
            raise ConfigError("SAGA_RETRY_INTERVAL_SECONDS must be more than 0")
        return cls(log_path, tuple(steps), recovery, interval,
                   env.seconds("SAGA_STEP_DELAY_SECONDS", 0.0, maximum=600))


class HttpCall:
    """One step's action or compensation: a POST of the saga's context with the idempotency key, retried
    under the step's policy, judged done, refused or unknown (see labshop.saga)."""

    def __init__(self, step: str, phase: str, url: str, policy: CallPolicy, client: httpx.AsyncClient) -> None:
        self.step, self.phase, self.url, self.policy, self.client = step, phase, url, policy, client

    async def __call__(self, key: str, context: Mapping[str, Any]) -> Answer:
        answer = await self._attempts(key, context)
        STEP_CALLS.labels(self.step, self.phase, answer.outcome.value).inc()
        return answer

    async def _attempts(self, key: str, context: Mapping[str, Any]) -> Answer:
        maybe_done = False  # an attempt went out and no answer came back: it may have been done
        reason = ""
        for attempt in range(1, self.policy.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.policy.backoff(attempt - 1))
            try:
                response = await self.client.post(self.url, json=dict(context), headers={"Idempotency-Key": key},
                                                  timeout=httpx.Timeout(self.policy.timeout_seconds,
                                                                        connect=min(self.policy.timeout_seconds, 1.0)))
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                reason = f"cannot connect to {self.url} ({_short(e)})"  # nothing was sent
                continue
            except httpx.TimeoutException:
                maybe_done, reason = True, f"no answer from {self.url} within {self.policy.timeout_seconds:g}s"
                continue
            except httpx.TransportError as e:
                maybe_done, reason = True, f"{self.url} broke off ({_short(e)})"
                continue
            body = json_object(response)
            if 200 <= response.status_code < 300:
                return Answer(Outcome.DONE, body)
            said = f"{self.url} answered {response.status_code}" + (f": {body['error']}" if body.get("error") else "")
            if response.status_code == 503:
                reason = said  # unavailable: it did nothing, and may do it on another attempt
                continue
            if response.status_code in UNKNOWN_STATUS:
                maybe_done, reason = True, said
                continue
            return Answer(Outcome.REFUSED, body, said)  # a definite no (409 out of stock, 402 declined, ...)
        tried = f" (after {self.policy.attempts} attempt{'s' if self.policy.attempts != 1 else ''})"
        return Answer(Outcome.UNKNOWN if maybe_done else Outcome.REFUSED, reason=reason + tried)


def _short(e: Exception) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:120]


class LogReadiness(Readiness):
    """Ready once this instance holds the saga log: a second orchestrator on the same volume stays out of
    rotation while it waits."""

    def __init__(self, not_ready_file: str = "") -> None:
        super().__init__(not_ready_file)
        self.holds_log = False

    def state(self) -> tuple[bool, str]:
        ready, reason = super().state()
        if ready and not self.holds_log:
            return False, "waiting for the saga log (another orchestrator holds its lock)"
        return ready, reason


STATUS_CODES = {COMPLETED: 201, COMPENSATED: 409}


def answer(saga: Saga, *, replayed: bool = False) -> JSONResponse:
    body = saga.to_json()
    if saga.status == COMPENSATED:
        body["error"] = f"checkout {saga.id} did not go through and was undone: {saga.reason}"
    headers = {"Location": f"/checkouts/{saga.id}", **({"Idempotent-Replayed": "true"} if replayed else {})}
    return JSONResponse(body, status_code=STATUS_CODES.get(saga.status, 202), headers=headers)


def create(env: Env) -> Built:
    """The checkout orchestrator, configured from `env`."""
    started_at = time.time()
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    config = SagaConfig.from_env(env)
    lock_path = f"{config.log_path}.lock"
    try:
        os.makedirs(os.path.dirname(config.log_path), exist_ok=True)
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        saga_log = SagaLog(config.log_path)
    except OSError as e:
        raise ConfigError(f"SAGA_LOG_PATH {config.log_path}: cannot write there ({e.strerror}); "
                          "mount a writable volume at its folder") from None
    except LogError as e:
        raise ConfigError(str(e)) from None
    client = httpx.AsyncClient(headers={"User-Agent": "labshop-checkout"})
    steps = [Step(s.name, HttpCall(s.name, "action", s.url, s.policy, client),
                  HttpCall(s.name, "compensation", s.compensation_url, s.policy, client) if s.compensation_url
                  else None) for s in config.steps]
    orchestrator = Orchestrator(saga_log, steps, recovery=config.recovery, pause_seconds=config.step_delay_seconds,
                                logger=log)
    readiness = LogReadiness(common.not_ready_file)
    tasks: list[asyncio.Task] = []

    async def take_the_log() -> None:
        waited = False
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.warning("another orchestrator holds the saga log; waiting for it to stop",
                                extra={"lock": lock_path})
                    waited = True
                await asyncio.sleep(1.0)
        readiness.holds_log = True
        counts = saga_log.counts()
        log.info("saga log open", extra={"path": config.log_path, "sagas": counts, "recovery": config.recovery})
        try:
            recovered = await orchestrator.recover()
        except Exception:  # whatever went wrong, the loop below tries every unfinished saga again
            log.exception("recovery failed")
            recovered = []
        if recovered:
            log.info("recovery done", extra={"sagas": {s.id: s.status for s in recovered}})
        while True:
            await asyncio.sleep(config.retry_interval_seconds)
            for saga_id in saga_log.unfinished():
                if not orchestrator.busy(saga_id):
                    try:
                        await orchestrator.drive(saga_id)
                    except Exception:  # one saga's trouble must not stop the others being driven
                        log.exception("cannot drive saga", extra={"saga": saga_id})

    async def start() -> None:
        for s in config.steps:
            if not s.compensation_url:
                log.warning("step has no compensation: a saga that fails after it cannot be undone",
                            extra={"step": s.name})
        tasks.append(asyncio.create_task(take_the_log()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        saga_log.close()
        os.close(lock_fd)  # releases the lock: the next orchestrator may take over

    def not_holding() -> JSONResponse | None:
        if not readiness.holds_log:
            return json_error(503, "this orchestrator does not hold the saga log (another one does)")
        return None

    async def checkout(request: Request) -> JSONResponse:
        refusal = not_holding()
        if refusal:
            return refusal
        body = await json_body(request, sku=str, quantity=int)
        saga_id = request.headers.get("idempotency-key", "").strip() or uuid.uuid4().hex[:16]
        if not SAGA_ID.match(saga_id):
            return json_error(422, "the Idempotency-Key must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            saga, created = await orchestrator.start(saga_id, {"sku": body["sku"], "quantity": body["quantity"]})
        except KeyReused as e:
            return json_error(422, f"{e}: use a new Idempotency-Key for a new checkout")
        except LogError as e:
            log.error("saga log write failed", extra={"reason": str(e)})
            # Nothing is sent before the log says so: the checkout stands where its log says, and is taken up
            # again (by the retry loop, or after a restart) once the log can be written.
            return json_error(503, "the saga log cannot be written: the checkout is held where its log says it is",
                              id=saga_id)
        SAGAS.labels(saga.status).inc()
        return answer(saga, replayed=not created)

    async def list_checkouts(request: Request) -> JSONResponse:
        try:
            limit = max(1, min(200, int(request.query_params.get("limit", "20"))))
        except ValueError:
            return json_error(422, "limit must be a whole number")
        status = request.query_params.get("status") or None
        records = saga_log.recent(limit, status)
        return JSONResponse({"checkouts": [{"id": r.id, "status": r.status, "input": r.input,
                                            "created_at": round(r.created_at, 3)} for r in records],
                             "counts": saga_log.counts()})

    async def get_checkout(request: Request) -> JSONResponse:
        saga = orchestrator.get(request.path_params["id"])
        if saga is None:
            return json_error(404, "no such checkout in this orchestrator's log")
        return JSONResponse(saga.to_json(events=True))

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse({
            "steps": [s.to_json() for s in config.steps],
            "recovery": config.recovery,
            "holds_log": readiness.holds_log,
            "log": {"path": config.log_path, "created_at": round(saga_log.created_at, 3),
                    "process_started_at": round(started_at, 3),
                    # False when this process made the log: after a restart that means the old log was lost.
                    "older_than_this_process": saga_log.created_at < started_at,
                    "sagas": saga_log.counts()},
        })

    routes = [
        Route("/checkouts", checkout, methods=["POST"]),
        Route("/checkouts", list_checkouts, methods=["GET"]),
        Route("/checkouts/{id}", get_checkout),
        Route("/saga", describe),
    ]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=[start], on_shutdown=[stop])
    return Built(app, common, readiness, log)
