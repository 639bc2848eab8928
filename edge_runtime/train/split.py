"""Structural edits: cut a graph into a backbone model that outputs the cut activation."""

from __future__ import annotations

from ..model.errors import ModelError
from ..model.graph import Graph, Operator


def subgraph(graph: Graph, first: int, last: int, outputs: list[int]) -> Graph:
    """Operators ``first..last-1`` as their own graph, keeping only the tensors they touch.

    Unused tensors are dropped (not just disconnected) so TFLite Micro does not
    plan arena space for them on a board.
    """
    ops = graph.operators[first:last]
    if not ops:
        raise ModelError(f"empty operator range {first}..{last}")
    produced = {o for op in ops for o in op.outputs}
    inputs = sorted(
        {i for op in ops for i in op.inputs if i >= 0 and i not in produced and graph.tensors[i].data is None}
    )
    used = sorted({i for op in ops for i in (*op.inputs, *op.outputs) if i >= 0} | set(outputs))
    remap = {old: new for new, old in enumerate(used)}
    out = Graph(
        tensors=[graph.tensors[i] for i in used],
        operators=[
            Operator(
                op.opcode,
                [remap.get(i, -1) if i >= 0 else -1 for i in op.inputs],
                [remap[o] for o in op.outputs],
                dict(op.options),
                op.version,
            )
            for op in ops
        ],
        inputs=[remap[i] for i in inputs],
        outputs=[remap[o] for o in outputs],
        name=graph.name,
        description=graph.description,
        metadata=dict(graph.metadata),
    )
    return out.copy()


def backbone_graph(graph: Graph, cut: int) -> Graph:
    """The frozen part before operator ``cut``, with the cut tensor as its only output."""
    if cut <= 0:
        raise ModelError("cut 0 has no backbone: the whole model is trainable")
    return subgraph(graph, 0, cut, [graph.operators[cut].inputs[0]])
