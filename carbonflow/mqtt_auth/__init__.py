"""Who may connect to the MQTT broker and what each may publish or read.

Identities live in the registry table ``mqtt_credentials`` (username, role, the password in
Mosquitto's password-file hash format, issued/revoked times); the broker's password file and
ACL are generated from it and from the ``devices`` table:

- ``access``: pure: roles, what each identity may do, the password-file and ACL text.
- ``passwords``: new random passwords, hashed by Mosquitto's own ``mosquitto_passwd``.
- ``store``: the registry side: issue, revoke, list, and a snapshot for the broker.
- ``cli``: ``carbonflow mqtt issue|revoke|list|sync`` and ``carbonflow device add``.

The local stack applies them to its Mosquitto (``Stack.sync_mqtt_access``): the files are
rewritten and the broker reloaded with SIGHUP.
"""
