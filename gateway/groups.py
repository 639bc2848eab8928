"""Federated evaluation broken down by the group each device declares (its birth's ``group``: a site, a class
of hardware), so a model that fails one group is seen, not averaged away.

Stored as metrics of the evaluation round named ``group.<label>.<metric>`` (the label is checked on the wire:
1-32 letters, digits, '.', '_', '-'; "-" stands for devices that declared none), each the sample-weighted mean of
that group's reports, plus ``group.<label>.reports``.
"""

from __future__ import annotations

PREFIX = "group."


def group_metrics(by_group: dict[str, list[tuple[int, dict[str, float]]]]) -> dict[str, float]:
    """{group: [(samples, metrics) per report]} -> the flat metrics the store keeps."""
    out: dict[str, float] = {}
    for group, reports in by_group.items():
        weight = sum(samples for samples, _ in reports)
        sums: dict[str, float] = {}
        for samples, metrics in reports:
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + samples * v
        if weight:
            out |= {f"{PREFIX}{group}.{k}": v / weight for k, v in sums.items()}
        out[f"{PREFIX}{group}.reports"] = float(len(reports))
    return out


def by_group(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The stored metrics of one round back into {group: {metric: value}}."""
    out: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        if name.startswith(PREFIX):
            group, _, metric = name[len(PREFIX) :].rpartition(".")
            out.setdefault(group, {})[metric] = value
    return out


def status_lines(round_: int, metrics: dict[str, float]) -> list[str]:
    groups = by_group(metrics)
    if not groups:
        return []
    lines = [f"evaluation of round {round_} by device group:"]
    for group, m in sorted(groups.items(), key=lambda kv: kv[1].get("eval_accuracy", 1.0)):
        accuracy = m.get("eval_accuracy")
        shown = f"accuracy {accuracy:.4f}" if accuracy is not None else "no accuracy reported"
        lines.append(f"  {group:<32} {shown}, {m.get('reports', 0):.0f} reports")
    return lines
