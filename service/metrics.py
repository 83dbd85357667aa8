"""Prometheus metrics of the service (the process-wide registry that Litestar's Prometheus plugin serves)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_CREATED = Counter("masking_sessions_created", "Sessions created", ["pool"])
SESSIONS_REFUSED = Counter("masking_sessions_refused", "Session creations refused", ["reason"])
ACTIVE_SESSIONS = Gauge("masking_active_sessions", "Active sessions", ["tenant", "pool"])
POOL_DIDS = Gauge("masking_pool_dids", "DIDs in a pool by status", ["tenant", "pool", "status"])
POOL_HEADROOM = Gauge(
    "masking_pool_headroom", "Active DIDs minus the two busiest parties' active sessions", ["tenant", "pool"]
)
ROUTED_WITHOUT_SESSION = Counter(
    "masking_route_without_session",
    "Inbound calls from a caller with no active session on the DID, by reason and whether a fallback answered",
    ["reason", "fallback"],
)
CALLS = Counter("masking_calls", "Calls by the status they reached", ["status"])
PROVIDER_LATENCY = Histogram(
    "masking_provider_request_seconds",
    "Click-to-call request latency by outcome",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
REPORTS = Counter("masking_reports_received", "Provider reports by outcome", ["outcome"])
REPORT_TIME_MISMATCH = Counter(
    "masking_report_time_mismatch",
    "Reports left unmatched because their times do not fit the call (check MASKING_PROVIDER_TIMEZONE)",
    ["reason"],
)
RECONCILED = Counter(
    "masking_reconcile_lookups",
    "Call-log lookups of calls still waiting for their report, by outcome (reconciled, not_found, ambiguous)",
    ["outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "masking_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retrying, failed)", ["outcome"]
)
WEBHOOK_OLDEST = Gauge("masking_webhook_oldest_undelivered_seconds", "Age of the oldest undelivered event")
# Labelled by endpoint id, but only for the endpoints with the oldest backlog (at most 20 series).
WEBHOOK_BACKLOG = Gauge(
    "masking_webhook_endpoint_backlog_seconds",
    "Age of the oldest undelivered event of the endpoints furthest behind",
    ["endpoint"],
)
# Events of transactions younger than the feed's horizon wait until the transaction holding it ends.
EVENT_FEED_HORIZON_LAG = Gauge(
    "masking_event_feed_horizon_lag_seconds",
    "How long the transaction holding back the event feed's horizon has been open (0: nothing holds it)",
)
WEBHOOK_DISABLED = Gauge("masking_webhook_endpoints_disabled", "Webhook endpoints disabled for failing")
SWEPT = Counter("masking_swept", "Rows tidied by background sweepers", ["job"])
# Fed by service.loopwatch in every process: how much later than asked a 50 ms sleep woke up.
EVENT_LOOP_LAG = Histogram(
    "masking_event_loop_lag_seconds",
    "How late the event loop ran a task due now (a stall of S seconds shows as one observation near S)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Pool names are user input: past this many distinct names per process, new ones share one label.
OTHER_POOLS = "_other"
_pool_labels: set[str] = set()
_pool_label_cap = 200


def cap_pool_labels(cap: int) -> None:
    """Set how many distinct pool names may become a label value (MASKING_METRICS_POOL_SERIES)."""
    global _pool_label_cap
    _pool_label_cap = cap


def pool_label(pool: str) -> str:
    """The label value for a pool: its name while the process has seen fewer than the cap, else `_other`."""
    if pool in _pool_labels:
        return pool
    if len(_pool_labels) < _pool_label_cap:
        _pool_labels.add(pool)
        return pool
    return OTHER_POOLS
