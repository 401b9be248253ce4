"""A simulated factory that publishes believable power telemetry, live or as a replay.

``factory`` is the pure model (layout, power profiles, sampling); ``batching`` assembles
contract batches; ``runner`` paces live and replay runs; ``publisher`` is the MQTT adapter
and the composition root (``run_simulator``).
"""
