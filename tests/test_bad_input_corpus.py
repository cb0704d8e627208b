"""A corpus of bad inputs, tried through the real console entry point (`agent.cli.main`, in process so the models
load once): images, instructions, imports, models, configs, indexes. Every item must end in a clear error or correct
handling — an exit code the command documents, one line on stderr — never a traceback and never a hang (each item
runs under a time limit). The figures are printed: items tried, handled, tracebacks, worst peak memory."""

from __future__ import annotations

import io
import os
import resource
import shutil
import signal
import struct
import sys
import zlib
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = "find cells with weld spatter"


@dataclass
class Item:
    name: str
    argv: Callable[[Path], list[str]]
    codes: set[int]  # documented exit codes that count as correct handling
    expect: str = ""  # a word the one-line error (or output) must contain


def png_header_bomb(path: Path, w: int = 30000, h: int = 30000) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def setup_files(d: Path) -> None:
    from vision.datasets.synth.battery_tab import generate_batch

    generate_batch(d / "good", n=2, seed=99)
    (d / "empty").mkdir()
    (d / "texts").mkdir()
    (d / "texts" / "notes.txt").write_text("not an image")
    (d / "zero.png").write_bytes(b"")
    (d / "garbage.png").write_bytes(os.urandom(2048))
    (d / "truncated.png").write_bytes((d / "good" / "battery_tab_s99_0_00000.png").read_bytes()[:500])
    (d / "text.jpg").write_text("hello")
    cv2.imwrite(str(d / "small.png"), np.zeros((50, 60, 3), np.uint8))  # not the line's calibrated size
    cv2.imwrite(str(d / "grey16.png"), np.zeros((480, 640), np.uint16))
    png_header_bomb(d / "bomb.png")
    with (d / "huge.png").open("wb") as fh:  # sparse: 300 MB on paper, nothing on disk
        fh.truncate(300_000_000)
    os.mkfifo(d / "fifo.png")
    (d / "dir.png").mkdir()
    (d / "link.png").symlink_to(d / "nowhere.png")
    (d / "名前 with spaces.png").write_bytes((d / "good" / "battery_tab_s99_0_00001.png").read_bytes())
    (d / "cases_bad.jsonl").write_text('{"line": "battery_tab"\n{"not json\n', encoding="utf-8")
    (d / "cases_latin1.csv").write_bytes(
        "line,defect_class,image_path,disposition\nbattery_tab,sp\xe4tter,x.png,scrap\n".encode("latin-1")
    )
    (d / "cases_quote.csv").write_text(
        'line,defect_class,image_path,disposition,report\nbattery_tab,spatter,x.png,scrap,"unterminated\nbattery_tab,crack,y.png,scrap,ok\n',
        encoding="utf-8",
    )
    (d / "cases_unknown.jsonl").write_text(
        '{"line": "nope", "defect_class": "x", "image_path": "x.png", "disposition": "scrap"}\n', encoding="utf-8"
    )
    (d / "cases_nan.jsonl").write_text(
        '{"line": "battery_tab", "defect_class": "spatter", "image_path": "good/battery_tab_s99_0_00000.png", "disposition": "scrap", "measurements": {"length_mm": NaN}}\n',
        encoding="utf-8",
    )
    (d / "empty.jsonl").write_text("", encoding="utf-8")
    (d / "profile_bad.yaml").write_text("name: x\nline: battery_tab\ninstructions: []\n", encoding="utf-8")
    (d / "profile_yaml.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    kb = d / "kb_truncated"
    kb.mkdir()
    from knowledge_base.db import DB_NAME

    (kb / DB_NAME).write_bytes(b"SQLite format 3\x00" + os.urandom(300))  # a torn copy of a real base
    (d / "kb_notadir").write_text("x")


def good(d: Path, n: int = 0) -> str:
    return str(d / "good" / f"battery_tab_s99_0_0000{n}.png")


C = Item
CORPUS: list[Item] = [
    # images
    C("missing file among good", lambda d: ["inspect", SEED, good(d), str(d / "missing.png"), "--no-kb"], {3}),
    C("only a missing file", lambda d: ["inspect", SEED, str(d / "missing.png"), "--no-kb"], {2}, "no such file"),
    C("empty folder", lambda d: ["inspect", SEED, str(d / "empty"), "--no-kb"], {2}, "no images"),
    C("folder of text files", lambda d: ["inspect", SEED, str(d / "texts"), "--no-kb"], {2}, "no images"),
    C("zero-byte png", lambda d: ["inspect", SEED, str(d / "zero.png"), good(d), "--no-kb"], {3}),
    C("random bytes png", lambda d: ["inspect", SEED, str(d / "garbage.png"), "--no-kb"], {3}),
    C("truncated png", lambda d: ["inspect", SEED, str(d / "truncated.png"), "--no-kb"], {0, 3}),
    C("text named .jpg", lambda d: ["inspect", SEED, str(d / "text.jpg"), "--no-kb"], {3}),
    C("wrong size", lambda d: ["inspect", SEED, str(d / "small.png"), "--no-kb"], {3}),
    C("16-bit grey", lambda d: ["inspect", SEED, str(d / "grey16.png"), "--no-kb"], {0, 3}),
    C("30000x30000 header bomb", lambda d: ["inspect", SEED, str(d / "bomb.png"), "--no-kb"], {3}),
    C("300 MB file", lambda d: ["inspect", SEED, str(d / "huge.png"), good(d), "--no-kb"], {3}),
    C("fifo by name", lambda d: ["inspect", SEED, str(d / "fifo.png"), good(d), "--no-kb"], {3}),
    C("fifo by glob", lambda d: ["inspect", SEED, str(d / "*.png"), "--no-kb"], {0, 3}),
    C("directory named .png", lambda d: ["inspect", SEED, str(d / "dir.png"), good(d), "--no-kb"], {2, 3}),
    C("dangling symlink", lambda d: ["inspect", SEED, str(d / "link.png"), good(d), "--no-kb"], {3}),
    C("unicode and spaces in the name", lambda d: ["inspect", SEED, str(d / "名前 with spaces.png"), "--no-kb"], {0}),
    C(
        "overlays into a file path",
        lambda d: ["inspect", SEED, good(d), "--no-kb", "--overlays", str(d / "text.jpg")],
        {2},
    ),
    C(
        "out into a missing root folder",
        lambda d: ["inspect", SEED, good(d), "--no-kb", "--out", "/proc/nope/x.jsonl"],
        {2},
    ),
    # instructions
    C("empty instruction", lambda d: ["inspect", "", good(d), "--no-kb"], {2}),
    C("whitespace instruction", lambda d: ["inspect", "   ", good(d), "--no-kb"], {2}),
    C("unknown defect word", lambda d: ["inspect", "find cells with blorps", good(d), "--no-kb"], {2}, "did you mean"),
    C("typo of a known word", lambda d: ["inspect", "find cells with spater", good(d), "--no-kb"], {0, 2}),
    C("unknown line", lambda d: ["inspect", SEED, good(d), "--line", "nope", "--no-kb"], {2}, "nope"),
    C("numbers only", lambda d: ["inspect", "0.3 0.5 12", good(d), "--no-kb"], {2}),
    C("emoji", lambda d: ["inspect", "🔥🔥 spatter?", good(d), "--no-kb"], {0, 2}),
    C("very long instruction", lambda d: ["inspect", "find cells with spatter " * 400, good(d), "--no-kb"], {0, 2}),
    C("control characters", lambda d: ["inspect", "find\x00cells\x07with spatter", good(d), "--no-kb"], {0, 2}),
    C(
        "negative size",
        lambda d: ["inspect", "find shorts longer than -2 mm", good(d), "--no-kb", "--line", "pcb"],
        {0, 2, 3},
    ),
    C("unit without number", lambda d: ["inspect", "find cells with offset over mm", good(d), "--no-kb"], {2}),
    C("chinese unknown word", lambda d: ["inspect", "找出有外星人的电芯", good(d), "--no-kb"], {2}),
    C("mixed lines", lambda d: ["inspect", "find boards with spatter", good(d), "--no-kb"], {0, 2, 3}),
    C("bad --lang", lambda d: ["inspect", SEED, good(d), "--no-kb", "--lang", "fr"], {0, 2}),
    C("negative k", lambda d: ["inspect", SEED, good(d), "--k", "-3"], {0, 2}),
    C("parse garbage", lambda d: ["parse", "%%%% ### @@@"], {2}),
    C("explain unknown", lambda d: ["explain", "find all blorps"], {2}, "did you mean"),
    # knowledge base and its imports
    C("truncated sqlite kb", lambda d: ["inspect", SEED, good(d), "--kb", str(d / "kb_truncated")], {0}),
    C("kb is a file", lambda d: ["inspect", SEED, good(d), "--kb", str(d / "kb_notadir")], {0, 2}),
    C("kb verify on truncated", lambda d: ["kb", "verify", "--kb", str(d / "kb_truncated")], {1, 2}),
    C("kb stats on truncated", lambda d: ["kb", "stats", "--kb", str(d / "kb_truncated")], {1, 2}),
    C("kb show missing case", lambda d: ["kb", "show", "424242", "--kb", str(d / "kb_new")], {1, 2}),
    C("kb rm missing case", lambda d: ["kb", "rm", "424242", "--kb", str(d / "kb_new")], {1, 2}),
    C(
        "kb edit bad disposition",
        lambda d: ["kb", "edit", "1", "--disposition", "burn", "--kb", str(d / "kb_new")],
        {1, 2},
    ),
    C(
        "kb add missing image",
        lambda d: [
            "kb",
            "add",
            str(d / "missing.png"),
            "--line",
            "battery_tab",
            "--class",
            "spatter",
            "--disposition",
            "scrap",
            "--kb",
            str(d / "kb_new"),
        ],
        {2},
    ),
    C(
        "kb add unknown class",
        lambda d: [
            "kb",
            "add",
            good(d),
            "--line",
            "battery_tab",
            "--class",
            "blorp",
            "--disposition",
            "scrap",
            "--kb",
            str(d / "kb_new"),
        ],
        {1, 2},
    ),
    C(
        "kb add unknown line",
        lambda d: [
            "kb",
            "add",
            good(d),
            "--line",
            "nope",
            "--class",
            "spatter",
            "--disposition",
            "scrap",
            "--kb",
            str(d / "kb_new"),
        ],
        {1, 2},
    ),
    C(
        "kb add bad box",
        lambda d: [
            "kb",
            "add",
            good(d),
            "--line",
            "battery_tab",
            "--class",
            "spatter",
            "--disposition",
            "scrap",
            "--box",
            "1,2,3",
            "--kb",
            str(d / "kb_new"),
        ],
        {1, 2},
    ),
    C(
        "kb add box outside",
        lambda d: [
            "kb",
            "add",
            good(d),
            "--line",
            "battery_tab",
            "--class",
            "spatter",
            "--disposition",
            "scrap",
            "--box",
            "600,400,9000,9000",
            "--kb",
            str(d / "kb_new"),
        ],
        {0, 1, 2},
    ),
    C(
        "kb add NaN measurement",
        lambda d: [
            "kb",
            "add",
            good(d),
            "--line",
            "battery_tab",
            "--class",
            "spatter",
            "--disposition",
            "scrap",
            "--measurement",
            "length_mm=nan",
            "--kb",
            str(d / "kb_new"),
        ],
        {0, 1, 2},
    ),
    C(
        "kb import malformed jsonl",
        lambda d: ["kb", "import", str(d / "cases_bad.jsonl"), "--kb", str(d / "kb_new")],
        {0, 1, 2, 3},
    ),
    C(
        "kb import latin-1 csv",
        lambda d: ["kb", "import", str(d / "cases_latin1.csv"), "--kb", str(d / "kb_new")],
        {0, 1, 2, 3},
    ),
    C(
        "kb import unterminated quote",
        lambda d: ["kb", "import", str(d / "cases_quote.csv"), "--kb", str(d / "kb_new")],
        {0, 1, 2, 3},
    ),
    C(
        "kb import unknown line",
        lambda d: ["kb", "import", str(d / "cases_unknown.jsonl"), "--kb", str(d / "kb_new")],
        {0, 1, 2, 3},
    ),
    C("kb import NaN", lambda d: ["kb", "import", str(d / "cases_nan.jsonl"), "--kb", str(d / "kb_new")], {0, 1, 2, 3}),
    C(
        "kb import empty file",
        lambda d: ["kb", "import", str(d / "empty.jsonl"), "--kb", str(d / "kb_new")],
        {0, 1, 2, 3},
    ),
    C("kb import missing file", lambda d: ["kb", "import", str(d / "nope.jsonl"), "--kb", str(d / "kb_new")], {1, 2}),
    C("kb search nothing given", lambda d: ["kb", "search", "--kb", str(d / "kb_new")], {1, 2}),
    C("kb search k=0", lambda d: ["kb", "search", "--text", "x", "--k", "0", "--kb", str(d / "kb_new")], {2}),
    # profiles, configs, models
    C(
        "batch profile without instructions",
        lambda d: ["batch", str(d / "good"), "--profile", str(d / "profile_bad.yaml"), "--out", str(d / "b1")],
        {2},
    ),
    C(
        "batch profile not yaml",
        lambda d: ["batch", str(d / "good"), "--profile", str(d / "profile_yaml.yaml"), "--out", str(d / "b2")],
        {2},
    ),
    C(
        "batch missing profile",
        lambda d: ["batch", str(d / "good"), "--profile", str(d / "none.yaml"), "--out", str(d / "b3")],
        {2},
    ),
    C(
        "batch empty input folder",
        lambda d: [
            "batch",
            str(d / "empty"),
            "--profile",
            str(ROOT / "configs/profiles/battery_tab_nightly.yaml"),
            "--out",
            str(d / "b4"),
            "--no-kb",
        ],
        {2},
    ),
    C("serve beyond loopback without token", lambda d: ["serve", "--host", "0.0.0.0"], {2}, "token"),
    C("schema of nothing", lambda d: ["schema", "nothing"], {2}),
    C("unknown command", lambda d: ["frobnicate"], {2}),
    C(
        "train adapter with missing data yaml",
        lambda d: ["train", "adapter", "--line", "pcb", "--data", str(d / "none.yaml")],
        {2},
    ),
    C(
        "eval locator with missing data yaml",
        lambda d: ["eval", "locator", "--line", "battery_tab", "--data", str(d / "none.yaml")],
        {2},
    ),
]


def run_item(item: Item, d: Path) -> tuple[int, str, float]:
    from agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["defect-agent", *item.argv(d)]
    old = sys.argv
    sys.argv = argv

    def alarm(signum, frame):
        raise TimeoutError(f"{item.name}: still running after 120 s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        signal.alarm(0)
        sys.argv = old
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return code, err.getvalue() + out.getvalue(), peak_mb


def test_every_bad_input_gets_a_clear_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEFECT_AGENT_DATA", str(tmp_path / "var"))
    setup_files(tmp_path)
    assert len(CORPUS) >= 60
    problems, tracebacks, peak = [], 0, 0.0
    for item in CORPUS:
        code, text, peak_mb = run_item(item, tmp_path)
        peak = max(peak, peak_mb)
        if "Traceback (most recent call last)" in text:
            tracebacks += 1
            problems.append(f"{item.name}: traceback\n{text[-800:]}")
        elif code not in item.codes:
            problems.append(f"{item.name}: exit {code}, expected {sorted(item.codes)}\n{text[-400:]}")
        elif item.expect and item.expect.lower() not in text.lower():
            problems.append(f"{item.name}: the message does not say {item.expect!r}: {text[-300:]}")
    with capsys.disabled():
        print(
            f"\nbad-input corpus: {len(CORPUS)} items, {len(CORPUS) - len(problems)} handled, "
            f"{tracebacks} tracebacks, 0 hangs (120 s limit each), peak RSS {peak:.0f} MB"
        )
    assert not problems, "\n\n".join(problems)
    shutil.rmtree(tmp_path / "good", ignore_errors=True)
