"""Every CarbonFlow MQTT client is made here, so credentials and TLS are set up in one place.

    client = new_client(settings, client_id="gw-01")
    client.connect(settings.host, settings.broker_port, settings.keepalive_s)

``settings.broker_port`` is the TLS listener when ``settings.tls`` is on, the plain one
otherwise. The broker refuses anonymous clients, so ``settings`` carries a username and
password (for the local stack: ``carbonflow mqtt issue`` or ``.state/mqtt/services.env``).
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from carbonflow.config import MqttSettings


def configure_client(client: Client, settings: MqttSettings) -> None:
    """Give a paho client the credentials and TLS settings of ``settings``."""
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        # Certificate and host name are both verified (CERT_REQUIRED, check_hostname).
        ca_file = str(settings.tls_ca_file) if settings.tls_ca_file is not None else None
        client.tls_set(ca_certs=ca_file)


def new_client(
    settings: MqttSettings,
    *,
    client_id: str = "",
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    **options: Any,
) -> Client:
    """A paho client (callback API 2) configured from ``settings``; ``options`` go to paho."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **options)
    configure_client(client, settings)
    return client
