"""Normal-only anomaly detection (PatchCore over EfficientNet-Lite0 features) for lines without a box-trained
detector: fit on defect-free images, score an image (score + anomaly map), calibrate a threshold at a false-alarm
target, cut the map into regions with sizes in mm. torch and timm load on first use. See README.md."""

from vision.anomaly.model import AnomalyConfig, AnomalyModel, AnomalyResult
from vision.anomaly.regions import AnomalyRegion, regions

__all__ = ["AnomalyConfig", "AnomalyModel", "AnomalyRegion", "AnomalyResult", "regions"]
