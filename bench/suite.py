"""The benchmark suite: which benchmarks ``tinyfed bench`` runs with no names, and its summary table.

Order: the cheap component benchmarks first, the federations last. The
suite's budget is 15 minutes on 2 cores (the federations run shortened
in the suite; ``--full`` runs them whole, about 1.5 hours with fl_har).
The summary prints the headline figures each result file must carry,
so one version can be compared with the next.
"""

from __future__ import annotations

import json
from pathlib import Path

SUITE = (
    "train",
    "codec",
    "signing",
    "fuzz",
    "transport",
    "agent_memory",
    "aggregate",
    "serial_link",
    "round_scale",
    "field_faults",
    "fl_digits",
    "fl_cmapss",
    "fl_har",
    "fl_privacy",
    "privacy_audit",
    "secagg",
    "byzantine",
)
# Run only when named: measurements too long for the suite's budget even shortened.
ON_DEMAND = ("downlink",)
BUDGET_SECONDS = 15 * 60
# Extras a benchmark needs beyond the `bench` command's own (device, gateway, data): checked before anything runs,
# so a missing one is a pip install line, not a traceback ten minutes in. (Plots need matplotlib, from `bench`,
# but a benchmark without it prints the chart as text and says what to install.)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serial_link": ("hil",),  # the emulated board (TFLite Micro) and the host driver (pyserial, cobs)
    "round_scale": ("bench",),  # psutil samples the gateway's memory and CPU
    "fl_privacy": ("privacy",),  # the accountant (dp-accounting)
    "privacy_audit": ("privacy",),
}

HEADLINES: dict[str, tuple[str, ...]] = {
    "train": ("digits_mlp_int8_accuracy_min", "train_samples_per_s", "agent_rss_mib", "torch_speed_ratio"),
    "codec": (
        "digits_mlp_entropy_ratio_1pct",
        "digits_mlp_compact_entropy_ratio_1pct",
        "har_cnn_entropy_ratio_1pct",
        "har_cnn_compact_entropy_ratio_1pct",
        "har_cnn_compact_decode_time_ratio_1pct",
    ),
    "signing": ("mlp_signed_bytes_ratio", "mlp_mac_bytes_ratio", "mlp_sign_us", "mlp_verify_us"),
    "aggregate": ("dense_vs_sparse_cpu_ratio", "sparse_intake_us_per_update", "dense_intake_us_per_update",
                  "decode_share", "decoder_speedup", "verify_us_per_update"),
    "transport": ("wire_bytes_per_payload_byte", "agent_rss_mib"),
    "agent_memory": ("agent_rss_mib", "agent_floor_mib", "agent_rss_after_imports_mib", "agent_runtime_rss_mib"),
    "serial_link": ("line_rate_fraction_115200", "line_rate_fraction_921600", "digits_update_density5_line_bytes_ratio",
                    "digits_update_density5_patch_seconds_115200"),
    "round_scale": ("seconds_per_round_1000", "floor_seconds_per_round_1000", "gateway_cpu_ms_per_update_1000",
                    "round_speedup_vs_before_1000", "gateway_cpu_ratio_before_vs_after_1000"),
    "field_faults": ("round_time_ratio", "round_seconds_with_bad", "deadline_s", "bad_device_selected_after_failing"),
    "fl_digits": ("final_accuracy", "rounds_to_target", "uplink_ratio_vs_dense", "dense_final_accuracy",
                  "secured_vs_insecure_seconds_per_round", "secured_vs_insecure_uplink", "wire_bytes_per_device_round",
                  "wire_ratio_vs_dense_float32_both_ways", "wire_ratio_vs_full_int8", "uplink_vs_update_publish"),
    "fl_har": ("final_accuracy", "rounds_to_target", "uplink_ratio_vs_dense", "dense_final_accuracy",
               "wire_bytes_per_device_round", "wire_ratio_vs_dense_float32_both_ways", "wire_ratio_vs_full_int8"),
    "fl_cmapss": ("final_accuracy", "uplink_ratio_vs_dense", "dense_final_accuracy", "central_f1"),
    "fl_privacy": ("digits_accuracy_eps_1", "digits_accuracy_eps_8", "digits_accuracy_no_dp", "har_accuracy_eps_8",
                   "har_accuracy_no_dp"),
    "secagg": ("uplink_bytes_per_device_100", "plain_uplink_bytes_per_device_100", "gateway_cpu_s_100",
               "round_compute_s_1000", "digits_accuracy_secagg", "digits_accuracy_plain_topk"),
    "byzantine": ("digits_clean_accuracy", "digits_best_20_worst_accuracy", "digits_best_20_drop_points",
                  "digits_detector_20_min_tpr", "digits_detector_20_max_fpr", "digits_detector_val_20_min_tpr",
                  "digits_detector_val_20_max_fpr", "har_clean_accuracy",
                  "har_best_20_worst_accuracy", "har_best_20_drop_points", "har_detector_20_min_tpr",
                  "har_detector_20_max_fpr", "har_detector_val_20_min_tpr", "har_detector_val_20_max_fpr"),
    "privacy_audit": ("small_bound_no_dp", "small_bound_eps_8", "small_accountant_eps_8", "population_bound_no_dp",
                      "population_bound_eps_8"),
}


def summary(results: Path, names: tuple[str, ...] = SUITE) -> str:
    """A markdown table of the headline figures in ``results``, with when and on what each was measured."""
    lines = ["| benchmark | figure | value | measured |", "|---|---|---|---|"]
    for name in names:
        path = results / f"{name}.json"
        if not path.is_file():
            lines.append(f"| {name} | (not run) | | |")
            continue
        data = json.loads(path.read_text())
        figures = data.get("figures", {})
        for key in HEADLINES.get(name, tuple(figures)[:4]):
            value = figures.get(key)
            longer = "--full" in data.get("argv", [])  # a longer run than the suite's
            # Some headlines (the HAR privacy curve, the 1,000-device audit) come only from --full: say so
            # rather than show a bare dash that reads like a failed measurement.
            missing = "-" if longer else "(--full only)"
            shown = missing if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
            full = " (--full)" if longer else ""
            lines.append(f"| {name} | `{key}` | {shown} | {data.get('when', '?')[:16]}{full} |")
    return "\n".join(lines)
