"""The operator's station over HTTP: `defect-agent serve` runs `create_app()` (FastAPI + uvicorn): the JSON API
for line software (OpenAPI at /docs and /openapi.json) and a web page for a station, shipped as plain files."""

from agent.server.app import check_bind, create_app

__all__ = ["check_bind", "create_app"]
