"""tinyfed's benchmarks: each prints its figures and writes bench/results/NAME.json."""
