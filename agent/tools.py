"""The inspection stages as langchain-core tools over one Inspector, with pydantic argument schemas, so that an
LLM agent (any chat model with tool calling) can dispatch them: `locate`, `measure`, `embed`, `retrieve`. Their
names are the step names of `agent.plan` (what `defect-agent explain` prints). Each tool runs the real model of
the inspector's line and returns JSON-ready data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from defect_agent.errors import DefectAgentError
from vision.detection import Box

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from agent.pipeline import Inspector


class ImageArgs(BaseModel):
    """Arguments of the `locate` and `measure` tools."""

    image: str = Field(description="path of the image file to inspect")


class RegionArgs(BaseModel):
    """Arguments of the `embed` tool: an image and optionally a region of it."""

    image: str = Field(description="path of the image file")
    box: Box | None = Field(None, description="pixel box of the region (x1, y1, x2, y2); omitted: the whole image")


class RetrieveArgs(BaseModel):
    """Arguments of the `retrieve` tool: an image region or a text to search the knowledge base with."""

    image: str | None = Field(None, description="image whose region to search with")
    box: Box | None = Field(None, description="pixel box of the region in that image")
    text: str | None = Field(None, description="or a description of the defect, in English or Chinese")
    k: int = Field(5, ge=1, le=100, description="number of past cases")


def inspection_tools(inspector: Inspector) -> list[BaseTool]:
    """The four stage tools bound to `inspector` (its line, locator, embedder and knowledge base)."""
    from langchain_core.tools import StructuredTool

    from agent.images import read_image
    from vision.crops import crop_region
    from vision.measure import measure_findings

    line = inspector.line

    def _read(image: str):
        return read_image(image, line.image_size)

    def _detect(image: str, pixels):
        return inspector.locate(inspector.locator_input(image, pixels))

    def locate(image: str) -> list[dict[str, Any]]:
        return [d.model_dump() for d in _detect(image, _read(image))]

    def measure(image: str) -> list[dict[str, Any]]:
        pixels = _read(image)
        detections = _detect(image, pixels)
        return [
            m.model_dump()
            for m in measure_findings(pixels, detections, line, box_margin_px=inspector.fusion.box_margin_px)
        ]

    def _embedder():
        if inspector.embedder is None:
            raise DefectAgentError("this inspector was built without an embedder (use_embedder=False)")
        return inspector.embedder

    def embed(image: str, box: Box | None = None) -> dict[str, Any]:
        pixels = _read(image)
        region = pixels if box is None else crop_region(pixels, box)
        vector = _embedder().embed_images([region])[0]
        out: dict[str, Any] = {"dim": int(vector.shape[0]), "vector": [round(float(v), 6) for v in vector]}
        if inspector.texture_scorer is not None:
            out["texture"] = inspector.texture_scorer.score_vectors(vector[None, :])[0].model_dump()
        return out

    def retrieve(
        image: str | None = None, box: Box | None = None, text: str | None = None, k: int = 5
    ) -> list[dict[str, Any]]:
        if inspector.kb is None:
            raise DefectAgentError("no knowledge base is open for this inspector (see `defect-agent kb add`)")
        if (image is None) == (text is None):
            raise DefectAgentError("retrieve needs exactly one of `image` or `text`")
        if text is not None:
            hits = inspector.kb.search_by_text(text, k=k, line=line.name)
        else:
            assert image is not None  # exactly one of image / text (checked above)
            pixels = _read(image)  # regions are embedded from the image itself, not the locator's composite
            region = pixels if box is None else crop_region(pixels, box)
            hits = inspector.kb.search_by_vector(_embedder().embed_images([region])[0], k=k, line=line.name)
        return [h.model_dump() for h in hits]

    return [
        StructuredTool.from_function(
            locate,
            name="locate",
            args_schema=ImageArgs,
            description=f"Locate parts and defects ({', '.join(line.class_names)}) of a "
            f"{line.name} image with the line's YOLO detector: boxes in px, "
            "class, confidence.",
        ),
        StructuredTool.from_function(
            measure,
            name="measure",
            args_schema=ImageArgs,
            description="Locate and measure: sizes in mm from the line calibration and "
            "the derived defects (e.g. weld offset in mm).",
        ),
        StructuredTool.from_function(
            embed,
            name="embed",
            args_schema=RegionArgs,
            description="Embed an image region with the open_clip embedder; returns the "
            "vector and its texture (defect vs normal) score.",
        ),
        StructuredTool.from_function(
            retrieve,
            name="retrieve",
            args_schema=RetrieveArgs,
            description="Similar past defect cases of this line from the knowledge base, "
            "by image region or by text, with disposition and root cause.",
        ),
    ]
