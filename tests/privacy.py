"""The privacy scan of a test run's logs: no real phone number, API key or token in any line."""

from __future__ import annotations

import re
from pathlib import Path

UNMASKED_NUMBER = re.compile(r"(?<![\w*.:-])\+?\d{10,15}(?![\w-])")
API_KEY = re.compile(r"msk_[A-Za-z0-9_-]{8,}")
TOKENS = ("token-0123456789", "provider-token-xyz", "Bearer msk_", "whsec_")
# A call link's token in its path (/c/<token>): it places calls, so it is a secret like a key.
LINK_TOKEN = re.compile(r"/c/[A-Za-z0-9_-]{16,}")


def leaks(lines: list[str]) -> list[str]:
    """The lines (cut to 200 characters) that hold an unmasked number, a key or a known token."""
    return [
        line[:200]
        for line in lines
        if UNMASKED_NUMBER.search(line)
        or API_KEY.search(line)
        or LINK_TOKEN.search(line)
        or any(t in line for t in TOKENS)
    ]


def scan(folder: Path) -> tuple[int, list[str]]:
    """How many log lines the folder's files hold, and which of them leak."""
    lines = [line for f in sorted(folder.iterdir()) for line in f.read_text(errors="replace").splitlines()]
    return len(lines), leaks(lines)
