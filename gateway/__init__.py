"""The hub: admission, round policy, the round lifecycle, the publisher, the store, and the MQTT service.

See docs/gateway.md ("Where each part lives") and docs/architecture.md.
"""
