"""Anomalous and Byzantine contributions: score each update, keep a reliability per device, quarantine.

scores.py (pure: one round's updates -> per-update anomaly scores and flags),
reliability.py (pure: a device's reliability across rounds, and when it is
quarantined), settings.py (the ``[robustness]`` table), detector.py (what the
round lifecycle calls: judge a closing round, take the excluded updates out
of its aggregate, the rows the store keeps). docs/robustness.md.
"""

from .settings import RobustnessSection

__all__ = ["RobustnessSection"]
