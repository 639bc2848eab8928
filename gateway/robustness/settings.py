"""``[robustness]`` in gateway.toml: the anomaly detector, reliability weights and quarantine (all off by default)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RobustnessSection:
    detect: bool = False  # score every training update at each close; flags are recorded and shown by status
    exclude_flagged: bool = True  # a flagged update is recorded and not counted in its round's aggregate
    reliability_weights: bool = False  # weigh each update by its device's reliability (times its samples)
    threshold: float = 3.0  # robust z-score of its norm past which an update is flagged (with norm_ratio)
    norm_ratio: float = 2.0  # ... and only if its norm is also more than this times the round's median
    min_cosine: float = 0.0  # an update pointing away from the round's median (cosine below this) is flagged
    decay: float = 0.7  # reliability <- decay x reliability + (1 - decay) x (0 if flagged else 1)
    quarantine_below: float = 0.4  # a device whose reliability falls below this is quarantined (0: never)
    min_updates: int = 5  # fewer updates in a round: too few for robust statistics, nothing is scored
    validation: str = ""  # an .npz (x, y) on the hub: score each update's loss change on it
    loss_step: float = 0.1  # with validation: the loss change of base + this x the update (1: the whole update)
    dormant_share: float = 0.05  # with validation: flag an update with more of its mass on weights it never drives
    clip_to_median: float = 0.0  # 0: off; else an update above this x the round's median norm is scaled down to it
    history: bool = True  # also score each device's update directions across rounds against the federation's
    history_decay: float = 0.8  # a device's history: decay x history + its update's unit direction, each round
    history_min_cosine: float = 0.0  # flagged below this cosine with the federation's history (and threshold sd)
    min_history: int = 3  # rounds of history a device needs before its history is judged
    history_dim: int = 4096  # floats kept per device (a count sketch; exact when the model has no more parameters)
    bound_share: float = 0.9  # flag a device whose last min_history updates all had >= this x norm_bound (0: off)

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.norm_ratio < 1:
            raise ValueError(f"norm_ratio must be >= 1, got {self.norm_ratio}")
        if not -1 <= self.min_cosine <= 1:
            raise ValueError(f"min_cosine must be in [-1, 1], got {self.min_cosine}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if not 0 <= self.quarantine_below < 1:
            raise ValueError(f"quarantine_below must be in [0, 1), got {self.quarantine_below}")
        if self.min_updates < 3:
            raise ValueError(f"min_updates must be >= 3 (a median and its spread need them), got {self.min_updates}")
        if not 0 < self.loss_step <= 1:
            raise ValueError(f"loss_step must be in (0, 1], got {self.loss_step}")
        if not 0 <= self.dormant_share < 1:
            raise ValueError(f"dormant_share must be in [0, 1) (0: off), got {self.dormant_share}")
        if self.clip_to_median != 0 and self.clip_to_median < 1:
            raise ValueError(f"clip_to_median must be 0 (off) or >= 1 (x the round's median norm), got "
                             f"{self.clip_to_median}")
        if not 0 < self.history_decay <= 1:
            raise ValueError(f"history_decay must be in (0, 1], got {self.history_decay}")
        if not -1 <= self.history_min_cosine <= 1:
            raise ValueError(f"history_min_cosine must be in [-1, 1], got {self.history_min_cosine}")
        if self.min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {self.min_history}")
        if not 0 <= self.bound_share <= 1:
            raise ValueError(f"bound_share must be in [0, 1] (0: off; x [rounds] norm_bound), got {self.bound_share}")
        if not 16 <= self.history_dim <= 1 << 20:
            raise ValueError(f"history_dim must be in [16, 1048576] floats per device, got {self.history_dim}")
        if self.reliability_weights and not self.detect:
            raise ValueError("reliability_weights needs detect = true (reliability comes from the detector's flags)")
