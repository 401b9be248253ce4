"""The edge gateway: poll meters, keep every reading on disk, publish it over MQTT.

``devices`` makes each meter's adapter from its config, and one task per meter polls it
under its own timeout and backoff (``polling``). Each answer goes to disk at once, as a
numbered batch (``batching``, ``recorder``), before anything is sent. ``forwarding``
publishes what the buffer holds at QoS 1 over one MQTT connection (``link``) and deletes it
only after the broker's PUBACK. ``presence`` and ``announcer`` tell the world whether the
gateway and each meter are there, ``metrics`` counts what happens, and ``app`` wires it all
together from the config file and the process ``settings`` (``run_gateway``).
"""
