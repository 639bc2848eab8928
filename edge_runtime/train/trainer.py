"""On-device training: frozen int8 backbone in the interpreter, float tail in numpy.

The backbone's output at the cut is computed once per dataset (it is frozen,
so it cannot change between epochs), which makes a local epoch cost only the
tail's arithmetic. Everything random is drawn from one seeded generator, so a
round can be replayed bit for bit on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..model.backends.base import Backend, Session
from ..model.errors import ModelError
from ..model.graph import Graph, Tensor
from ..model.quant import dequantize
from .layers import Weighted
from .split import backbone_graph
from .tail import Tail


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    prox_mu: float = 0.0  # FedProx: pull towards the round's base weights
    cosine_decay: bool = True
    seed: int = 0


@dataclass
class EpochReport:
    epoch: int
    loss: float
    accuracy: float
    samples: int


@dataclass
class TrainResult:
    epochs: list[EpochReport] = field(default_factory=list)
    samples_seen: int = 0


ProgressFn = Callable[[int, int, float], None]  # (epoch, batches done, running loss)


def weighted_layer_ops(graph: Graph) -> list[int]:
    return [
        i for i, op in enumerate(graph.operators) if op.opcode in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
    ]


def cut_for_last_layers(graph: Graph, trainable_layers: int) -> int:
    """Operator index of the cut that leaves the last ``trainable_layers`` weighted layers trainable.

    0 (the whole model) when ``trainable_layers`` is 0 or covers every weighted layer.
    """
    weighted = weighted_layer_ops(graph)
    if trainable_layers <= 0 or trainable_layers >= len(weighted):
        return 0
    return weighted[-trainable_layers]


class Trainer:
    """Trains the tail of ``graph`` from operator ``cut`` on; ``personal_layers`` stay local."""

    def __init__(
        self,
        graph: Graph,
        cut: int = 0,
        backend: Backend | None = None,
        config: TrainConfig | None = None,
        personal_layers: int = 0,
    ) -> None:
        graph.check_int8()
        self.graph = graph.copy()
        self.cut = cut
        self.backend = backend
        self.config = config or TrainConfig()
        self.tail = Tail.from_graph(self.graph, cut)
        trainable = self.tail.trainable()
        if personal_layers > len(trainable):
            raise ModelError(f"{personal_layers} personal layers asked, the tail has {len(trainable)}")
        self.personal = {i for i, _ in trainable[len(trainable) - personal_layers :]} if personal_layers else set()
        self.base = {i: {k: v.copy() for k, v in layer.params().items()} for i, layer in trainable}
        self.velocity = {i: {k: np.zeros_like(v) for k, v in layer.params().items()} for i, layer in trainable}
        self.rng = np.random.default_rng(self.config.seed)
        self._backbone_session: Session | None = None

    # -- features at the cut ------------------------------------------------
    @property
    def cut_tensor(self) -> Tensor:
        return self.graph.tensor(self.graph.operators[self.cut].inputs[0])

    def features(self, x_int8: np.ndarray) -> np.ndarray:
        """The float tail input for int8 model inputs: the backbone's cut activation, dequantised."""
        q = self.cut_tensor.require_int8()
        if self.cut == 0:
            act = x_int8
        else:
            if self.backend is None:
                raise ModelError("a backbone (cut > 0) needs an interpreter backend to run it")
            if self._backbone_session is None:
                self._backbone_session = self.backend.load_graph(backbone_graph(self.graph, self.cut))
            act = self._backbone_session.run_batch(x_int8)[0]
        return dequantize(act, float(q.scale[0]), int(q.zero_point[0]))

    # -- training -------------------------------------------------------------
    def fit(self, x_int8: np.ndarray, y: np.ndarray, progress: ProgressFn | None = None) -> TrainResult:
        if len(x_int8) != len(y):
            raise ModelError(f"{len(x_int8)} samples but {len(y)} labels")
        if len(y) == 0:
            raise ModelError("no training samples")
        classes = int(np.prod(self.graph.tensor(self.graph.outputs[0]).shape[1:]))
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise ModelError(f"labels span {int(y.min())}..{int(y.max())}; the model has {classes} classes")
        feats = self.features(x_int8)
        return self.fit_features(feats, y.astype(np.int64), progress)

    def fit_features(self, feats: np.ndarray, y: np.ndarray, progress: ProgressFn | None = None) -> TrainResult:
        cfg = self.config
        result = TrainResult()
        batches_per_epoch = max(1, int(np.ceil(len(y) / cfg.batch_size)))
        total_steps = cfg.epochs * batches_per_epoch
        step = 0
        for epoch in range(cfg.epochs):
            order = self.rng.permutation(len(y))
            loss_sum, correct, seen = 0.0, 0, 0
            for b in range(batches_per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                lr = cfg.learning_rate
                if cfg.cosine_decay:
                    lr *= 0.5 * (1 + np.cos(np.pi * step / total_steps))
                probs = self.tail.forward(feats[idx], training=True)
                labels = y[idx]
                loss_sum += float(-np.log(probs[np.arange(len(idx)), labels] + 1e-9).sum())
                correct += int((probs.argmax(axis=1) == labels).sum())
                seen += len(idx)
                grads = self.tail.backward(labels)
                self._step(grads, lr)
                step += 1
                if progress is not None:
                    progress(epoch, b + 1, loss_sum / seen)
            result.epochs.append(EpochReport(epoch, loss_sum / len(y), correct / len(y), len(y)))
            result.samples_seen += len(y)
        return result

    def _step(self, grads: list[dict[str, np.ndarray]], lr: float) -> None:
        cfg = self.config
        for i, layer in self.tail.trainable():
            params = layer.params()
            for name, g in grads[i].items():
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * params[name]
                if cfg.prox_mu and i not in self.personal:
                    g = g + cfg.prox_mu * (params[name] - self.base[i][name])
                v = self.velocity[i][name]
                v *= cfg.momentum
                v += g
                params[name] -= lr * v

    # -- results --------------------------------------------------------------
    def predict_float(self, feats: np.ndarray, batch: int = 512) -> np.ndarray:
        """Class probabilities of the fake-quantised float tail (what the int8 model should score)."""
        out = [self.tail.forward(feats[s : s + batch], training=False) for s in range(0, len(feats), batch)]
        return np.concatenate(out)

    def export(self) -> Graph:
        """A new int8 graph with the trained tail re-quantised into it."""
        graph = self.graph.copy()
        self.tail.export_into(graph, self.cut)
        return graph

    def delta(self, include_personal: bool = False) -> dict[str, np.ndarray]:
        """trained - base per trainable tensor name: what a device sends (personal head excluded)."""
        out: dict[str, np.ndarray] = {}
        for i, layer in self.tail.trainable():
            if i in self.personal and not include_personal:
                continue
            op = self.graph.operators[self.cut + i]
            assert isinstance(layer, Weighted)
            out[self.graph.tensor(op.inputs[1]).name] = layer.weight - self.base[i]["weight"]
            out[self.graph.tensor(op.inputs[2]).name] = layer.bias - self.base[i]["bias"]
        return out

    def delta_by_tensor(self, include_personal: bool = False) -> dict[int, np.ndarray]:
        """:meth:`delta` keyed by tensor index in the graph: what the compressor and the manifest use."""
        index = {t.name: i for i, t in enumerate(self.graph.tensors)}
        return {index[name]: d for name, d in self.delta(include_personal).items()}

    def trainable_tensors(self, include_personal: bool = False) -> dict[int, tuple[int, ...]]:
        """tensor index -> shape of every tensor a global update may touch (the manifest's spec)."""
        return {i: d.shape for i, d in self.delta_by_tensor(include_personal).items()}

    def activation_stats(self) -> dict[str, dict[str, float]]:
        """Running ranges per tail activation tensor: the gateway recalibrates from these."""
        stats: dict[str, dict[str, float]] = {}
        for i, layer in enumerate(self.tail.layers):
            if layer.stats is not None:
                op = self.graph.operators[self.cut + i]
                stats[self.graph.tensor(op.outputs[0]).name] = layer.stats.as_dict()
        return stats
