"""Prometheus metrics of one gateway, in a registry of its own.

A registry per gateway (instead of the process-wide default) lets a test run several
gateways in one process and read each one's figures; the entry point serves it over HTTP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Reasons in ``carbonflow_gateway_readings_dropped_total``.
DROPPED_OLDEST = "buffer_full_dropped_oldest"
REJECTED_NEW = "buffer_full_rejected_new"
STORAGE_ERROR = "buffer_storage_error"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.readings_polled = Counter(
            "carbonflow_gateway_readings_polled",
            "Readings read from meters",
            ["device"],
            registry=r,
        )
        self.poll_failures = Counter(
            "carbonflow_gateway_poll_failures",
            "Polls that gave no readings (timeout, refusal, error)",
            ["device"],
            registry=r,
        )
        self.device_up = Gauge(
            "carbonflow_gateway_device_up",
            "1 while the meter answers its polls, 0 while it does not",
            ["device"],
            registry=r,
        )
        self.pending_batches = Gauge(
            "carbonflow_gateway_pending_batches",
            "Batches in the buffer that the broker has not acknowledged yet",
            registry=r,
        )
        self.buffer_bytes = Gauge(
            "carbonflow_gateway_buffer_bytes", "Payload bytes held by the buffer", registry=r
        )
        self.buffer_max_bytes = Gauge(
            "carbonflow_gateway_buffer_max_bytes", "The buffer's configured bound", registry=r
        )
        self.buffer_full = Counter(
            "carbonflow_gateway_buffer_full_events",
            "Times a batch did not fit the buffer (what happened: the overflow policy)",
            ["policy"],
            registry=r,
        )
        self.readings_dropped = Counter(
            "carbonflow_gateway_readings_dropped",
            "Readings given up by the gateway, by reason",
            ["reason"],
            registry=r,
        )
        self.batches_published = Counter(
            "carbonflow_gateway_batches_published", "Wire batches handed to MQTT", registry=r
        )
        self.readings_acknowledged = Counter(
            "carbonflow_gateway_readings_acknowledged",
            "Readings the broker acknowledged (PUBACK) and the buffer released",
            registry=r,
        )
        self.publish_rejected = Counter(
            "carbonflow_gateway_publish_rejected",
            "Batches the broker answered with an error reason code; kept and retried",
            registry=r,
        )
        self.publish_unrouted = Counter(
            "carbonflow_gateway_publish_unrouted",
            "Batches the broker acknowledged with 'No matching subscribers'; kept and retried",
            registry=r,
        )
        self.publish_latency = Histogram(
            "carbonflow_gateway_publish_latency_seconds",
            "From publishing a wire batch to the broker's PUBACK",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.inflight_batches = Gauge(
            "carbonflow_gateway_inflight_batches",
            "Wire batches published and awaiting PUBACK",
            registry=r,
        )
        self.broker_connected = Gauge(
            "carbonflow_gateway_broker_connected", "1 while connected to the broker", registry=r
        )

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
