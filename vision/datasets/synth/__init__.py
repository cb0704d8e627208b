"""Procedural image generators with exact ground truth for the built-in product lines."""

from vision.datasets.synth.battery_tab import (
    BatteryTabParams,
    BatteryTabTruth,
    TruthObject,
    generate_batch,
    generate_battery_tab,
    image_seed,
    read_truth,
)

__all__ = [
    "BatteryTabParams",
    "BatteryTabTruth",
    "TruthObject",
    "generate_batch",
    "generate_battery_tab",
    "image_seed",
    "read_truth",
]
