"""The station's HTTP API and web page (FastAPI): inspect uploaded or captured images, read the lines, save and find
past cases. Models load once per line and stay; bad input gets a JSON 4xx, never a 5xx.

Shop-floor security: an API token (required when bound beyond loopback; sent as `Authorization: Bearer …` or
`X-API-Token`), a size limit per upload and a pixel limit checked on the header before decoding, paths confined to
the configured capture root, only regular files read."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from agent.server.schemas import (
    CaseCreate,
    CaseOut,
    ErrorBody,
    Health,
    InspectedImage,
    InspectResponse,
    LineInfo,
    LineTerm,
    NormalMark,
    NormalMarked,
    SearchResponse,
)
from defect_agent.config import AppConfig, available_lines, load_app_config, load_line
from defect_agent.errors import ConfigError, DefectAgentError, ImageReadError
from defect_agent.paths import data_dir, resolve

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"[^\w.\-]+")
_EXAMPLES = {
    "battery_tab": (
        "find cells whose tab weld is offset more than 0.3 mm and shows weld spatter",
        "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯",
    ),
    "pcb": ("flag boards with an open circuit or a short longer than 2 mm", "找出有断路或长度超过2毫米短路的电路板"),
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Bad input (image, line, config)",
        401: "API token missing or wrong",
        403: "Path outside the capture root",
        404: "Not found",
        413: "Upload too large",
        422: "Malformed request or instruction",
    }.items()
}


class ServerState:
    """What the app keeps between requests: one Inspector per line (loaded on first use), one knowledge base."""

    def __init__(
        self,
        app_cfg: AppConfig,
        kb_dir: Path | None,
        capture_root: Path | None,
        token: str | None,
        inspector_factory: Any = None,
    ) -> None:
        self.app_cfg = app_cfg
        self.kb_dir = resolve(kb_dir or app_cfg.kb_dir)
        self.capture_root = capture_root.resolve() if capture_root else None
        self.token = token or None
        self.images_dir = data_dir() / "server" / "images"
        self.uploads_dir = data_dir() / "server" / "uploads"
        self._factory = inspector_factory
        self._inspectors: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._kb: Any = None

    @property
    def kb(self) -> Any:
        """The knowledge base, opened on first use (with the app's embedder, loaded lazily)."""
        with self._lock:
            if self._kb is None:
                from knowledge_base import KnowledgeBase
                from vision.embedder import load_embedder

                cfg = self.app_cfg.embedder
                self._kb = KnowledgeBase.open(self.kb_dir, embedder_factory=lambda: load_embedder(cfg))
            return self._kb

    def inspector(self, line: str) -> tuple[Any, threading.Lock]:
        """The line's Inspector (models load once, then stay) and the lock that serialises its use."""
        with self._lock:
            if line not in self._locks:
                self._locks[line] = threading.Lock()
            lock = self._locks[line]
        with lock:
            if line not in self._inspectors:
                if self._factory is not None:
                    self._inspectors[line] = self._factory(line)
                else:
                    from agent.pipeline import Inspector

                    kb = self.kb
                    self._inspectors[line] = Inspector.from_config(line=line, app=self.app_cfg, knowledge_base=kb)
        return self._inspectors[line], lock

    def forget(self, line: str) -> None:
        """Drop the line's Inspector: its models changed on disk, the next request loads them again."""
        with self._lock:
            lock = self._locks.get(line)
        if lock is None:
            return
        with lock:
            self._inspectors.pop(line, None)

    @property
    def loaded(self) -> list[str]:
        return sorted(self._inspectors)


def _error(status: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"error": kind, "detail": detail})


def _safe_name(name: str | None, fallback: str) -> str:
    base = Path(name or "").name
    cleaned = _SAFE_NAME.sub("_", base).strip("._") or fallback
    return cleaned[:120]


def create_app(
    app_cfg: AppConfig | None = None,
    *,
    kb_dir: Path | None = None,
    capture_root: Path | None = None,
    token: str | None = None,
    inspector_factory: Any = None,
) -> FastAPI:
    """The ASGI app. `token`: required on every API call when set; `capture_root`: the only folder POST /inspect
    may read paths from (None: uploads only); `inspector_factory(line)`: for tests that bring their own models."""
    from defect_agent import __version__ as version

    cfg = app_cfg or load_app_config()
    root = (
        capture_root
        if capture_root is not None
        else (resolve(cfg.server.capture_root) if cfg.server.capture_root else None)
    )
    state = ServerState(cfg, kb_dir, root, token, inspector_factory)
    limits = cfg.limits
    api = FastAPI(
        title="defect-agent",
        version=version,
        description="Inspect images against an instruction (zh / en) and the line's acceptance rules; "
        "find and save past defect cases.",
        responses=_ERRORS,
    )
    api.state.defect_agent = state

    # -- errors: always JSON, always one line that says what to do -------------------------------------------------
    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"error": "http_error", "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)}, status_code=422)

    @api.exception_handler(DefectAgentError)
    async def _agent_error(request: Request, exc: DefectAgentError) -> JSONResponse:
        from agent.parser.errors import QueryParseError

        kind, status = ("bad_instruction", 422) if isinstance(exc, QueryParseError) else ("bad_input", 400)
        if isinstance(exc, ConfigError):
            kind = "config"
        return JSONResponse({"error": kind, "detail": str(exc)}, status_code=status)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @api.middleware("http")
    async def _body_limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        cap = limits.max_upload_mb * 1e6 * limits.max_files_per_request + 1e6
        if length is not None and length.isdigit() and int(length) > cap:
            return JSONResponse(
                {"error": "too_large", "detail": f"request body {int(length) / 1e6:.0f} MB exceeds {cap / 1e6:.0f} MB"},
                status_code=413,
            )
        return await call_next(request)

    # -- auth ----------------------------------------------------------------------------------------------------
    def require_token(request: Request) -> None:
        if state.token is None:
            return
        given = request.headers.get("x-api-token") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), state.token.encode()):
            raise HTTPException(
                status_code=401,
                detail={"error": "unauthorized", "detail": "give the API token as 'Authorization: Bearer <token>'"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_token)]

    # -- routes --------------------------------------------------------------------------------------------------
    @api.get("/health", response_model=Health, tags=["station"])
    def health() -> Health:
        """The server answers; the lines configured and those loaded."""
        return Health(status="ok", version=version, lines=available_lines(), loaded=state.loaded)

    @api.get("/lines", response_model=list[LineInfo], dependencies=guarded, tags=["station"])
    def lines() -> list[LineInfo]:
        """Every product line with its defect terms (zh / en) and an example instruction."""
        out = []
        for name in available_lines():
            line = load_line(name)
            terms = [LineTerm(name=c.name, en=c.synonyms.en, zh=c.synonyms.zh, role=c.role) for c in line.classes] + [
                LineTerm(name=d.name, en=d.synonyms.en, zh=d.synonyms.zh, role="derived") for d in line.derived
            ]
            en, zh = _EXAMPLES.get(name, (f"find parts with any defect on {name}", "找出有缺陷的零件"))
            out.append(
                LineInfo(
                    name=name,
                    title_en=(line.title.en or [name])[0],
                    title_zh=(line.title.zh or [name])[0],
                    terms=terms,
                    example_en=en,
                    example_zh=zh,
                )
            )
        return out

    def _store(data: bytes, name: str, request_dir: Path) -> tuple[str, Path]:
        """Keep an image under its own name for this request (template lines pair files by name) and under its
        content hash for GET /images/{id}."""
        digest = hashlib.sha256(data).hexdigest()
        request_dir.mkdir(parents=True, exist_ok=True)
        target = request_dir / name
        if target.exists():
            target = request_dir / f"{target.stem}_{digest[:8]}{target.suffix}"
        target.write_bytes(data)
        state.images_dir.mkdir(parents=True, exist_ok=True)
        stored = state.images_dir / f"{digest}{target.suffix.lower() or '.img'}"
        if not stored.exists():
            stored.write_bytes(data)
        return digest, target

    async def _read_upload(upload: UploadFile) -> bytes:
        cap = int(limits.max_upload_mb * 1e6)
        chunks, total = [], 0
        while True:
            chunk = await upload.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                raise _error(413, "too_large", f"{upload.filename}: larger than {limits.max_upload_mb:g} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _captured(path_text: str) -> Path:
        if state.capture_root is None:
            raise _error(403, "no_capture_root", "this server reads uploads only: no capture root is configured")
        candidate = Path(path_text)
        full = (candidate if candidate.is_absolute() else state.capture_root / candidate).resolve()
        if not full.is_relative_to(state.capture_root):
            raise _error(403, "outside_capture_root", f"{path_text}: only paths under the capture root are read")
        if not full.is_file():
            raise _error(404, "not_found", f"{path_text}: no such image under the capture root")
        return full

    @api.post("/inspect", response_model=InspectResponse, dependencies=guarded, tags=["station"])
    async def inspect(
        instruction: Annotated[str, Form(min_length=1, max_length=2000, description="The instruction, zh or en.")],
        files: Annotated[list[UploadFile] | None, File(description="Images to inspect.")] = None,
        paths: Annotated[list[str] | None, Form(description="Image paths under the capture root.")] = None,
        line: Annotated[str | None, Form(max_length=100, description="Product line (default: from the words).")] = None,
        lang: Annotated[str | None, Form(pattern="^(zh|en)$", description="Language of reasons (zh | en).")] = None,
    ) -> InspectResponse:
        """Inspect uploaded images and / or captured paths against an instruction; one verdict per image."""
        from agent.images import check_pixels
        from agent.parser import parse_instruction

        if line is not None and line not in available_lines():
            raise _error(404, "unknown_line", f"no line {line!r}; known: {', '.join(available_lines())}")
        uploads = [f for f in (files or []) if f is not None]
        wanted = [p for p in (paths or []) if p]
        if not uploads and not wanted:
            raise _error(422, "no_images", "give images as `files` (upload) or `paths` (under the capture root)")
        if len(uploads) + len(wanted) > limits.max_files_per_request:
            raise _error(413, "too_many", f"at most {limits.max_files_per_request} images per request")
        query = parse_instruction(instruction, line=line)
        request_dir = state.uploads_dir / uuid.uuid4().hex
        names: dict[str, tuple[str, str]] = {}  # stored path -> (name shown, image id)
        order: list[str] = []
        for i, upload in enumerate(uploads):
            data = await _read_upload(upload)
            name = _safe_name(upload.filename, f"image_{i}.png")
            try:
                check_pixels(data, name, limits.max_image_pixels)
            except ImageReadError as exc:
                raise _error(413, "too_many_pixels", str(exc)) from exc
            digest, stored = _store(data, name, request_dir)
            names[str(stored)] = (name, digest)
            order.append(str(stored))
        for text in wanted:
            full = _captured(text)
            data = full.read_bytes()
            digest, stored = _store(data, _safe_name(full.name, "image.png"), request_dir)
            names[str(stored)] = (text, digest)
            order.append(str(stored))
        inspector, lock = state.inspector(query.line)
        with lock:
            verdicts = list(inspector.inspect(query, order, lang=lang))
        images = []
        for verdict in verdicts:
            stored = verdict.image
            shown, digest = names[stored]
            verdict.image = shown  # never the server's own storage path, in any field
            if verdict.error:
                verdict.error = verdict.error.replace(stored, shown)
            verdict.verdict_reasons = [r.replace(stored, shown) for r in verdict.verdict_reasons]
            images.append(InspectedImage(name=shown, image_id=digest, verdict=verdict))
        counts = {k: sum(i.verdict.verdict == k for i in images) for k in ("fail", "review", "pass")}
        counts["matching"] = sum(i.verdict.matches_query for i in images)
        return InspectResponse(query=query, images=images, counts=counts)

    @api.get("/images/{image_id}", dependencies=guarded, tags=["station"], response_class=FileResponse)
    def image(image_id: str) -> FileResponse:
        """An image inspected by this server, by its content hash."""
        return FileResponse(_stored_image(state, image_id))

    def _case_out(case: Any) -> CaseOut:
        return CaseOut(case=case, image_url=f"/cases/{case.id}/image")

    @api.post("/cases", response_model=CaseOut, status_code=201, dependencies=guarded, tags=["knowledge base"])
    def add_case(body: CaseCreate) -> CaseOut:
        """Save a confirmed finding as a new case (its class given by name or any synonym of the line)."""
        from knowledge_base.case import CaseInput

        if body.line not in available_lines():
            raise _error(404, "unknown_line", f"no line {body.line!r}; known: {', '.join(available_lines())}")
        from knowledge_base.validate import UnknownName, box_problem, canonical_names

        try:
            _, canonical = canonical_names(body.line, body.defect_class)
        except UnknownName as exc:
            raise _error(422, "unknown_class", str(exc)) from exc
        bad = {k: v for k, v in body.measurements.items() if not math.isfinite(v)}
        if bad:
            raise _error(422, "invalid_measurement", f"measurements must be finite numbers: {sorted(bad)}")
        stored = _stored_image(state, body.image_id)
        if body.box is not None:
            from agent.images import read_image

            h, w = read_image(stored).shape[:2]
            b = body.box
            # the knowledge base's rule, and a saved region must cover at least one whole pixel
            problem = box_problem(b, w, h) or (
                f"box {b.x1:g},{b.y1:g},{b.x2:g},{b.y2:g} is narrower than a pixel"
                if min(b.width, b.height) < 1
                else None
            )
            if problem:
                raise _error(422, "invalid_box", problem)
        case = state.kb.add(
            CaseInput(
                line=body.line,
                defect_class=canonical,
                image_path=str(stored),
                box=body.box,
                report=body.report,
                disposition=body.disposition,
                root_cause=body.root_cause,
                corrective_action=body.corrective_action,
                author=body.author,
                measurements=body.measurements,
            ),
            actor=body.author or "station",
        )
        return _case_out(case)

    @api.post("/lines/{line}/normal", response_model=NormalMarked, dependencies=guarded, tags=["knowledge base"])
    def mark_normal(line: str, body: NormalMark) -> NormalMarked:
        """A false alarm of the line's anomaly model, declared normal: the image joins the model's normal bank at
        once and the knowledge base as a normal example; the next inspection uses both."""
        from agent.lines import mark_normal as teach

        if line not in available_lines():
            raise _error(404, "unknown_line", f"no line {line!r}; known: {', '.join(available_lines())}")
        if load_line(line).anomaly is None:
            raise _error(409, "no_anomaly_model", f"line {line!r} has no anomaly model to teach")
        stored = _stored_image(state, body.image_id)
        added = teach(line, [str(stored)], knowledge_base=state.kb)
        state.forget(line)  # its models changed on disk
        return NormalMarked(line=line, patches_added=added)

    @api.get("/cases/search", response_model=SearchResponse, dependencies=guarded, tags=["knowledge base"])
    def search_cases(
        text: Annotated[str | None, Query(min_length=1, max_length=500, description="Words to search for.")] = None,
        case_id: Annotated[int | None, Query(ge=1, description="Cases similar to this one.")] = None,
        k: Annotated[int, Query(ge=1, le=50, description="How many cases.")] = 5,
        line: Annotated[str | None, Query(max_length=100, description="Only this line.")] = None,
    ) -> SearchResponse:
        """Cases similar to a text (hybrid: embedding + keywords) or to a stored case."""
        if (text is None) == (case_id is None):
            raise _error(422, "invalid_request", "give exactly one of `text` or `case_id`")
        filters = {"line": line} if line else {}
        if text is not None:
            return SearchResponse(hits=state.kb.search_by_text(text, k=k, **filters))
        return SearchResponse(hits=state.kb.search_by_case(int(case_id or 0), k=k, **filters))

    @api.get("/cases/{case_id}", response_model=CaseOut, dependencies=guarded, tags=["knowledge base"])
    def get_case(case_id: int) -> CaseOut:
        """One case and the address of its image."""
        return _case_out(_find_case(state, case_id))

    @api.get("/cases/{case_id}/image", dependencies=guarded, tags=["knowledge base"], response_class=FileResponse)
    def case_image(case_id: int) -> FileResponse:
        """The image of a case (as stored in the knowledge base)."""
        case = _find_case(state, case_id)
        path = Path(case.image_path)
        if not path.is_file():
            raise _error(404, "not_found", f"case {case_id}: its image file is missing (run `defect-agent kb verify`)")
        return FileResponse(path)

    @api.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return api


def _find_case(state: ServerState, case_id: int) -> Any:
    from knowledge_base import CaseNotFound

    if case_id < 1 or case_id > 2**62:
        raise _error(404, "not_found", f"no case {case_id}")
    try:
        return state.kb.get(case_id)
    except CaseNotFound as exc:
        raise _error(404, "not_found", str(exc)) from exc


def _stored_image(state: ServerState, image_id: str) -> Path:
    """The file of an image this server inspected, by the content hash POST /inspect returned; 404 otherwise."""
    if not _IMAGE_ID.match(image_id):
        raise _error(404, "not_found", "image_id must be the 64-hex id POST /inspect returned")
    found = sorted(state.images_dir.glob(f"{image_id}.*")) if state.images_dir.is_dir() else []
    if not found:
        raise _error(404, "not_found", f"no image {image_id[:12]}… on this server: inspect it first")
    return found[0]


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without an API token."""
    import ipaddress

    if host in ("localhost",):
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(
            f"serving on {host} reaches beyond this machine: set an API token first "
            "(export DEFECT_AGENT_TOKEN=… or --token), or bind to 127.0.0.1"
        )


__all__ = ["check_bind", "create_app"]
