"""A board behind a serial port as a federation member on MQTT.

The MQTT side is the Python device's own (:class:`edge_runtime.member.
FederationMember`: topics, presence with a last will, the model store and
fetcher, the outbox and its receipts); what differs is who does the work.
Here a task goes down the serial line: the board is brought to the task's
base model if it runs another (streamed with resume), the task is relayed
as TRAIN, and the board's UPDATE comes back and goes into the outbox like
any device's.

A supervisor thread asks the board for its STATUS every ``heartbeat``
seconds. A board that stops answering is announced dead on MQTT (the same
retained presence message a device's last will carries), and greeted
again until it answers; then it is announced alive, brought to the
current model, and takes tasks again.

A task the board refuses for a lasting reason (ERROR: not enough memory, a
kernel it lacks, samples that do not fit the model, training that failed)
is reported to the gateway with the reason its error code means
(``edge_runtime.failures``), as is a model the host already knows the
board cannot run. Passing trouble is not reported: a damaged frame, a
transfer to resume, a reset, silence (announced as its death). A report
keeps a device out until its birth changes, and a board's birth changes
only when the bridge restarts or the board's firmware does.

Secure aggregation (docs/secagg.md): the bridge is on the board's side of
the trust boundary, so it runs the device's side of each session for its
boards. A secure task goes down the line asking for the whole delta
(density 1, float32 values: the board's own top-k and int8 rounding would
only lose what the session's coordinates may want), the board's update
comes back over serial as any other, and the bridge turns it into the
masked input at the announced coordinates. What is not sent stays in the
board's error-feedback residual, kept by the bridge in
``<storage>/<device id>/secagg_residual.npz`` (it survives a bridge
restart). The session's keys are fresh per session and live in the
bridge's memory: a bridge that restarts mid-session makes its boards the
session's dropouts. Nothing of a secure task leaves the bridge in the clear.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Self

from edge_runtime import wire
from edge_runtime.failures import BOARD_CODES, FailureReason, TaskAbandoned, TaskFailed, describe, failure_reason
from edge_runtime.member import FederationMember, MemberSettings
from edge_runtime.model.errors import ModelError
from edge_runtime.model.reader import read_graph
from edge_runtime.model.schema import OPCODE_CODES
from edge_runtime.trust import Bundle
from edge_runtime.wire.values import ValueCoding

from .driver import BoardDriver, TransferReport
from .errors import BoardProblem, BoardRefused, BoardReset

log = logging.getLogger(__name__)


class BoardCannotRun(ModelError):
    """A model the board would refuse, found out on the host; ``reason`` is what a task's failure report says."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class BoardMember(FederationMember):
    def __init__(self, driver: BoardDriver, settings: MemberSettings, heartbeat: float = 5.0) -> None:
        if driver.board is None:
            raise ValueError("handshake with the board (driver.hello()) before making it a member")
        self.driver = driver
        self.board = driver.board
        self.heartbeat = heartbeat
        self.alive = True
        self.board_version: bytes | None = self.board.model_version
        self.transfers = 0
        self.patch_transfers = 0  # of ``transfers``: versions the board got as a patch
        self.patch_fallbacks = 0  # patches the board refused, after which the whole model went
        self.line_bytes = 0  # bytes the model and patch transfers put on the serial line, frames and resends included
        self.last_transfer: TransferReport | None = None
        self._line = threading.Lock()  # one request at a time on the serial line
        self._stopping = threading.Event()
        self._sync_wanted = threading.Event()
        super().__init__(settings)
        try:
            from edge_runtime.secagg.participant import SecAggParticipant
        except ModuleNotFoundError:  # no cryptography: the board's secure tasks are reported failed
            log.warning("board %s: no cryptography; secure aggregation rounds cannot be joined", self.device_id)
        else:
            self.secagg = SecAggParticipant(self.device_id, self.topics, self.link, self.trust, settings.storage,
                                            settings.ack_timeout, settings.max_payload)
        self._supervisor = threading.Thread(target=self._supervise, name=f"board-{self.device_id}", daemon=True)

    # -- member hooks -------------------------------------------------------------------------------------
    def capabilities(self) -> wire.Capabilities:
        return wire.Capabilities(
            ram=self.board.ram,
            backend="tflite-micro",
            trainable_layers=1,
            samples=self.board.samples,
            model_version=self.board_version,
            firmware=self.board.firmware,
            arena=self.board.arena,
        )

    def validate_model(self, model: bytes) -> None:
        """Refuse on the host what the board would refuse anyway, without spending the line on it."""
        graph = read_graph(model)
        graph.check_int8()
        missing = sorted({op.opcode for op in graph.operators if OPCODE_CODES.get(op.opcode) not in self.board.ops})
        if missing:
            raise BoardCannotRun(
                FailureReason.UNSUPPORTED,
                f"board {self.device_id} ({self.board.firmware}) lacks the kernels {', '.join(missing)}",
            )
        if len(model) > self.board.flash // 2:
            raise BoardCannotRun(
                FailureReason.NO_MEMORY,
                f"a {len(model)}-byte model does not fit half of the board's {self.board.flash}-byte flash",
            )

    def model_capacity(self) -> tuple[int, str] | None:
        """What ``validate_model`` allows, asked of the manifest: a model too large is not even fetched."""
        return self.board.flash // 2, f"half of the board's {self.board.flash}-byte flash"

    def on_model_installed(self, manifest: wire.ModelManifest) -> None:
        self._sync_wanted.set()

    def handle(self, task: wire.Task) -> wire.Update | None:
        if not self.alive:
            raise TaskAbandoned("the board does not answer (announced dead)")
        _, manifest = self.model_for(task)
        # A secure task asks the board for its whole delta: the bridge chooses what is sent (the session's
        # coordinates) and keeps the rest in the board's secagg residual.
        relayed = dataclasses.replace(task, density=1.0, value_coding=int(ValueCoding.FLOAT32)) if task.secure else task
        try:
            with self._line:
                self._bring_board_to_current_model()
                update, _raw = self.driver.train(relayed)
        except BoardRefused as exc:
            if exc.code not in BOARD_CODES:  # passing trouble on the line or with a transfer: not the board's lot
                raise TaskAbandoned(f"board {self.device_id}: {exc}") from exc
            raise TaskFailed(failure_reason(exc, FailureReason.OTHER), describe(exc)) from exc
        except BoardProblem as exc:
            if not isinstance(exc, BoardReset):
                self._mark_dead(str(exc))
            raise TaskAbandoned(f"board {self.device_id}: {exc}") from exc
        spec = manifest.spec()
        kept = [t for t in update.tensors if t.tensor in spec]
        if task.secure:
            self._secure_input(task, kept, spec)
            return None
        update = wire.Update(
            update_id=update.update_id,
            device=self.device_id,  # the board names itself by chip id; on MQTT it is this member
            round=update.round,
            base_version=update.base_version,
            samples=update.samples,
            tensors=kept,
            metrics=update.metrics,
            activation_ranges=update.activation_ranges,
            below_clip=update.below_clip,  # adaptive clipping's bit, as the board reported it
        )
        self.store_update(update, task)
        return update

    def _secure_input(self, task: wire.Task, tensors: list[wire.TensorUpdate], spec: dict[int, int]) -> None:
        """The board's delta becomes its input to the round's session; nothing is stored or sent in the clear."""
        deltas = {t.tensor: t.dense() for t in tensors}
        missing = sorted(set(spec) - set(deltas))
        if missing:
            raise TaskFailed(FailureReason.OTHER, f"board {self.device_id} trains none of the tensors {missing[:8]} "
                             "the manifest lists: it cannot give the session its input")  # fmt: skip
        assert self.secagg is not None  # the member's worker reports a secure task failed without one
        self.secagg.input_ready(task, deltas)
        log.info("board %s: round %d trained; its input waits for the secure aggregation", self.device_id,
                 task.round)  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Self:
        super().start()
        self._supervisor.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._supervisor.join(timeout=self.heartbeat + 10)
        super().stop(timeout)
        self.driver.close()

    # -- board care -----------------------------------------------------------------------------------------
    def _bring_board_to_current_model(self) -> None:
        """Called holding the line: bring the board to the installed model if it runs another, as a patch
        against the version it runs when it takes patches and that version is at hand, else whole.

        The version is read once and the bytes are those of that version: the fetcher installs on its own
        thread, and reading the current model and then the current version apart could pair the old bytes
        with the new version, so the board got (or kept) the old model while the bridge recorded the new one
        as on the board; the task for the new version then went to the board untransferred and was refused.
        """
        version = self.store.current_version
        if version is None or version == self.board_version:
            return
        model = self.store.get(version)  # None: pruned by a newer install since; the next heartbeat takes that
        if model is None:
            return
        patch = self._patch_for_board(model, version)
        report = self.driver.update_model(model, patch, progress=self._abort_if_stopping)
        self.board_version = version
        self.transfers += 1
        self.patch_transfers += report.kind == "patch"
        self.patch_fallbacks += bool(report.fallback)
        self.line_bytes += report.line_bytes
        self.last_transfer = report
        log.info(
            "board %s: model %s streamed as %s of %d B in %.1f s, %d B on the line (%d resends, resumed at %s)%s",
            self.device_id,
            version.hex()[:12],
            report.kind,
            report.payload_bytes,
            report.seconds,
            report.line_bytes,
            report.retransmissions,
            report.resumed_from,
            f"; the patch was refused: {report.fallback}" if report.fallback else "",
        )
        if not self._birth_had_model:  # a board that had no model has one; later versions cost no new birth
            self.publish_birth()

    def _patch_for_board(self, model: bytes, version: bytes) -> wire.ModelPatch | None:
        """The patch from the version the board runs to ``version``, or None (the whole model goes): the
        manifest's own (the bytes the gateway signed) when it is against that version and, where the bridge
        still stores that version, turns it into ``version`` here first; else one made here from the stored
        copy with the same codec. None when the board takes no patches, runs no model, or its version is gone."""
        base = self.board_version
        if not self.driver.board or not self.driver.board.patch or base is None:
            return None
        parent = self.store.get(base)
        manifest = self.fetcher.manifest
        offered = manifest.patch if manifest is not None and manifest.version == version else None
        if offered is not None and offered.base == base:
            if parent is None:
                return offered  # the board verifies it; a refusal sends the whole model
            try:
                if wire.apply_patch(parent, offered) == model:
                    return offered
            except wire.WireError as exc:
                log.info("board %s: the manifest's patch does not turn %s into %s (%s); making one", self.device_id,
                         base.hex()[:12], version.hex()[:12], exc)  # fmt: skip
        return None if parent is None else wire.make_patch(parent, model)

    def _abort_if_stopping(self, _done: int, _total: int) -> None:
        """A transfer's progress callback: a stopping bridge closes the line, so the transfer ends between chunks.

        Without it a long transfer outlived ``stop()``'s join and wrote into a closed port. The board keeps what
        reached its flash and resumes from there next time.
        """
        if self._stopping.is_set():
            raise TaskAbandoned(f"board {self.device_id}: the bridge is stopping")

    def _mark_dead(self, why: str) -> None:
        if self.alive:
            self.alive = False
            log.warning("board %s is not answering (%s); announced dead", self.device_id, why)
            self.publish_death()

    def _supervise(self) -> None:
        while not self._stopping.wait(self.heartbeat):
            if not self._line.acquire(timeout=0.1):
                continue  # a task is using the line: the board is evidently alive
            try:
                if self.alive:
                    self._check()
                else:
                    self._greet()
            except TaskAbandoned:
                return  # stopping in the middle of a model transfer
            finally:
                self._line.release()

    def _check(self) -> None:
        try:
            status = self.driver.status()
            self.board_version = status.model_version
            if self._sync_wanted.is_set() or self.board_version != self.store.current_version:
                self._sync_wanted.clear()
                self._bring_board_to_current_model()
        except BoardReset:
            self._greet()
        except BoardRefused as exc:
            log.warning("board %s refused the model: %s", self.device_id, exc)
        except BoardProblem as exc:
            self._mark_dead(str(exc))

    def _greet(self) -> None:
        try:
            hello = self.driver.hello(timeout=min(self.heartbeat, 5.0))
        except BoardProblem:
            return
        self.board = hello
        self.board_version = hello.model_version
        if not self.alive:
            self.alive = True
            log.info("board %s answers again; announced alive", self.device_id)
        self.publish_birth()
        try:
            self._bring_board_to_current_model()
        except BoardProblem as exc:
            log.warning("board %s: model transfer failed: %s", self.device_id, exc)


def member_settings(base: MemberSettings, board: wire.Hello, fallback_id: str) -> MemberSettings:
    """The bridge's settings for one board: its chip id as device id, its own storage folder."""
    device_id = board.board_id or fallback_id
    return dataclasses.replace(base, device_id=device_id, storage=base.storage / device_id)


def with_bundle(settings: MemberSettings, bundles: Path) -> MemberSettings:
    """One board's own identity from ``bundles/<its id>/`` (``tinyfed provision device``'s bundle): its TLS
    certificate on the broker and its signing key. Raises ConfigError naming what is missing."""
    bundle = Bundle(bundles / settings.device_id)
    trust = bundle.trust(f"board {settings.device_id}")
    return dataclasses.replace(settings, broker=bundle.broker(settings.broker), trust=trust)
