"""The CarbonFlow edge: gateways that read meters and publish telemetry batches over MQTT.

Runs on small devices (Raspberry Pi, PLC bridges), so it depends only on the standard
library, pydantic and paho-mqtt.
"""
