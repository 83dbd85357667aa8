"""A thundersms stand-in: answers click-to-calls as the provider does and posts realistic reports back.

One module per job: `state` (settings, faults, what it received), `clicks` (voice/c2c), `callbacks` (the
reports it posts), `calllog` (the logs API), `recordings`, `app` (the routes); `__main__` runs it alone.
"""

from service.provider.simulator.app import simulator_app
from service.provider.simulator.calllog import log_row
from service.provider.simulator.recordings import recording_bytes
from service.provider.simulator.state import Fault, SimSettings, Simulator

__all__ = ["Fault", "SimSettings", "Simulator", "log_row", "recording_bytes", "simulator_app"]
