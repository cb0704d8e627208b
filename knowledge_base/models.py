"""Schemas the knowledge base exchanges with its callers: search filters, history entries, verify / stats / import
reports."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from pydantic import BaseModel, Field, field_validator

from knowledge_base.case import Case, Disposition


def to_utc(value: datetime | date) -> datetime:
    """Naive datetimes are taken as UTC; a date means its midnight UTC."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CaseFilter(BaseModel):
    """Which cases a search or listing may return. All given fields must match; `until` is exclusive."""

    line: str | None = None
    defect_class: str | None = None
    disposition: Disposition | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    @field_validator("since", "until", mode="before")
    @classmethod
    def _utc(cls, value):
        if value is None or isinstance(value, str):
            return value
        return to_utc(value)

    @field_validator("since", "until")
    @classmethod
    def _utc_after(cls, value: datetime | None) -> datetime | None:
        return None if value is None else to_utc(value)

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in type(self).model_fields)

    def sql(self, alias: str = "c") -> tuple[str, list]:
        """A WHERE clause (without the keyword; "1" when empty) and its parameters."""
        clauses: list[str] = []
        params: list = []
        if self.line is not None:
            clauses.append(f"{alias}.line = ?")
            params.append(self.line)
        if self.defect_class is not None:
            clauses.append(f"{alias}.defect_class = ?")
            params.append(self.defect_class)
        if self.disposition is not None:
            clauses.append(f"{alias}.disposition = ?")
            params.append(self.disposition.value)
        if self.since is not None:
            clauses.append(f"{alias}.created_at >= ?")
            params.append(iso(self.since))
        if self.until is not None:
            clauses.append(f"{alias}.created_at < ?")
            params.append(iso(self.until))
        return (" AND ".join(clauses) or "1"), params


def iso(value: datetime) -> str:
    """Fixed-width UTC ISO-8601 (microseconds always present) so text order is time order."""
    return to_utc(value).isoformat(timespec="microseconds")


class HistoryEntry(BaseModel):
    """One recorded change of a case (add, edit, remove or restore), with the case before and after it."""

    seq: int
    case_id: int
    op: str  # add | edit | remove | restore
    at: datetime
    actor: str = ""
    before: Case | None = None
    after: Case | None = None


class VerifyReport(BaseModel):
    """Whether the derived FAISS index agrees with SQLite (the source of truth)."""

    ok: bool
    cases: int  # live cases in SQLite
    vectors: int  # live cases with a stored vector of the current embedder version
    index_count: int | None = None  # vectors in the index file (after replaying newer history), None if unreadable
    missing_ids: list[int] = Field(default_factory=list)  # in SQLite, not in the index (first 100)
    extra_ids: list[int] = Field(default_factory=list)  # in the index, not in SQLite (first 100)
    n_missing: int = 0
    n_extra: int = 0
    count_mismatch: bool = False
    cases_without_vector: list[int] = Field(default_factory=list)  # first 100
    model_version: str | None = None  # the knowledge base's embedder version
    index_model_version: str | None = None
    vector_versions: dict[str, int] = Field(default_factory=dict)
    model_version_mismatch: bool = False
    embedder_version: str | None = None  # of the embedder this KB was opened with, when any
    file_problem: str | None = None  # missing / corrupt index file or manifest
    keyword_index_mismatch: bool = False
    index_kind: str | None = None
    pending_ops: int = 0  # history entries newer than the index file (replayed on open; not a fault)
    database_problem: str | None = None  # SQLite's quick_check found damage: only a backup repairs it
    # cited by a case or its history but not in the store: a warning (search still works; re-embedding or restoring
    # those cases would fail), not a fault of the index, so `ok` does not depend on it
    missing_images: list[str] = Field(default_factory=list)
    n_missing_images: int = 0
    wrong_dim_vectors: list[int] = Field(default_factory=list)  # case ids whose vector is not of the base's dimension
    non_finite_measurements: list[int] = Field(default_factory=list)  # case ids (stored before the check existed)
    # image files no case and no history entry cites (left by an interrupted add): not a fault, `kb gc` frees them
    orphan_images: list[str] = Field(default_factory=list)  # first 100, relative to the knowledge base folder
    n_orphan_images: int = 0
    orphan_bytes: int = 0
    problems: list[str] = Field(default_factory=list)

    def render(self) -> str:
        head = "OK" if self.ok else "INCONSISTENT"
        lines = [
            f"knowledge base: {head}",
            f"  cases {self.cases}, vectors {self.vectors}, index {self.index_count} ({self.index_kind})",
            f"  embedder version {self.model_version}",
        ]
        lines += [f"  - {p}" for p in self.problems]
        if self.n_missing_images:
            lines.append(
                f"  warning: {self.n_missing_images} image file(s) cited by cases or their history are missing from "
                f"the store: {self.missing_images[:5]}"
            )
        if self.n_orphan_images:
            lines.append(
                f"  note: {self.n_orphan_images} orphan image file(s), {self.orphan_bytes} bytes, cited by no case "
                f"or history entry: `defect-agent kb gc` removes them"
            )
        if self.database_problem or self.n_missing_images:
            lines.append("  restore with: defect-agent kb restore-backup BACKUP_DIR (made by `defect-agent kb backup`)")
        index_fault = (
            self.file_problem
            or self.n_missing
            or self.n_extra
            or self.count_mismatch
            or self.cases_without_vector
            or self.keyword_index_mismatch
            or self.model_version_mismatch
            or self.wrong_dim_vectors
        )
        if not self.ok and index_fault:
            lines.append("  repair with: defect-agent kb rebuild")
        return "\n".join(lines)


class GcReport(BaseModel):
    """What `kb gc` removed (or, with dry_run, would remove): image files no case and no history entry cites."""

    removed: list[str] = Field(default_factory=list)  # paths relative to the knowledge base folder
    bytes_freed: int = 0
    kept_recent_temp: int = 0  # temp files of copies that may still be in progress (younger than the grace time)
    dry_run: bool = False

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = f"{verb} {len(self.removed)} orphan image file(s), {self.bytes_freed} bytes"
        if self.kept_recent_temp:
            text += f"; kept {self.kept_recent_temp} recent temp file(s) (a copy may be in progress)"
        return text


class BackupManifest(BaseModel):
    """`backup.json` beside a backup's database copy: what it holds, so a restore can check it is whole."""

    format: int = 1
    created_at: datetime
    source: str  # the knowledge base folder it was taken from
    schema_version: int
    cases: int
    history_entries: int
    images: int
    image_bytes: int
    db_bytes: int
    db_sha256: str
    model_version: str | None = None
    dim: int | None = None


class KBStats(BaseModel):
    """Counts and sizes of a knowledge base (`kb stats`): cases by line / class / disposition, history,
    images, database and index."""

    cases: int
    by_line: dict[str, int]
    by_class: dict[str, int]
    by_disposition: dict[str, int]
    history_entries: int
    removed_cases: int  # removed and not restored: kept in the history only
    images: int
    image_bytes: int
    db_bytes: int
    index_kind: str | None
    index_count: int | None
    index_file_bytes: int | None
    model_version: str | None
    dim: int | None
    schema_version: int


class RowError(BaseModel):
    """An import row that was skipped: its line number in the source file and why."""

    row: int  # line number in the source file (CSV: the header is line 1)
    message: str


class PresentRow(BaseModel):
    """An import row that added nothing: the same case (image bytes, box, line, class) is already live."""

    row: int
    case_id: int


class ImportReport(BaseModel):
    """The result of a bulk import: the source, its row count, the new case ids, the rows whose case was
    already present and the rows that failed."""

    source: str
    rows: int
    imported: list[int] = Field(default_factory=list)  # new case ids
    already_present: list[PresentRow] = Field(default_factory=list)
    errors: list[RowError] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors
