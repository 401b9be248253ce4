"""Logging set-up, called only by entry points."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    # Chatty libraries: their INFO lines drown out ours.
    for name in ("aiokafka", "kafka", "faust", "mode", "alembic"):
        logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.WARNING))
