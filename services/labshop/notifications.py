"""notifications: tells customers about their orders, in reaction to OrderPlaced events.

GET /notifications   {"notifications": [the latest 50, newest first], "pod"}; 503 while the broker is unreachable

It consumes the orders stream in its own consumer group (EVENTS_GROUP, default notifications), so it receives
every event whatever other groups, such as inventory, do with the same events. "Sending" a notification is
writing it to a list in the broker (what an e-mail or SMS gateway would get), which every replica shows alike.

Idempotent: the list entry and a marker for the event's id (`notifications:sent:<id>`, kept for a week) are
written by one script, atomically and only when the marker is new, so a redelivered event sends nothing again.

Environment: EVENTS_* (see labshop.events; without EVENTS_REDIS_URL nothing arrives), plus what every service reads.
"""

from __future__ import annotations

import json
import socket

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from labshop import events, logs
from labshop.config import Common, Env
from labshop.web import Built, Readiness, create_app, json_error

NAME = "notifications"
SENT_LIST = "notifications:sent"
MARKER_PREFIX = "notifications:sent:"
MARKER_SECONDS = 7 * 24 * 3600
KEEP = 1000
SHOWN = 50

# Runs inside the broker, so nothing can happen between the check and the two writes.
# KEYS[1]: the event's marker, KEYS[2]: the list of sent notifications. ARGV: the notification, marker TTL, kept.
SEND_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
  return 1
end
return 0
"""


def create(env: Env) -> Built:
    """The notifications service, configured from `env`."""
    common = Common.from_env(env)
    log = logs.setup(NAME, common.log_level)
    pod = socket.gethostname()
    readiness = Readiness(common.not_ready_file)
    handlers: dict[str, events.Handler] = {}
    consuming = events.Consuming.from_env(env, NAME, handlers, readiness, log)
    client = consuming.client

    if client is not None:
        send_once = client.register_script(SEND_ONCE)

        async def order_placed(event: events.Event) -> bool:
            order, sku, quantity = events.order_fields(event)
            note = {"event": event.id, "order": order, "sku": sku, "quantity": quantity,
                    "message": f"Thank you! Order {order} ({quantity} x {sku}) is placed.",
                    "sent_at": events.now(), "pod": pod}
            sent = await send_once(keys=[MARKER_PREFIX + event.id, SENT_LIST],
                                   args=[json.dumps(note), MARKER_SECONDS, KEEP])
            if sent:
                log.info("notification sent", extra={"order": order, "event": event.id})
            return bool(sent)

        handlers[events.ORDER_PLACED] = order_placed

    async def sent(request: Request) -> JSONResponse:
        if client is None:
            return json_error(503, "EVENTS_REDIS_URL is not set: this instance receives no events")
        try:
            items = await client.lrange(SENT_LIST, 0, SHOWN - 1)
        except RedisError as e:
            return json_error(503, f"cannot read the broker: {str(e).splitlines()[0][:200]}")
        return JSONResponse({"notifications": [json.loads(i) for i in items], "pod": pod})

    routes = [Route("/notifications", sent)]
    app = create_app(NAME, common, routes, readiness=readiness, log=log, on_startup=consuming.on_startup,
                     on_shutdown=consuming.on_shutdown)
    return Built(app, common, readiness, log)
