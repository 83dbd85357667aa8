"""The docs cannot drift: every shell block of docs/api.md runs, in order, against a live service."""

import json
import re
import subprocess
from pathlib import Path

from tests.processes import ServeProcess, masking_env, run_cli

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
