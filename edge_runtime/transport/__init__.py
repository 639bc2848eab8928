"""MQTT transport: broker settings, the connection, topics, outbox, chunked model distribution, fragments.

A regular package (it was a namespace one by accident), so import contracts
can name its modules. ``broker_config`` and ``fragments`` need no paho;
everything that holds a connection does.
"""
