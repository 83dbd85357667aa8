"""Settings: one frozen msgspec Struct read from the MASKING_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import sys
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

PREFIX = "MASKING_"

Seconds = Annotated[int, msgspec.Meta(ge=1)]


class SettingsError(ValueError):
    """A MASKING_* variable has a value the service cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service reads from its environment, with the contract's defaults."""

    database_url: str | None = None
    data_dir: str = "./.masking"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    provider: Literal["simulator", "thundersms"] | None = None
    thundersms_url: str = "http://portal.thundersms.com/api/v2/"
    thundersms_token: str | None = None
    thundersms_webhook_id: str | None = None
    callback_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    provider_timezone: str = "Asia/Kolkata"
    provider_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    default_ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=2_592_000)] = 86_400
    cooloff_seconds: Annotated[int, msgspec.Meta(ge=0)] = 3600
    call_report_timeout_seconds: Seconds = 7200
    report_clock_tolerance_seconds: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 300
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    db_acquire_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    log_format: Literal["console", "json"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 10
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # The HTTP server: uvicorn (uvloop, httptools) or granian (Rust); see docs/performance.md.
    server: Literal["uvicorn", "granian"] = "granian"
    sweep_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    calls_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 600
    session_calls_per_window: Annotated[int, msgspec.Meta(ge=0)] = 3
    session_call_window_seconds: Annotated[int, msgspec.Meta(ge=1)] = 600
    sessions_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 6000
    # Days after which an ended session's numbers are masked (0: never; privacy favours short).
    retention_days: Annotated[int, msgspec.Meta(ge=0)] | None = 90
    # Bounds on what users' input can grow (issue 12): pools per tenant, per-pool metric series.
    max_pools_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 100
    metrics_pool_series: Annotated[int, msgspec.Meta(ge=0)] = 200
    # How long an ended binding remembers its pair for sticky re-use (deleted after this or the cool-off).
    sticky_memory_seconds: Annotated[int, msgspec.Meta(ge=0)] = 604_800
    # How long a settled provider report (matched, unmatched, duplicate, unparseable) is kept.
    report_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 30
    public_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    # Proxies in front of the service (addresses or networks, comma-separated) whose X-Forwarded-For is
    # believed when the agent pages limit requests per client address; empty: the peer is the client.
    trusted_proxies: str = ""
    # Agent pages, per process: presses of one link a minute (the session's call caps apply on top), and
    # requests from one client address a minute (a ringing page polls every 1.5 s: 40 a minute). Raise
    # the latter when many agents share an address (a carrier's NAT) and no proxy names them; 0: no limit.
    link_presses_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 6
    link_requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 120
    # Events and webhooks (issue 13): how long events and delivery attempts are kept, what addresses a
    # webhook may point at, and the delivery schedule (tests compress it; see docs/webhooks.md).
    event_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 30
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhook_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 15.0
    webhook_retry_seconds: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$")] = (
        "5,300,1800,7200,18000,36000,36000"
    )
    webhook_disable_after_seconds: Annotated[float, msgspec.Meta(gt=0)] = 259_200.0
    webhook_poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    webhook_concurrency_per_endpoint: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    webhook_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    # Privacy at rest (issue 20): the key ring (a 0600 file, or its JSON in one variable; unset with the
    # embedded database: keys.json beside its data) and how long the audit log is kept.
    keys_file: str | None = None
    keys: str | None = None
    audit_retention_days: Annotated[int, msgspec.Meta(ge=1)] = 400
    max_webhooks_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 20
    # Reconciliation (issue 22): when a call with no report is looked up in the provider's call log, and
    # how many call-log requests a second the service makes at most.
    reconcile_after_seconds: Seconds = 600
    reconcile_requests_per_second: Annotated[float, msgspec.Meta(gt=0, le=100)] = 5.0

    @property
    def webhook_retries(self) -> list[float]:
        """Seconds to wait before each retry of a failed delivery (MASKING_WEBHOOK_RETRY_SECONDS)."""
        return [float(x) for x in self.webhook_retry_seconds.split(",")]

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """MASKING_TRUSTED_PROXIES as networks (a bare address is a network of one)."""
        parts = [p.strip() for p in self.trusted_proxies.split(",")]
        return tuple(ipaddress.ip_network(p, strict=False) for p in parts if p)

    @property
    def provider_kind(self) -> Literal["simulator", "thundersms"]:
        """The provider in use: `simulator` unless a thundersms token is set, unless chosen explicitly."""
        if self.provider is not None:
            return self.provider
        return "thundersms" if self.thundersms_token else "simulator"

    @property
    def public_base(self) -> str:
        """Where agents' phones reach the service (call links): MASKING_PUBLIC_URL, else http://{host}:{port}."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def log_renderer(self) -> Literal["console", "json"]:
        """Console output on a terminal, JSON lines otherwise, unless chosen explicitly."""
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from MASKING_* variables; a bad value raises SettingsError naming the variable."""
    env = os.environ if environ is None else environ
    raw = {
        key[len(PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(PREFIX) and value != "" and key[len(PREFIX) :].lower() in Settings.__struct_fields__
    }
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("$.", 1)[-1].rstrip("`") if "$." in message else ""
        variable = PREFIX + field.upper() if field else "a MASKING_* variable"
        raise SettingsError(f"{variable}: {message.split(' - at ')[0]}") from None
    try:
        zoneinfo.ZoneInfo(settings.provider_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"MASKING_PROVIDER_TIMEZONE: unknown time zone {settings.provider_timezone!r} "
            "(use an IANA name such as Asia/Kolkata)"
        ) from None
    try:
        settings.trusted_networks  # noqa: B018 (parsed here so a bad value stops the start)
    except ValueError as exc:
        raise SettingsError(
            f"MASKING_TRUSTED_PROXIES: {exc} (give addresses or networks, comma-separated: 10.0.0.0/8,192.0.2.7)"
        ) from None
    if settings.provider_kind == "thundersms" and not settings.thundersms_token:
        raise SettingsError("MASKING_THUNDERSMS_TOKEN: required when MASKING_PROVIDER is thundersms")
    if not settings.thundersms_url.endswith("/"):
        settings = msgspec.structs.replace(settings, thundersms_url=settings.thundersms_url + "/")
    return settings
