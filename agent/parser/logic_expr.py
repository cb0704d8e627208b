"""Compact text form of a query's logic: `c1`, `and(c1,c2)`, `or(c1,not(c2))`. Used by the query set, by the
LLM backend (the model answers in this form; nested JSON trees are error-prone for it) and in messages."""

from __future__ import annotations

import re

from agent.query import Logic

_TOKEN = re.compile(r"\s*(and|or|not|[A-Za-z_][A-Za-z0-9_]*|\(|\)|,)\s*", re.I)


def format_logic(node: Logic) -> str:
    if node.op == "cond":
        return str(node.cond)
    return f"{node.op}(" + ",".join(format_logic(a) for a in node.args) + ")"


def parse_logic_expr(text: str) -> Logic:
    """Inverse of format_logic. Raises ValueError naming the position of the problem."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"logic {text!r}: unexpected {text[pos : pos + 10]!r} at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise ValueError("logic is empty")
    node, rest = _parse(tokens, 0, text)
    if rest != len(tokens):
        raise ValueError(f"logic {text!r}: unexpected {tokens[rest]!r} after a complete expression")
    return node


def _parse(tokens: list[str], i: int, text: str) -> tuple[Logic, int]:
    if i >= len(tokens):
        raise ValueError(f"logic {text!r} ends too early")
    head = tokens[i]
    low = head.lower()
    if low in ("and", "or", "not") and i + 1 < len(tokens) and tokens[i + 1] == "(":
        args: list[Logic] = []
        j = i + 2
        while True:
            arg, j = _parse(tokens, j, text)
            args.append(arg)
            if j >= len(tokens):
                raise ValueError(f"logic {text!r}: missing ')'")
            if tokens[j] == ",":
                j += 1
                continue
            if tokens[j] == ")":
                j += 1
                break
            raise ValueError(f"logic {text!r}: expected ',' or ')' but got {tokens[j]!r}")
        try:
            return Logic(op=low, args=args), j
        except ValueError as exc:
            raise ValueError(f"logic {text!r}: {exc}") from exc
    if head in ("(", ")", ","):
        raise ValueError(f"logic {text!r}: unexpected {head!r}")
    return Logic(op="cond", cond=head), i + 1
