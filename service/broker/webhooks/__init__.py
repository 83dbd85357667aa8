"""Webhooks, one module per job: guard (the SSRF guard), endpoints (CRUD), attempts (listing, redelivery),
delivery (the worker and its HTTP client). The names other layers use are re-exported here."""

from service.broker.webhooks.attempts import Attempt, AttemptPage, Redelivered, list_attempts, redeliver
from service.broker.webhooks.delivery import Deliverer, send_test
from service.broker.webhooks.endpoints import (
    WebhookEndpoint,
    change_endpoint,
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_endpoints,
    new_secret,
    rotate_secret,
)
from service.broker.webhooks.guard import address_verdict

__all__ = [
    "Attempt",
    "AttemptPage",
    "Deliverer",
    "Redelivered",
    "WebhookEndpoint",
    "address_verdict",
    "change_endpoint",
    "create_endpoint",
    "delete_endpoint",
    "get_endpoint",
    "list_attempts",
    "list_endpoints",
    "new_secret",
    "redeliver",
    "rotate_secret",
    "send_test",
]
