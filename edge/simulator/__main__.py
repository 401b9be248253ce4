"""``python -m edge.simulator``: the simulator without the ``carbonflow`` command (edge installs).

Live until Ctrl-C by default; ``--replay-from/--replay-to`` (ISO 8601, naive means UTC)
replay a historical range instead. Settings come from ``CARBONFLOW_MQTT_*`` and
``CARBONFLOW_SIM_*`` environment variables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime

from carbonflow.config import MqttSettings
from edge.errors import EdgeError
from edge.simulator.publisher import run_simulator
from edge.simulator.settings import SimulatorSettings

logger = logging.getLogger("edge.simulator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.simulator", description=__doc__)
    parser.add_argument("--replay-from", type=datetime.fromisoformat, metavar="TIME")
    parser.add_argument("--replay-to", type=datetime.fromisoformat, metavar="TIME")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.replay_from is None) != (args.replay_to is None):
        parser.error("--replay-from and --replay-to go together")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    replay = None if args.replay_from is None else (args.replay_from, args.replay_to)
    try:
        summary = run_simulator(MqttSettings(), SimulatorSettings(), stop=None, replay=replay)
    except EdgeError as exc:
        logger.error("%s", exc)
        return 1
    print(f"published {summary.batches} batches, {summary.readings} readings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
