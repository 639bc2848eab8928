"""An empirical privacy audit in one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

Canaries (made-up examples, ``population.Canaries``) go into one device's
data, each with probability 1/2, independently. After the federation has
run, the auditor sees only the published int8 models, and scores each
canary by how far training moved the model towards the canary's label: the
probability the final model gives it less the one the initial model gave
(both public; the logits are read from the model file, as any device
holding it can). It guesses "in" for the ``guesses / 2`` highest scores and
"out" for the ``guesses / 2`` lowest, and abstains on the rest.

If the federation were epsilon-DP for that device's data, the number of
correct guesses would be stochastically dominated by
Binomial(guesses, e^epsilon / (1 + e^epsilon)) (their Theorem 3.1): seeing
``correct`` of them right rejects every epsilon for which that many or more
has probability below 1 - confidence. The largest epsilon so rejected is
the audit's lower bound. It is a bound for pure epsilon-DP (delta = 0): with
the accountant's delta the bound would be lower still, so comparing this
figure with the accountant's epsilon is the stricter check. The number of
guesses is fixed before the run (choosing it after seeing the scores would
need a correction for the choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.reference import run_reference

from .population import PopulationResult


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    confidence: float
    accountant_epsilon: float  # what the accountant says was spent (0 without DP)


def epsilon_lower_bound(correct: int, guesses: int, confidence: float = 0.95) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` rule out at ``confidence``."""
    from scipy import optimize, stats

    if guesses == 0 or correct == 0:
        return 0.0
    beta = 1.0 - confidence

    def tail(epsilon: float) -> float:
        p = 1.0 / (1.0 + math.exp(-epsilon))
        return float(stats.binom.sf(correct - 1, guesses, p)) - beta

    if tail(0.0) >= 0:
        return 0.0  # not even epsilon = 0 is ruled out: the guesses are no better than coin flips
    high = 1.0
    while tail(high) < 0:
        high *= 2
        if high > 1e3:
            return math.inf
    return float(optimize.brentq(tail, 0.0, high, xtol=1e-6))


def log_probabilities(model: bytes, x_int8: np.ndarray) -> np.ndarray:
    """Log-softmax of the published int8 model's logits (the softmax's input, read by the numpy int8
    reference): an int8 softmax output rounds every probability under 1/256 to zero, its logits do not."""
    graph = read_graph(model)
    softmax = next(op for op in reversed(graph.operators) if op.opcode == "SOFTMAX")
    logits_q = run_reference(graph, x_int8, taps=(softmax.inputs[0],))[-1].reshape(len(x_int8), -1)
    q = graph.tensor(softmax.inputs[0]).require_int8()
    logits = (logits_q.astype(np.float64) - int(q.zero_point[0])) * float(q.scale[0])
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def canary_scores(result: PopulationResult) -> np.ndarray:
    """How far the federation moved the published model towards each canary's label: the log-probability the
    final model gives it less the one the initial model gave (both models are public)."""
    assert result.canary_x is not None and result.canary_y is not None
    x = quantize_input(read_graph(result.initial_model), result.canary_x)
    rows = np.arange(len(x))
    final = log_probabilities(result.final_model, x)[rows, result.canary_y]
    return final - log_probabilities(result.initial_model, x)[rows, result.canary_y]


def audit(result: PopulationResult, guesses: int, confidence: float = 0.95, seed: int = 0) -> AuditResult:
    """Guess the top and bottom ``guesses / 2`` canaries in and out; the epsilon their accuracy implies."""
    assert result.canary_in is not None
    scores = canary_scores(result)
    # int8 outputs tie often: ties are broken at random (seeded), never in the auditor's favour.
    tiebreak = np.random.default_rng(seed).random(len(scores))
    order = np.lexsort((tiebreak, scores))  # ascending score
    half = guesses // 2
    guessed_out, guessed_in = order[:half], order[len(order) - half :]
    correct = int(result.canary_in[guessed_in].sum() + (~result.canary_in[guessed_out]).sum())
    bound = epsilon_lower_bound(correct, 2 * half, confidence)
    return AuditResult(len(scores), 2 * half, correct, bound, confidence, result.epsilon)
