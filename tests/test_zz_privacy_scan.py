"""Last in the run: no log line of the whole run holds a real phone number, an API key or a token."""

import re

from tests.processes import LOG_DIR

UNMASKED_NUMBER = re.compile(r"(?<![\w*.:-])\+?\d{10,15}(?![\w-])")
API_KEY = re.compile(r"msk_[A-Za-z0-9_-]{8,}")
TOKENS = ("token-0123456789", "provider-token-xyz", "Bearer msk_")


def test_no_log_line_of_the_run_holds_a_number_key_or_token() -> None:
    """Every log file the run wrote (service processes, CLI, in-process apps) is clean."""
    files = sorted(LOG_DIR.iterdir())
    lines = [line for f in files for line in f.read_text(errors="replace").splitlines()]
    leaks = [
        line[:200]
        for line in lines
        if UNMASKED_NUMBER.search(line) or API_KEY.search(line) or any(t in line for t in TOKENS)
    ]
    print(f"\nscanned {len(lines)} log lines in {len(files)} files: {len(leaks)} leaks")
    assert len(files) >= 2 and len(lines) > 1000
    assert leaks == []
