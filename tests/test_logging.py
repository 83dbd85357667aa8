"""No real phone number, API key or token reaches a log line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from service.logging import mask_number, scrub
from tests.factories import served_call_completed, served_session
from tests.processes import ServeProcess, masking_env, run_cli

CUSTOMER, AGENT, DID = "+919870001234", "+919870005678", "+918068200042"


def test_numbers_are_masked_keeping_country_code_and_last_four() -> None:
    """+919876543210 is logged as +91******3210; ids and short numbers are left alone."""
    assert mask_number("call +919876543210 now") == "call +91******3210 now"
    assert mask_number("919876543210") == "+91******3210"
    assert (
        mask_number("id 0c9a1e2b-1234-4f00-8a00-123456789012 and 42")
        == "id 0c9a1e2b-1234-4f00-8a00-123456789012 and 42"
    )
    assert scrub("Bearer msk_abcdefghijklmnop") == "Bearer [redacted]"
    assert (
        scrub("/v1/provider/thundersms/callback/s3cr3t-token?x=1") == "/v1/provider/thundersms/callback/[redacted]?x=1"
    )
    assert scrub("/c/Xjhyoz-zf5ObyXYiAAm4XdovqB_ujC-q/status") == "/c/[redacted]/status"


def test_a_whole_request_flow_logs_no_number_key_or_token(tmp_path: Path, dsn: str) -> None:
    """Requests carrying numbers and keys, good and bad, leave JSON lines with request ids and no secrets."""
    env = masking_env(
        MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN="callback-token-0123456789", MASKING_LOG_LEVEL="debug"
    )
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    log_path = tmp_path / "serve.log"
    with ServeProcess(env, log_path=log_path) as service:
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=service.url, headers=auth) as http:
            served_session(http, [DID], order="ORD-1", customer=CUSTOMER, agent=AGENT)
            body = {"order_id": "ORD-1", "customer": CUSTOMER, "agent": "+91123"}
            assert http.post("/v1/sessions", json=body).status_code == 422
            assert http.get(f"/v1/sessions?customer={CUSTOMER}").status_code == 200
            assert http.get(f"/v1/dids/{DID}").status_code in (404, 405)
            assert http.get("/v1/sessions", headers={"Authorization": "Bearer msk_wrong_key_000000"}).status_code == 401
            http.get("/v1/provider/thundersms/callback/callback-token-0123456789")
            http.get("/healthz", headers={"X-Request-ID": CUSTOMER[1:]})
            echoed = http.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
            assert echoed.headers["x-request-id"] != "bad id\twith spaces"
            assert http.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    lines = log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    requests = [r for r in records if r.get("event") == "request"]
    assert len(requests) >= 7 and all(r.get("request_id") for r in requests)
    text = log_path.read_text()
    for secret in (CUSTOMER, AGENT, DID, CUSTOMER[1:], key, "callback-token-0123456789", "msk_wrong_key_000000"):
        assert secret not in text, f"{secret[:6]}... leaked into the log"
    assert re.search(r"\+91\*+1234", text), "the customer's masked form should be in the log"


def test_a_call_link_a_console_sign_in_and_a_webhook_secret_stay_out_of_the_log(tmp_path: Path, dsn: str) -> None:
    """An agent's link token (it places calls), the ops key typed into the console, a webhook secret: none logged."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_WEBHOOK_ALLOW_HTTP="true", MASKING_WEBHOOK_ALLOW_PRIVATE="true")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", "--scope", "sessions", env=env).stdout)[
        "api_key"
    ]
    log_path = tmp_path / "serve.log"
    with ServeProcess(env, log_path=log_path) as service:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as http:
            session = served_session(http, [DID], order="ORD-1", customer=CUSTOMER, agent=AGENT)
            link = http.post(f"/v1/sessions/{session['id']}/call-links", json={"party": "agent"}).json()
            hook = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}).json()
        token = link["url"].rsplit("/c/", 1)[1]
        with httpx.Client(base_url=service.url) as anonymous:
            assert anonymous.get(f"/c/{token}").status_code == 200
            assert anonymous.get(f"/c/{token}/status").status_code == 200
            form = anonymous.get("/console/sign-in")
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None
            signed = anonymous.post("/console/sign-in", data={"_csrf_token": csrf.group(1), "key": key})
            assert signed.status_code == 303
    text = log_path.read_text()
    assert "/c/" in text, "the agent page's requests should be logged"
    for secret in (token, key, hook["secret"], CUSTOMER, AGENT):
        assert secret not in text, f"{secret[:6]}... leaked into the log"


def test_the_json_log_of_a_served_process_is_one_json_object_per_line(tmp_path: Path, dsn: str) -> None:
    """Not on a terminal, every line `masking serve` writes (its own, the libraries', the warnings') is JSON; none is blank.

    A simulated call goes through the simulator's mount, which used to print a plain-text LitestarWarning.
    """
    env = masking_env(MASKING_DATABASE_URL=dsn)
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    log_path = tmp_path / "serve.log"
    with ServeProcess(env, log_path=log_path) as service:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as http:
            served_call_completed(http, served_session(http, [DID], order="ORD-1", customer=CUSTOMER, agent=AGENT))
            assert http.get("/nowhere").status_code == 404
    lines = log_path.read_text().splitlines()
    assert "" not in lines, f"{lines.count('')} blank lines in {len(lines)}"
    not_json = []
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            not_json.append(line)
    assert not_json == [], not_json[:5]
    assert any(json.loads(line).get("event") == "request" for line in lines)


def test_a_python_warning_is_logged_as_a_json_line() -> None:
    """A library's warnings.warn() goes through the log pipeline: one JSON line naming it, not Python's plain text."""
    code = (
        "import warnings; from service.logging import configure_logging; configure_logging('json'); "
        "warnings.warn('call +919876543210 deprecated', UserWarning)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    record = json.loads(lines[0])
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "UserWarning" in record["event"] and "+91******3210" in record["event"]
