"""Mosquitto's ACL file for a federation, from the topic layout (``edge_runtime.transport.topics``).

Each client's username is its certificate's common name (``use_identity_as_username``), so a ``user``
block grants exactly one certificate holder. What each may do:

- the gateway publishes state, manifest, chunks, every device's task and receipt, and presence (to clear a
  retained one); it receives every device's update and presence, state, manifest and chunks;
- device D publishes D's update and D's presence (its birth and, through the broker, its will); it
  receives D's task, D's receipt, state, manifest and chunks.

Nothing else: a device cannot publish a model, a task, a receipt or state, nor anything under another
device's topics, and it receives nothing of another device's. Mosquitto 2.0 answers a refused QoS 1
publish with PUBACK "not authorized" (MQTT 5; MQTT 3.1.1 cannot say so) and drops it; it grants a
subscription to a refused filter but delivers nothing through it (the read check is made per message).
A user with no block (a revoked device) may do nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_runtime.transport.topics import Topics

HEADER = (
    "# Mosquitto ACL for tinyfed federation {federation}.\n"
    "# Written by `tinyfed provision`, rewritten at every `provision device` and `provision revoke`: do not edit.\n"
    "# A username is a client certificate's common name (use_identity_as_username).\n"
)


def _block(user: str, grants: list[tuple[str, str]]) -> str:
    return f"user {user}\n" + "".join(f"topic {access} {topic}\n" for access, topic in grants)


def gateway_grants(topics: Topics) -> list[tuple[str, str]]:
    return [
        ("readwrite", topics.state),
        ("readwrite", topics.manifest),
        ("readwrite", topics.all_chunks),
        ("write", topics.all_tasks),
        ("write", topics.all_receipts),
        ("read", topics.all_updates),
        ("readwrite", topics.all_presence),
    ]


def device_grants(topics: Topics, device: str) -> list[tuple[str, str]]:
    return [
        ("write", topics.update(device)),
        ("write", topics.presence(device)),
        ("read", topics.task(device)),
        ("read", topics.receipt(device)),
        ("read", topics.state),
        ("read", topics.manifest),
        ("read", topics.all_chunks),
    ]


def render(federation: str, gateway: str, devices: Iterable[str]) -> str:
    """The whole ACL file: the gateway's block, then one per enrolled (not revoked) device, sorted."""
    topics = Topics(federation)
    blocks = [_block(gateway, gateway_grants(topics))]
    blocks += [_block(device, device_grants(topics, device)) for device in sorted(devices)]
    return HEADER.format(federation=federation) + "\n" + "\n".join(blocks)
