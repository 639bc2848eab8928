"""A federation's trust material: ``tinyfed provision init|device|revoke|list`` (docs/security.md).

``provision`` makes the CA, the broker's TLS side (certificate, ``mosquitto.conf``, ACL, CRL), the
gateway's certificate and signing key, and one bundle per device; ``registry`` is the gateway's
view of the device keys, re-read when it changes. Needs ``cryptography`` (the ``sign`` extra) except
``registry``, which the gateway reads without it.
"""
