"""What the locator returns: boxes in pixels with class and confidence. The contract between vision and agent."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Box(BaseModel):
    """Axis-aligned box in pixel coordinates of the original image (x1, y1 top-left; x2, y2 bottom-right)."""

    model_config = ConfigDict(frozen=True)

    x1: float = Field(description="Left edge, pixels.")
    y1: float = Field(description="Top edge, pixels.")
    x2: float = Field(description="Right edge, pixels.")
    y2: float = Field(description="Bottom edge, pixels.")

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners out of order: ({self.x1}, {self.y1}, {self.x2}, {self.y2})")
        return self

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def contains(self, x: float, y: float) -> bool:
        """Whether the point lies in the box, edges included."""
        return self.x1 <= x <= self.x2 and self.y1 <= y <= self.y2

    def clip(self, width: float, height: float) -> Box:
        """The part of the box inside a width x height image (a box wholly outside collapses onto its edge)."""
        x1, x2 = min(max(self.x1, 0.0), width), min(max(self.x2, 0.0), width)
        y1, y2 = min(max(self.y1, 0.0), height), min(max(self.y2, 0.0), height)
        return Box(x1=x1, y1=y1, x2=max(x1, x2), y2=max(y1, y2))

    def intersection(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        return ix * iy

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class Detection(BaseModel):
    """One located object (a defect or a structural part such as the tab or the weld)."""

    defect_class: str
    class_id: int = -1
    box: Box
    confidence: float = Field(ge=0.0, le=1.0)
    verifier_score: float | None = None  # second-stage probability of `defect_class` (vision.verifier.model), if any
    detector_class: str | None = None  # the detector's own class when the verifier relabelled the box
    # other classes the verifier gives at least its `alternative_min`, with their probabilities (mAP's
    # multi-label reading; findings use defect_class)
    alternatives: dict[str, float] = Field(default_factory=dict)
    # a box a merge replaced, kept low in a ranked list for scoring (vision.verifier.model, candidates=True); never a
    # finding and never counted at the operating confidence
    ranked_only: bool = False
