"""Scope (which images: today's / yesterday's, a folder, a lot) and return options (k similar cases, overlays)
taken out of the token stream before the grammar sees it; their tokens become SCOPE markers."""

from __future__ import annotations

import datetime as dt

from agent.parser.errors import UnsupportedQueryError
from agent.parser.lexicon import CLASSIFIER, DE, DET, FILLER, FOLDER, LOT, OVERLAY, SIMILAR, TODAY
from agent.parser.normalize import Normalized
from agent.parser.tokenizer import NUM, SCOPE, Token
from agent.query import ReturnSpec, Scope


def extract_scope(tokens: list[Token], norm: Normalized, today: dt.date, text: str) -> tuple[Scope, ReturnSpec]:
    scope = Scope()
    want = ReturnSpec()
    for k, tok in enumerate(tokens):
        if tok.kind == TODAY:
            date = today + dt.timedelta(days=int(tok.get("days", 0)))
            if scope.date is not None and scope.date != date:
                raise UnsupportedQueryError(f"'{norm.span(tok.start, tok.end)}': the instruction names two days", text)
            scope.date = date
            tok.kind = SCOPE
        elif tok.kind in (FOLDER, LOT):
            if tok.capture is None:
                tok.kind = FILLER  # "this batch", "in the folder": the images given
                continue
            field = "folder" if tok.kind == FOLDER else "lot"
            old = getattr(scope, field)
            if old is not None and old != tok.capture:
                raise UnsupportedQueryError(
                    f"the instruction names two {field}s ({old}, {tok.capture}); give one", text
                )
            setattr(scope, field, tok.capture)
            tok.kind = SCOPE
        elif tok.kind == SIMILAR:
            tok.kind = SCOPE
            j = k - 1
            while j >= 0 and tokens[j].kind in (DET, FILLER, CLASSIFIER, DE):
                j -= 1
            if j >= 0 and tokens[j].kind == NUM and tokens[j].value is not None:
                value = tokens[j].value
                assert value is not None  # checked just above
                if not float(value).is_integer() or value < 1:
                    raise UnsupportedQueryError(
                        f"'{norm.span(tokens[j].start, tok.end)}': give a whole number of cases", text
                    )
                want.similar_cases = int(value)
                for m in range(j, k):
                    if tokens[m].kind in (NUM, CLASSIFIER):
                        tokens[m].kind = SCOPE
        elif tok.kind == OVERLAY:
            want.overlays = True
            tok.kind = SCOPE
    return scope, want
