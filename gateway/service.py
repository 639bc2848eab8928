"""The gateway service: moves messages between MQTT and the parts that decide, and nothing else.

``rounds.Rounds`` judges and folds each update and carries out each step
of the round policy; ``publisher.Publisher`` makes and publishes model
versions; ``registry.Registry`` follows presence. This module subscribes,
decodes, measures, sends receipts and tasks, publishes models and state,
and runs the round thread. No paho call is made under a lock, and an
update is decoded and measured before any lock is taken.

One gateway per federation: a running gateway keeps a retained presence
(its host and storage; its death is the last will) on the gateway
presence topic, and a starting one reads it first, through a client of
its own (connecting with the gateway's client id would drop the running
one), and refuses to start while another is alive. Should two start at
once, the client id settles it: the first stops (``ClientIdConflict``).
On a provisioned broker, which names every client by its certificate,
that client is the probe identity (``[trust] probe_cert_file``): the
gateway's own certificate would take the running gateway's session.

Signatures (``trust.GatewayTrust``, docs/security.md): everything the
gateway publishes is signed where it is encoded; every update, failure
report and presence is opened under the key the registry holds for the
device whose topic it came on before anything else reads it. A refused
update or report is recorded without its id and gets no receipt (it is
not the device's word); a refused presence is logged and counted
(``refused_presence``). A device whose key is revoked is dropped from the
round at once, as a dead one is, so the round completes without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.errors import ExitCode, TinyfedError
from edge_runtime.lograte import RateLimitedLog
from edge_runtime.transport.fragments import Reassembler
from edge_runtime.transport.mqtt import MqttLink, Will
from edge_runtime.transport.topics import Topics, gateway_client_id
from edge_runtime.wire.cbor import loads

from .admission import AdmissionRules
from .aggregate import update_norm
from .clock import Clock, SystemClock
from .config import GatewayConfig
from .disk import DiskSpace, OutOfSpace, is_out_of_space
from .master import MasterModel
from .policy import OpenRound, RoundPolicy, TaskSettings
from .privacy.budget import budget_of
from .publisher import Publisher
from .registry import Eligibility, Registry
from .robustness.detector import Detector
from .robustness.persistence import at_bound_reference
from .robustness.validation import from_config as validation_for
from .rounds import Rounds, RoundSummary, Settled, Step
from .store import STORE_KEEPS, GatewayStore
from .trust import gateway_trust

log = logging.getLogger(__name__)
SESSION_KEY = "secagg_session"  # meta: the open secure aggregation session, as gateway status shows it
# Refused presence messages are counted by the name on their topic, which is the sender's word: past this many
# names, the rest are counted under OTHER_NAMES, or a sender of made-up names would grow the counter without end.
REFUSED_PRESENCE_NAMES = 1024
OTHER_NAMES = "(other names)"
SECAGG_ANSWERS = (wire.SecAggAdvertise.TYPE, wire.SecAggShares.TYPE, wire.SecAggMasked.TYPE, wire.SecAggReveal.TYPE)
__all__ = ["Gateway", "RoundSummary", "SecondGateway"]


class SecondGateway(RuntimeError, TinyfedError):
    """Another gateway of this federation is alive on the broker: two would each run rounds of their own."""

    exit_code = ExitCode.ID_CONFLICT


def readable_update_id(data: bytes) -> bytes | None:
    """The id (an update's, or a failure report's: both at key 2) of a message that failed validation, when
    its CBOR is sound enough to hold one: the receipt that refuses it lets the device stop resending it."""
    if data[:1] == bytes([wire.MSG_UPDATE_COMPACT]) and len(data) > 9:  # compact: 8 id bytes after the type
        return data[1:9] + bytes(8)
    try:
        obj = loads(data, wire.DEFAULT_LIMITS)
    except wire.WireError:
        return None
    if isinstance(obj, dict) and obj.get(0) in (wire.Update.TYPE, wire.TaskFailure.TYPE):
        candidate = obj.get(2)
        if isinstance(candidate, bytes) and len(candidate) == 16:
            return candidate
    return None


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        link: MqttLink | None = None,
        *,
        clock: Clock | None = None,
        strategy: Any = None,
    ) -> None:
        self.config = config
        rc = config.rounds
        self.trust = gateway_trust(config.trust, config.source)  # before anything is opened: no keys, no start
        self.refused_presence: Counter[str] = Counter()  # device -> presence messages refused (signatures)
        # What senders' messages make it say (refusals, replays): at a bounded rate (edge_runtime/lograte.py).
        self.said = RateLimitedLog(log, "refused or repeated messages", STORE_KEEPS)
        self.clock = clock or SystemClock()
        self.topics = Topics(config.gateway.federation)
        self.store = GatewayStore(config.storage / "gateway.db")
        self.registry = Registry(self.store)
        self.strategy = strategy if strategy is not None else config.make_strategy()
        self.publisher = Publisher(config, self.store, self.strategy)
        # Under DP the sample must be one nobody can predict (the accountant's amplification assumes it): drawn
        # from the OS's entropy, never from [rounds] seed.
        privacy = budget_of(config, self.store)
        seed = secrets.randbits(128) if privacy is not None else rc.seed + self.store.last_round()
        policy = RoundPolicy(
            rc,
            Eligibility(min_samples=rc.min_samples, min_ram=rc.min_ram),
            TaskSettings.from_rounds(rc, prox_mu=float(getattr(self.strategy, "mu", 0.0))),
            np.random.default_rng(seed),
            # distributed-dp: the rounds are secure aggregation's; the budget only says when they stop.
            privacy=privacy.rules if privacy is not None and not privacy.distributed else None,
        )
        latest = [r for r in self.store.rounds(5) if r.mode == "sync"]
        if rc.interval and latest:  # the schedule survives a restart: the next round is due where it was
            policy.next_open_at = latest[-1].started + rc.interval
        admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
        disk = DiskSpace(config.storage, config.gateway.min_free_mb)
        detector = None
        if config.robustness.detect:
            detector = Detector(config.robustness, self.store, validation_for(config, self.publisher.model),
                                at_bound_reference(rc.norm_bound, rc.clip_norm))
        self.rounds = Rounds(self.store, self.registry, self.publisher, policy, admission, self.clock,
                             rc.clip_norm or None, disk, privacy, detector)  # fmt: skip
        # Group commit: intake stages; a batch commits when full or after commit_delay, then its receipts go out.
        self._staged = threading.Event()  # set by intake: something waits for a commit (or for its receipts)
        self.rounds.max_batch = config.gateway.commit_batch
        self.store.batch_limit = config.gateway.commit_batch  # the writer too: at most this many per fsync
        self.rounds.idle_commit = config.gateway.commit_delay
        self.rounds.keep_receipts = True
        self.rounds.on_settled = self._staged.set  # what a close or a deadline settled goes out by the commit thread
        self._commit_now = threading.Event()  # set by intake when a batch is due (full, or it found intake idle)
        self.rounds.on_commit_due = self._commit_now.set
        self.store.stage_presence = True  # a birth's row too: 10,000 births at start are not 10,000 fsyncs
        self._committer: threading.Thread | None = None
        self.secure: Any = None  # SecureRounds under [secagg] (cryptography is imported only then)
        if config.secagg.on:
            from .secagg_round import SecureRounds

            self.secure = SecureRounds(config.secagg, self.sizes, rc.density)
            self._session_state = ""  # the session state last written for gateway status
            if config.secagg.noise_multiplier > 0 and privacy is None:
                log.warning("[secagg] noise_multiplier = %g without a budget: the ledger records each round's "
                            "distributed-DP event and nothing stops rounds; [privacy] mode = \"distributed-dp\" "
                            "with its epsilon and delta stops them (docs/secagg.md)", config.secagg.noise_multiplier)
        self._space_warned = False  # an update that could not be stored is logged once per shortage
        self.unstored = 0  # messages not stored (and so not receipted) for want of space, since start
        # Our presence: who we are (host and storage) in the device field, our process id as its seq.
        self.owner = f"{socket.gethostname()}:{config.storage.resolve()}"[:256]
        seal = self.trust.seal
        self._alive = seal(wire.encode(wire.Presence(self.owner, True, os.getpid(), int(time.time()))))
        dead = seal(wire.encode(wire.Presence(self.owner, False, os.getpid(), int(time.time()))))
        client_id = gateway_client_id(config.gateway.federation)
        self.link = link or MqttLink(
            config.broker,
            client_id=client_id,
            will=Will(self.topics.gateway_presence, dead),
            claim_topic=self.topics.claim(client_id),
            conflict_hint=f"a second gateway of federation {config.gateway.federation!r} started on this broker",
        )
        self.link.on_connect_hooks.append(self._announce)
        self.link.subscribe(self.topics.gateway_presence, self._on_own_presence)
        self.reassembler = Reassembler()
        self.on_round_closed: list[Callable[[RoundSummary], None]] = []
        if config.retention.models or config.retention.updates:
            self.on_round_closed.append(self._retain)
        self.finished = threading.Event()
        self.final_metrics: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The broker: while it is out of reach rounds stand still; on every reconnect the model and the state
        # are published again (a broker restarted without persistence, or a publish that failed, lost them).
        self.offline = threading.Event()  # set by the round thread while the broker is out of reach
        self.republished = threading.Event()  # set after each successful (re)publication of model and state
        self._offline_since: float | None = None
        self._republish = False
        self._unsent: list[tuple[str, bytes, float]] = []  # tasks the broker never took: topic, payload, deadline
        self._prune_failed = False  # the last [retention] refusals pass failed (said once)
        self.link.on_connect_hooks.append(self._on_connected)
        self.link.subscribe(self.topics.all_updates, self._on_update)
        self.link.subscribe(self.topics.all_presence, self._on_presence)
        if self.strategy.buffered:
            log.info(
                "strategy %s keeps every update of a round, sparse: about %.1f MB per device at density %g",
                self.strategy.name,
                12 * config.rounds.density * sum(self.sizes.values()) / 1e6,
                config.rounds.density,
            )

    def _retain(self, summary: RoundSummary) -> None:
        """[retention], after each round: old versions and payloads go (gateway/retention.py)."""
        from .retention import prune

        prune(self.store, self.config)

    # -- what callers read ----------------------------------------------------------------------------------
    @property
    def model(self) -> bytes:
        return self.publisher.model

    @property
    def version(self) -> bytes:
        return self.publisher.version

    @property
    def master(self) -> MasterModel:
        return self.publisher.master

    @property
    def sizes(self) -> dict[int, int]:
        return self.rounds.sizes

    @property
    def open_round(self) -> OpenRound | None:
        return self.rounds.open_round

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Gateway:
        self._refuse_a_second_gateway()
        self.rounds.resume()  # before the first message can arrive: updates queued for us belong to this round
        if self.secure is not None:
            self._fail_interrupted_session()
            self._record_session()  # the last process's session, if any, is over
        self.link.start()
        self.link.require_connected(self.config.gateway.connect_timeout)
        self.link.wait_ready(self.config.gateway.connect_timeout)
        self._republish = False
        self.publisher.publish(self.link, self.topics, self.trust.seal)
        self._publish_state(0)
        self.republished.set()
        self._thread = threading.Thread(target=self._run, name="gateway-rounds", daemon=True)
        self._thread.start()
        self._committer = threading.Thread(target=self._commit_loop, name="gateway-commit", daemon=True)
        self._committer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._staged.set()
        self._commit_now.set()
        for thread in (self._thread, self._committer):
            if thread is not None:
                thread.join(timeout=30)
        self._release(self.rounds.flush())  # what intake staged last: committed, and receipted while we can
        if self.link.connected.is_set():  # gone, said now (a clean disconnect sends no last will)
            gone = self.trust.seal(wire.encode(wire.Presence(self.owner, False, os.getpid(), int(time.time()))))
            self.link.publish(self.topics.gateway_presence, gone, retain=True, timeout=5.0)
        self.link.stop()
        self.store.close()

    # -- one gateway per federation -------------------------------------------------------------------------
    def _announce(self) -> None:
        """paho's thread, on every connect: the presence a starting gateway reads (a restarted broker lost it)."""
        self.link.publish(self.topics.gateway_presence, self._alive, retain=True)

    def _on_own_presence(self, topic: str, payload: bytes) -> None:
        """Another word than ours on our presence while we run (the last will of a gateway that took our id and
        stopped, delivered late) is overwritten, so a starting gateway still finds this one."""
        if payload and payload != self._alive and not self._stop.is_set():
            self._announce()

    def _refuse_a_second_gateway(self) -> None:
        other = self._running_gateway()
        if other is None or not other.online:
            return
        if other.device == self.owner:  # our own storage: the run before this one, which did not stop cleanly
            log.info("the last gateway on this storage (process %d) did not say it stopped; taking over", other.seq)
            return
        host, _, storage = other.device.partition(":")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.timestamp))
        grace = 1.5 * self.config.broker.keepalive
        raise SecondGateway(
            f"another gateway of federation {self.config.gateway.federation!r} is running on host {host!r} with "
            f"storage {storage} (process {other.seq}, since {since}), by its presence on {self.config.broker.url}. "
            f"Stop it first, or give this gateway another [gateway] federation. (A gateway that died is announced "
            f"gone by the broker within about {grace:.0f} s.)"
        )

    def _probe_broker(self) -> Any:
        """The broker settings the probe connects with: the probe identity's certificate when one is configured.

        Without one, on a broker that takes each client's id from its certificate, the probe would connect as
        the running gateway and take its session over: then no check is made (said), and the client id
        settles a conflict as before.
        """
        broker = dataclasses.replace(self.config.broker, session_expiry=0)
        trust = self.config.trust
        if trust.probe_cert_file is not None:
            return dataclasses.replace(broker, cert_file=trust.probe_cert_file, key_file=trust.probe_key_file)
        if broker.cert_file is not None:
            log.warning("no [trust] probe_cert_file: a second gateway of this federation is not looked for before "
                        "start (the gateway's own certificate would take over the running one's session)")  # fmt: skip
            return None
        return broker

    def _running_gateway(self) -> wire.Presence | None:
        """The retained gateway presence, read by a client of its own whose session ends with it.

        Retained messages come right after the SUBACK; an echo published after it arrives after them,
        so once the echo is back, a presence that has not arrived does not exist. In signed mode only a
        presence this gateway's key signed counts (one sharing the key is this federation's gateway).
        """
        broker = self._probe_broker()
        if broker is None:
            return None
        probe_id = f"{gateway_client_id(self.config.gateway.federation)}-probe-{secrets.token_hex(4)}"
        echo_topic = self.topics.gateway_probe(probe_id)
        seen: list[wire.Presence] = []
        echoed = threading.Event()

        def on_presence(topic: str, payload: bytes) -> None:
            if not payload:
                return
            try:
                seen.append(wire.decode(self.trust.own(payload).payload, expect=wire.Presence))
            except wire.WireError as exc:
                log.warning("ignored a gateway presence not signed by this gateway's key: %s", exc)

        probe = MqttLink(broker, probe_id)
        probe.subscribe(self.topics.gateway_presence, on_presence)
        probe.subscribe(echo_topic, lambda topic, payload: echoed.set())
        timeout = self.config.gateway.connect_timeout
        try:
            probe.start()
            probe.require_connected(timeout)
            if not (probe.wait_ready(timeout) and probe.publish(echo_topic, b"", timeout=timeout)
                    and echoed.wait(timeout)):  # fmt: skip
                log.warning("could not read the gateway presence on the broker; starting without that check")
                return None
        finally:
            probe.stop()
        return seen[-1] if seen else None

    # -- incoming -------------------------------------------------------------------------------------------
    def _on_presence(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            device = self.topics.device_of(topic)
        except wire.WireError as exc:
            self.said.warning("refused a presence message on %s: %s", topic, exc)
            return
        try:
            opened = self.trust.open(device, payload)
            presence = wire.decode(opened.payload, expect=wire.Presence)
        except wire.WireError as exc:
            known = device in self.refused_presence or len(self.refused_presence) < REFUSED_PRESENCE_NAMES
            self.refused_presence[device if known else OTHER_NAMES] += 1
            self.said.warning("refused a presence message on %s: %s", topic, exc)
            return
        if presence.device != device:
            self.said.warning("refused a presence for %r on the topic of %r", presence.device, device)
            return
        try:
            _, died = self.registry.observe(presence, payload)
        except Exception as exc:  # the registry in memory took it; only its row on disk is missing
            if not is_out_of_space(exc):
                raise
            self._out_of_space(OutOfSpace(f"presence of {device}", exc))
            return
        if presence.online and (why := self.trust.out(device)) is not None:
            # Believed under the registry as it was; revoked since (the round thread expelled it meanwhile, and
            # this birth would bring it back): out again, at once.
            self.registry.expel(device, why)
        self._staged.set()  # its row is committed with the next batch
        if died or presence.online:
            self._wake.set()

    def _on_update(self, topic: str, payload: bytes) -> None:
        try:
            device = self.topics.device_of(topic)
        except wire.WireError as exc:
            self.said.warning("ignored a message on %s: %s", topic, exc)
            return
        try:
            whole = self.reassembler.feed(device, payload)
        except wire.WireError as exc:
            self._refuse(None, device, f"fragment: {exc}", len(payload))
            return
        if whole is None:
            return
        if self.trust.watcher is None and wire.peek_type(whole) is not None:
            payload = whole  # insecure and plainly unsigned: wire.decode parses it once (trust.open would too)
        else:
            try:
                payload = self.trust.open(device, whole).payload
            except wire.WireError as exc:  # not the device's word: no id recorded, no receipt (module docstring)
                self._refuse(None, device, f"{type(exc).__name__}: {exc}", len(whole))
                return
        if wire.peek_type(payload) == wire.TaskFailure.TYPE:
            self._on_failure(device, payload)
            return
        if self.secure is not None and wire.peek_type(payload) in SECAGG_ANSWERS:
            refused = self.secure.answer(device, payload)
            if refused is None:
                self._count_secure_answer(device, whole)
                self._wake.set()
            else:
                self._refuse(None, device, f"secure aggregation: {refused}", len(whole))
            return
        try:
            update = wire.decode(
                payload, expect=wire.Update, spec=self.rounds.spec, device=device, versions=self._base_version
            )
        except wire.WireError as exc:
            self._refuse_undecodable(device, payload, exc)
            return
        if self.secure is not None and update.tensors:
            why = "secure aggregation: a training update in the clear is refused"
            self._refuse(update.update_id, device, why, len(whole), receipt=True)
            return
        try:
            verdict = self.rounds.intake(update, whole, device, update_norm(update))
        except OutOfSpace as exc:
            self._out_of_space(exc)
            return
        short = update.update_id.hex()[:12]
        if verdict.receipt_reason is not None:
            self.said.warning("refused update %s of %s: %s", short, device, verdict.reason)
        elif not verdict.accepted:
            self.said.info("update %s of %s arrived again; not counted twice", short, device)
        self._staged.set()  # its receipt goes out after the commit that holds it (the timer's, or a full batch's)
        self._release(self.rounds.released())

    def _base_version(self, prefix: bytes) -> bytes | None:
        """The model version a compact update's 4-byte prefix names: the current one or the open round's base,
        else the one stored model with that prefix (an async round's older base); None: unknown or ambiguous."""
        open_round = self.rounds.open_round
        for known in (self.rounds.publisher.version, open_round.row.base_version if open_round else None):
            if known is not None and known.startswith(prefix):
                return known
        row = self.store.model(prefix.hex())
        return bytes.fromhex(row["version"]) if row is not None else None

    def _on_failure(self, device: str, data: bytes) -> None:
        """A device cannot do its task: recorded, the round stops waiting for it, and it is receipted."""
        try:
            failure = wire.decode(data, expect=wire.TaskFailure)
        except wire.WireError as exc:
            self._refuse_undecodable(device, data, exc)
            return
        try:
            refused = self.rounds.report_failure(failure, device)
        except OutOfSpace as exc:
            self._out_of_space(exc)
            return
        if refused is None:
            self._wake.set()
        else:
            self.said.warning("refused a task failure report of %s: %s", device, refused)
        self._send_receipt(device, failure.report_id, refused)

    def _refuse_undecodable(self, device: str, data: bytes, exc: wire.WireError) -> None:
        """Record why; when the message's id is readable, tell the device, so it stops resending it."""
        message_id, why = readable_update_id(data), f"{type(exc).__name__}: {exc}"
        self._refuse(message_id, device, why, len(data), receipt=True)

    def _refuse(self, message_id: bytes | None, device: str, reason: str, nbytes: int, receipt: bool = False) -> None:
        """Recorded in the group commit's batch (Rounds.refuse); with ``receipt`` and a readable id, the device is
        told after that commit, so it stops resending it."""
        self.said.warning("refused a message from %s: %s", device, reason)
        try:
            self.rounds.refuse(message_id, device, reason, nbytes, receipt)
        except OutOfSpace as exc:
            self._out_of_space(exc)
            return
        self._staged.set()
        self._release(self.rounds.released())

    def _out_of_space(self, exc: OutOfSpace) -> None:
        """No receipt goes out for what was not stored: the device keeps its update and sends it again."""
        self.unstored += 1
        if not self._space_warned:
            log.warning("%s; not counted, the device will send it again", exc.strerror)
            self._space_warned = True

    def _commit_loop(self) -> None:
        """Group commit's writer: a staged update waits at most commit_delay for others to share its fsync (none
        when its batch is due), and the fsync is waited for here, not on paho's thread, which stages the next
        batch meanwhile. Receipts go out from here once their batch is durable."""
        delay = self.config.gateway.commit_delay
        while not self._stop.is_set():
            if not self._staged.wait(0.5):
                continue
            if delay:
                self._commit_now.wait(delay)
            self._commit_now.clear()
            self._staged.clear()
            try:
                self._release(self.rounds.flush())
            except Exception:  # the next batch may fare better; its devices resend what this one lost
                log.exception("committing a batch of updates failed")

    def _release(self, settled: Settled) -> None:
        """Receipts for what a commit made durable, never before; what a failed commit lost gets none."""
        for device, message_id, reason in settled.receipts:
            self._send_receipt(device, message_id, reason)
        if settled.receipts and not settled.lost:
            self._space_warned = False
        if settled.counted:
            self._wake.set()
        error = settled.error
        for pending in settled.lost:
            what = pending.describe()
            if error is not None and is_out_of_space(error):
                self._out_of_space(OutOfSpace(what, error))
            else:
                self.unstored += 1
                then = "a resend is judged again" if pending.refused else "the device will send it again"
                log.error("%s was not committed (%s); %s", what, error, then)

    def _send_receipt(self, device: str, update_id: bytes, reason: str | None) -> None:
        receipt = wire.Receipt([update_id]) if reason is None else wire.Receipt([], {update_id: reason[:256]})
        self.link.publish(self.topics.receipt(device), self.trust.seal(wire.encode(receipt)))

    # -- outgoing -------------------------------------------------------------------------------------------
    def _publish_state(self, phase: int) -> None:
        open_round = self.rounds.open_round
        # Central DP: how many were sampled and answered is a count one device moves by one; it is not published.
        counted = open_round is not None and open_round.row.privacy != "central-dp"
        state = wire.GatewayState(
            self.config.gateway.federation,
            open_round.number if open_round else self.store.last_round(),
            phase,
            self.version,
            len(open_round.selected) if open_round and counted else 0,
            open_round.aggregate.count if open_round and counted else 0,
            int(open_round.row.deadline) if open_round else 0,
            int(self.clock.now()),
        )
        self.link.publish(self.topics.state, self.trust.seal(wire.encode(state)), retain=True)

    # -- the broker's availability ------------------------------------------------------------------------
    def _on_connected(self) -> None:
        """paho's thread, on every CONNACK: the round thread republishes (a publish here would wait on paho)."""
        self._republish = True
        self._wake.set()

    def _reachable(self) -> bool:
        """Track outages on the round thread: deadlines pause for their length; reconnecting republishes."""
        if not self.link.connected.is_set():
            if self._offline_since is None:
                self._offline_since = self.clock.now()
                self.offline.set()
                log.warning("lost the broker: rounds stand still until it is back")
            return False
        if self._offline_since is not None:
            self.rounds.pause(self.clock.now() - self._offline_since)
            self._offline_since = None
            self.offline.clear()
            self._republish = True
        if self._republish:
            try:
                self.publisher.publish(self.link, self.topics, self.trust.seal)
                self._publish_state(1 if self.rounds.open_round else 0)
            except wire.WireError as exc:  # the broker went away again mid-publication: next time
                log.warning("republishing the model failed (%s); retrying", exc)
                return False
            self._republish = False
            self.republished.set()
            unsent, self._unsent = self._unsent, []
            self._send_tasks(unsent)
        return True

    def _send_tasks(self, tasks: list[tuple[str, bytes, float]]) -> None:
        """Publish tasks; keep the ones the broker did not take for the next reconnect (until their deadline)."""
        now = self.clock.now()
        for topic, payload, deadline in tasks:
            if deadline <= now:
                continue
            if not self.link.publish(topic, payload, expiry=max(1, int(deadline - now))):
                self._unsent.append((topic, payload, deadline))

    # -- the round thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._expel_revoked()
                if self._reachable():
                    self.step()
            except Exception:  # the federation outlives a bad round; the log says what happened
                log.exception("round step failed")
            self._prune_refusals()

    def _prune_refusals(self) -> None:
        """[retention] refusals between rounds too: a flood of refused messages does not wait for a round to
        close. A failure (a full disk) is said once until pruning works again; rounds go on meanwhile."""
        from .retention import prune_refusals

        try:
            prune_refusals(self.store, self.config)
            self._prune_failed = False
        except Exception as exc:
            if not self._prune_failed:
                log.warning("could not delete old refused messages' records ([retention] refusals): %s", exc)
            self._prune_failed = True

    def _expel_revoked(self) -> None:
        """A device whose key was revoked leaves at once, as a dead one does: its task goes to another device or
        the round closes without it. One stat of the registry per look; the first look also takes out the
        devices the store remembers that were revoked while the gateway was down."""
        def known() -> Iterator[str]:  # lazy: the registry is copied only when trust reads it (its first look)
            yield from (d.device for d in self.registry.all())

        for device, why in self.trust.revoked(known()).items():
            self.registry.expel(device, why)
            self.rounds.drop(device, why)
            self._wake.set()

    # -- secure aggregation (gateway/secagg_round.py) -------------------------------------------------------
    def _count_secure_answer(self, device: str, whole: bytes) -> None:
        """A secure round's uplink is its answers: each goes into the updates table as kind ``secagg`` (a masked
        input as ``secagg-masked``; bytes only, no payload), so the round's bytes are counted like any round's; a
        masked input's dense size is the trainable tensors' in float32, as for a plain update."""
        round_, kind = self.secure.taken
        dense = self.rounds.dense_bytes if kind == "masked" else 0
        try:
            self.store.accept(hashlib.sha256(whole).digest()[:16], round_, round_, device,
                              "secagg-masked" if kind == "masked" else "secagg", 0, 0.0,
                              self.publisher.version, len(whole), dense, b"")  # fmt: skip
        except Exception as exc:  # bookkeeping: a full disk must not cost the session its answer
            if not is_out_of_space(exc):
                raise
            log.warning("the bytes of a secure aggregation answer from %s are not counted: %s", device, exc)

    def _record_session(self) -> None:
        """The open session's state, for ``gateway status`` (another process, reading the store): written when
        it changes; ``{}`` once no session is open."""
        state = json.dumps(self.secure.state() or {}, sort_keys=True)
        if state == self._session_state:
            return
        try:
            self.store.set_meta(SESSION_KEY, state)
        except Exception as exc:  # the operator's view only: a full disk must not stop the round thread
            if not is_out_of_space(exc):
                raise
            return
        self._session_state = state

    def _fail_interrupted_session(self) -> None:
        """A training round a stop left open had a secure session, whose secrets and answers were only in the
        last process's memory: nothing can recover its sum, so it fails now (recorded, nothing published), not
        at its deadline, and the next round opens a new session."""
        open_round = self.rounds.open_round
        if open_round is None or open_round.row.mode != "sync":
            return
        self.rounds.secure_fail(open_round.number, "the gateway restarted mid-session: a secure aggregation "
                                "session lives in the gateway's memory, and its sum cannot be recovered")  # fmt: skip
    def _secure_tasks(self, step: Step) -> list[tuple[str, wire.Task]]:
        """A new training round's setups go out before its tasks, each task marked secure. Tasks planned later
        in a round (replacements for devices that died or failed) are not sent: no device joins a session late."""
        opened = step.opened
        if opened is not None and opened.mode == "eval":
            return step.tasks
        if opened is None:
            if step.tasks:
                log.info("round tasks for %s not sent: a secure aggregation session takes no one late",
                         [d for d, _ in step.tasks])  # fmt: skip
            return []
        setups = self.secure.open(opened.round, [d for d, _ in step.tasks], self.clock.now(), opened.deadline)
        seal = self.trust.seal
        self._send_tasks([(self.topics.task(d), seal(wire.encode(m)), opened.deadline) for d, m in setups])
        return [(d, dataclasses.replace(t, secure=True)) for d, t in step.tasks]

    def _secure_step(self, step: Step) -> None:
        """Move the open session on; close its round on the sum, or fail it. Folds what happened into ``step``."""
        if step.ended is not None:
            self.secure.discard(step.ended.round)  # the round ended on its own (its deadline): the session with it
        out = self.secure.tick(self.clock.now())
        seal = self.trust.seal
        if out.requests:
            self._send_tasks([(self.topics.task(d), seal(wire.encode(m)), out.deadline) for d, m in out.requests])
            self._wake.set()
        ended = None
        if out.result is not None:
            ledger = self.secure.ledger_entry(out.result)
            ended = self.rounds.secure_close(out.round, out.result.sum, len(out.result.survivors), ledger).ended
            if ended is not None and out.result.dropped:
                log.info("round %d: the sum of %d devices; %s dropped out", out.round, len(out.result.survivors),
                         out.result.dropped)  # fmt: skip
        elif out.failure is not None:
            ended = self.rounds.secure_fail(out.round, out.failure).ended
        if ended is not None and step.ended is None:
            step.ended = ended

    def step(self) -> Step:
        """One step of the rounds, then what it means on the broker: tasks, state, a new model."""
        step = self.rounds.step()
        self._release(self.rounds.released())  # a close settles the batch before detaching: its receipts
        deadline = self.clock.now() + step.expiry
        seal = self.trust.seal
        tasks = self._secure_tasks(step) if self.secure is not None else step.tasks
        self._send_tasks([(self.topics.task(d), seal(wire.encode(t)), deadline) for d, t in tasks])
        if self.secure is not None:
            self._secure_step(step)
            self._record_session()
        if step.opened is not None:
            self._publish_state(1)
        if step.ended is not None:
            if step.ended.version is not None:
                try:
                    self.publisher.publish(self.link, self.topics, self.trust.seal)
                except wire.WireError as exc:
                    log.warning("publishing model %s failed (%s); it is published again on reconnect",
                                step.ended.version.hex()[:12], exc)  # fmt: skip
                    self._republish = True
            self._publish_state(0)
            for listener in list(self.on_round_closed):
                listener(step.ended)
            self._wake.set()
        if step.evaluated is not None:
            self.final_metrics = step.evaluated
            self._wake.set()
        if step.finished:
            self.finished.set()
        return step
