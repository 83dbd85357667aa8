"""Event-loop lag: a task that sleeps a fixed interval and reports how much later than asked it woke."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Short enough that a stall of S seconds shows as one observation between S - INTERVAL and S, long
# enough to cost nothing (20 wake-ups a second, a few microseconds each).
INTERVAL = 0.05


async def watch(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Forever: sleep `interval`, then observe how late the wake-up came (0 on time); ends when cancelled.

    The lateness is the time the loop spent on other work past the deadline: a blocking call, a long
    stretch of Python between awaits, or a ready queue so long that every task waits its turn.
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))
