"""A call link's press racing a PATCH of its party, over real HTTP on two `masking serve` processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter

import httpx

from tests.helpers import did_numbers, mobile_numbers
from tests.processes import ServeProcess, masking_env, run_cli

SESSIONS = 60
PRESSES = 4
JSON = {"Accept": "application/json", "Content-Type": "application/json"}


async def test_a_press_racing_a_patch_of_its_party_never_calls_the_new_party(dsn: str) -> None:
    """Many presses of old agents' links race PATCHes replacing those agents, spread over two processes: every
    call placed rings the agent its link was made for, and a press that lost the race answers 410 link_expired."""
    env = masking_env(
        MASKING_DATABASE_URL=dsn,
        MASKING_LOG_LEVEL="warning",
        MASKING_LINK_PRESSES_PER_MINUTE="100000",
        MASKING_LINK_REQUESTS_PER_MINUTE="100000",
        MASKING_SESSION_CALLS_PER_WINDOW="100000",
        MASKING_CALLS_PER_MINUTE="100000",
    )
    key = json.loads(run_cli("tenant", "create", "acme", "--scope", "ops", env=env).stdout)["api_key"]
    services = [ServeProcess(env) for _ in range(2)]
    try:
        for s in services:
            s.start()
        urls = itertools.cycle([s.url for s in services])
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            r = await http.post(next(urls) + "/v1/dids/bulk", json={"dids": [{"number": n} for n in did_numbers(10)]})
            assert r.status_code == 200, r.text
            customers = mobile_numbers(SESSIONS, prefix="+91987")
            agents = mobile_numbers(SESSIONS, prefix="+91876")
            new_agents = mobile_numbers(SESSIONS, prefix="+91877")
            sessions, links = [], []
            for i in range(SESSIONS):
                body = {"order_id": f"o{i}", "customer": customers[i], "agent": agents[i]}
                r = await http.post(next(urls) + "/v1/sessions", json=body)
                assert r.status_code == 201, r.text
                sessions.append(r.json()["id"])
                r = await http.post(f"{next(urls)}/v1/sessions/{sessions[i]}/call-links", json={"max_uses": 100})
                assert r.status_code == 201, r.text
                links.append("/c/" + r.json()["url"].rsplit("/c/", 1)[1])

            async def press(i: int) -> tuple[str, int, str | None]:
                r = await http.post(next(urls) + links[i], headers=JSON, content=b"{}")
                return ("press", r.status_code, r.json().get("code"))

            async def patch(i: int) -> tuple[str, int, str | None]:
                r = await http.patch(f"{next(urls)}/v1/sessions/{sessions[i]}", json={"agent": new_agents[i]})
                return ("patch", r.status_code, r.json().get("code") if r.status_code != 200 else None)

            rng = random.Random(24)
            work = [press(i) for i in range(SESSIONS) for _ in range(PRESSES)] + [patch(i) for i in range(SESSIONS)]
            rng.shuffle(work)
            answers = Counter(await asyncio.gather(*work))
            print(f"\n{dict(answers)}")
            crossed = []
            for i in range(SESSIONS):
                r = await http.get(f"{next(urls)}/v1/sessions/{sessions[i]}/calls")
                assert r.status_code == 200, r.text
                crossed += [c for c in r.json()["items"] if c["from"] != agents[i]]
    finally:
        for s in services:
            s.stop()
    assert crossed == []
    assert answers[("press", 202, None)] > 0 and answers[("patch", 200, None)] > 0
    assert answers[("press", 410, "link_expired")] > 0
    assert all(status in (200, 202, 409, 410) for _, status, _ in answers), answers
