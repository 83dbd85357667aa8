"""The docs cannot drift: every shell block of docs/api.md runs, in order, against a live service."""

import asyncio
import json
import re
import subprocess
from pathlib import Path

import asyncpg

from tests.processes import ServeProcess, masking_env, run_cli
from tests.receiver import Receiver

DOCS = Path(__file__).resolve().parents[1] / "docs"


def shell_blocks(page: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S)


def test_every_curl_in_the_api_guide_works(tmp_path: Path, dsn: str) -> None:
    """The api guide's commands succeed in order; the walk-through's call completes."""
    token = "docs-callback-token-0123456789"
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_CALLBACK_TOKEN=token)
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    blocks = shell_blocks(DOCS / "api.md")
    assert len(blocks) >= 15
    curls = sum(block.count("curl ") for block in blocks)
    with ServeProcess(env, cwd=tmp_path) as service:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(blocks)],
            env={**env, "BASE": service.url, "KEY": key, "TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "completed\n" in result.stdout  # the walk-through echoes the call status it waited for
    assert '"code":"invalid_phone_number"' in result.stdout
    assert '"code":"no_session"' in result.stdout
    print(f"\nran {curls} curl commands from docs/api.md")


async def test_the_webhooks_guide_runs_and_its_python_verifies_a_real_delivery(
    tmp_path: Path, dsn: str, db: asyncpg.Connection
) -> None:
    """docs/webhooks.md's commands succeed in order against a live service and receiver; its Python verifier
    accepts the delivery the guide's test send made, and refuses it under another secret."""
    env = masking_env(MASKING_DATABASE_URL=dsn, MASKING_WEBHOOK_ALLOW_HTTP="true", MASKING_WEBHOOK_ALLOW_PRIVATE="true")
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    page = (DOCS / "webhooks.md").read_text()
    blocks = shell_blocks(DOCS / "webhooks.md")
    assert len(blocks) >= 4
    async with Receiver() as receiver:
        with ServeProcess(env, cwd=tmp_path) as service:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-euo",
                "pipefail",
                "-c",
                "\n".join(blocks),
                env={**env, "BASE": service.url, "KEY": key, "HOOK_URL": receiver.url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"{out.decode()[-3000:]}\n{err.decode()[-3000:]}"
        assert "delivered\n" in out.decode() and "caught up at" in out.decode()
        python = re.findall(r"```python\n(.*?)```", page, flags=re.S)[0]
        namespace: dict = {}
        exec(compile(python, "webhooks.md", "exec"), namespace)
        first_secret = await db.fetchval("SELECT previous_secret FROM webhook_endpoints")
        body, headers = receiver.raw[0]
        event = namespace["verified_event"](body, headers, first_secret)
        assert event is not None and event["type"] == "webhook.test"
        other = "whsec_" + "A" * 43 + "="
        assert namespace["verified_event"](body, headers, other) is None
