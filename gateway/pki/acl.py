"""Mosquitto's ACL file for a federation, from the topic layout (``edge_runtime.transport.topics``).

Each client's username is its certificate's common name (``use_identity_as_username``), so a ``user``
block grants exactly one certificate holder. What each may do:

- the gateway publishes state, manifest, chunks, every device's task and receipt, and presence (to clear a
  retained one); it receives every device's update and presence, state, manifest and chunks; it reads and
  writes its own presence (``gateway/presence``: its birth, its will, and its watch on both) and the claim
  on its client id (``client/<its id>/claim``);
- device D publishes D's update and D's presence (its birth and, through the broker, its will), and reads
  its own presence (a death while it lives is answered with a new birth); it receives D's task, D's
  receipt, state, manifest and chunks; it reads and writes the claim on its client id
  (``client/tinyfed-<federation>-D/claim``: two processes with D's bundle tell each other apart there);
- the gateway's probe identity (a second certificate of the gateway, ``<gateway>-probe``) reads the
  gateway presence and echoes itself under ``gateway/probe/``: a starting gateway's look for a running one.
  The broker names each client by its certificate (``use_username_as_clientid``), so a probe holding the
  gateway's own certificate would take the running gateway's session over.

Nothing else: a device cannot publish a model, a task, a receipt or state, nor anything under another
device's topics, and it receives nothing of another device's. Mosquitto 2.0 answers a refused QoS 1
publish with PUBACK "not authorized" (MQTT 5; MQTT 3.1.1 cannot say so) and drops it; it grants a
subscription to a refused filter but delivers nothing through it (the read check is made per message).
A user with no block (a revoked device) may do nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_runtime.transport.topics import Topics, member_client_id

HEADER = (
    "# Mosquitto ACL for tinyfed federation {federation}.\n"
    "# Written by `tinyfed provision`, rewritten at every `provision device` and `provision revoke`: do not edit.\n"
    "# A username is a client certificate's common name (use_identity_as_username).\n"
)


def _block(user: str, grants: list[tuple[str, str]]) -> str:
    return f"user {user}\n" + "".join(f"topic {access} {topic}\n" for access, topic in grants)


def probe_identity(gateway: str) -> str:
    """The common name of the gateway's probe certificate."""
    return f"{gateway}-probe"


def gateway_grants(topics: Topics, gateway: str) -> list[tuple[str, str]]:
    return [
        ("readwrite", topics.state),
        ("readwrite", topics.manifest),
        ("readwrite", topics.all_chunks),
        ("write", topics.all_tasks),
        ("write", topics.all_receipts),
        ("read", topics.all_updates),
        ("readwrite", topics.all_presence),
        ("readwrite", topics.gateway_presence),
        ("readwrite", topics.claim(gateway)),
    ]


def probe_grants(topics: Topics) -> list[tuple[str, str]]:
    return [
        ("read", topics.gateway_presence),
        ("readwrite", topics.all_gateway_probes),
    ]


def device_grants(topics: Topics, device: str) -> list[tuple[str, str]]:
    return [
        ("write", topics.update(device)),
        ("readwrite", topics.presence(device)),
        ("read", topics.task(device)),
        ("read", topics.receipt(device)),
        ("read", topics.state),
        ("read", topics.manifest),
        ("read", topics.all_chunks),
        ("readwrite", topics.claim(member_client_id(topics.federation, device))),
    ]


def render(federation: str, gateway: str, devices: Iterable[str]) -> str:
    """The whole ACL file: the gateway's and its probe's blocks, then one per enrolled (not revoked) device."""
    topics = Topics(federation)
    blocks = [_block(gateway, gateway_grants(topics, gateway)), _block(probe_identity(gateway), probe_grants(topics))]
    blocks += [_block(device, device_grants(topics, device)) for device in sorted(devices)]
    return HEADER.format(federation=federation) + "\n" + "\n".join(blocks)
