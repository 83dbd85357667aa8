"""SQL for webhooks: endpoints, deliveries (claims, attempts recorded, redelivery) and attempts listed."""

from __future__ import annotations

from service.db.webhooks.attempts import (
    AttemptRow,
    select_attempts,
)
from service.db.webhooks.deliveries import (
    CLAIM,
    RECORD,
    Backlog,
    Claimed,
    Outcome,
    backlog,
    claim,
    insert_test_delivery,
    record,
    redeliver,
)
from service.db.webhooks.endpoints import (
    ENDPOINT,
    Endpoint,
    delete_endpoint,
    insert_endpoint,
    rotate_secret,
    select_endpoint,
    select_endpoints,
    update_endpoint,
)

__all__ = [
    "CLAIM",
    "ENDPOINT",
    "RECORD",
    "AttemptRow",
    "Backlog",
    "Claimed",
    "Endpoint",
    "Outcome",
    "backlog",
    "claim",
    "delete_endpoint",
    "insert_endpoint",
    "insert_test_delivery",
    "record",
    "redeliver",
    "rotate_secret",
    "select_attempts",
    "select_endpoint",
    "select_endpoints",
    "update_endpoint",
]
