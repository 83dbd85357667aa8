"""Run the simulator on its own: `python -m service.provider.simulator --port 9000 --callback-url URL`."""

from __future__ import annotations

import argparse

from service.provider.simulator.app import simulator_app
from service.provider.simulator.state import Simulator


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the simulator under uvicorn until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m service.provider.simulator", description="thundersms simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--callback-url", required=True, help="the service's callback URL, token included")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before a report is posted")
    parser.add_argument("--timezone", default="Asia/Kolkata")
    parser.add_argument("--send-mid", action="store_true", help="echo each click's mid in its report")
    args = parser.parse_args(argv)
    sim = Simulator(args.callback_url, args.timezone, args.delay, args.send_mid)
    uvicorn.run(simulator_app(sim), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
