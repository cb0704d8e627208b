"""Datasets and converters: ultralytics YOLO data YAMLs (`yolo`), DeepPCB (`deeppcb`), NEU-DET (`neu_det`) and the
battery_tab generator with exact ground truth (`synth`). Nothing in the inspection pipeline depends on a dataset:
what a line needs at run time (its reference images, its calibration) lives in the line's config."""
