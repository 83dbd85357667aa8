"""A newcomer following the README, then the API guide, on one service, falls into no trap."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def session_creates(text: str) -> set[tuple[str, str, str]]:
    """The (order_id, customer, agent) of every session a page's commands create."""
    return set(
        re.findall(r'"order_id": "([^"]+)", "customer": "([^"]+)", "agent": "([^"]+)"', text.replace("\\\n", ""))
    )


def test_the_api_guide_creates_another_session_than_the_readme_demo() -> None:
    """api.md's create does not repeat the demo's order and parties (a repeat would answer the demo's session)."""
    demo = session_creates((ROOT / "README.md").read_text())
    guide = session_creates((ROOT / "docs" / "api.md").read_text())
    assert demo and guide
    assert not demo & guide, demo & guide
    assert not {d[0] for d in demo} & {g[0] for g in guide}


def test_the_readme_puts_the_venv_on_path_and_says_how_long_the_suite_takes() -> None:
    """The guides call `masking` bare, so the README says how to put .venv/bin on PATH; it gives the suite's time."""
    readme = (ROOT / "README.md").read_text()
    assert ". .venv/bin/activate" in readme
    assert re.search(r"about \d+ minutes on 2 cores", readme)
    assert re.search(r"^(?!.*\.venv/bin/masking).*\$\(masking |^masking ", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert ".venv/bin" in (ROOT / "docs" / "api.md").read_text()
