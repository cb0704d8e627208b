"""Scheduled batch inspection: profiles, inputs (folders, globs, manifests), the results file as a ledger (a torn
line cut, keys skipped), a real run with its CSV / HTML report and exit codes, and kill-and-resume of the CLI
(SIGKILL and SIGTERM at random points): nothing lost, nothing written twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from agent.batch import BatchProfile, load_profile, run_batch
from agent.batch.inputs import expand_inputs
from agent.batch.ledger import BatchRecord, ResultLog
from agent.verdict import Verdict
from defect_agent.errors import ConfigError, EmptyInput

ROOT = Path(__file__).resolve().parents[1]
PROFILE = {
    "name": "test_nightly",
    "line": "battery_tab",
    "worst": 3,
    "instructions": [
        {"id": "seed", "text": "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"},
        {"id": "cracks", "text": "find cells with a crack"},
    ],
}


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from vision.datasets.synth.battery_tab import generate_batch

    folder = tmp_path_factory.mktemp("cells")
    generate_batch(folder / "images", n=12, seed=7070)
    return folder / "images"


def write_profile(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**PROFILE, **changes}, allow_unicode=True), encoding="utf-8")
    return path


def test_profiles_are_validated(tmp_path):
    assert load_profile(ROOT / "configs" / "profiles" / "battery_tab_nightly.yaml").line == "battery_tab"
    assert load_profile(ROOT / "configs" / "profiles" / "pcb_nightly.yaml").line == "pcb"
    dup = [{"id": "a", "text": "find cracks"}, {"id": "a", "text": "find burns"}]
    with pytest.raises(ConfigError, match="unique"):
        load_profile(write_profile(tmp_path / "p.yaml", instructions=dup))
    with pytest.raises(ConfigError, match="no batch profile"):
        load_profile(tmp_path / "missing.yaml")


def test_inputs_from_folders_globs_and_manifests(cells, tmp_path):
    images = sorted(str(p) for p in cells.glob("*.png"))
    assert expand_inputs([cells]) == images
    assert expand_inputs([str(cells / "*_0000[12].png")]) == images[1:3]
    (tmp_path / "list.txt").write_text("\n".join(images[:2]) + "\n", encoding="utf-8")
    (tmp_path / "list.csv").write_text("path,lot\n" + images[2] + ",L1\n", encoding="utf-8")
    (tmp_path / "list.jsonl").write_text(json.dumps({"image": images[3]}) + "\n", encoding="utf-8")
    got = expand_inputs([tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "list.jsonl", images[0]])
    assert got == images[:4]
    os.mkfifo(tmp_path / "pipe.png")  # a FIFO matched by a pattern is never opened (it would block forever)
    assert expand_inputs([str(tmp_path / "*.png")] + images[:1]) == images[:1]
    with pytest.raises(EmptyInput):
        expand_inputs([tmp_path / "nothing-here"])


def test_a_torn_last_line_is_cut_and_its_image_redone(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    verdict = Verdict(
        image="a.png",
        line="battery_tab",
        verdict="pass",
        verdict_reasons=[],
        matches_query=False,
        score=0.0,
        query_reasons=[],
    )
    with ResultLog(path) as log:
        for key in ("k1", "k2"):
            log.append(BatchRecord(key=key, run_id="r", instruction_id="i", image_sha256="s", verdict=verdict))
    with path.open("a") as fh:
        fh.write('{"key": "k3", "run_id": "r", "instr')  # a SIGKILL mid-write
    assert ResultLog(path).recover() == {"k1", "k2"}
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2


def test_a_run_writes_verdicts_csv_and_report_and_a_rerun_skips_everything(cells, tmp_path):
    from agent.batch.report import write_reports
    from agent.pipeline import Inspector

    inspector = Inspector.from_config(line="battery_tab", use_kb=False)
    profile = BatchProfile.model_validate(PROFILE)
    (tmp_path / "in").mkdir()
    for p in sorted(cells.glob("*.png"))[:5]:
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "torn.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    first = run_batch(profile, [tmp_path / "in"], out, inspector=inspector)
    assert (first.images, first.inspected, first.unreadable, first.skipped) == (6, 5, 1, 0)
    lines = (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12  # 6 images x 2 instructions, the unreadable one included with its error
    torn = [json.loads(x) for x in lines if "torn.png" in x]
    assert len(torn) == 2 and all(r["verdict"]["error"] and r["verdict"]["verdict"] == "review" for r in torn)
    second = run_batch(profile, [tmp_path / "in"], out, inspector=inspector)
    # the same bytes give the same answer: an undecodable file is not retried until its content changes
    assert (second.inspected, second.skipped, second.unreadable) == (0, 6, 0)
    assert len((out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()) == 12
    totals = write_reports(out, profile)
    assert totals.images == 6 and totals.unreadable == 1
    assert totals.exit_code == (1 if totals.verdicts["fail"] else 3)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "test_nightly" in report and "找出所有极耳焊接偏移超0.3mm" in report and "data:image/png;base64" in report
    csv_rows = (out / "verdicts.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_rows) == 13 and csv_rows[0].startswith("image,instruction,verdict,matches_query")
    assert len(list((out / "runs").glob("*.json"))) == 2


def _batch(profile: Path, inputs: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "DEFECT_AGENT_THREADS": "2"}
    cmd = [
        str(Path(sys.prefix) / "bin" / "defect-agent"),
        "batch",
        "--profile",
        str(profile),
        str(inputs),
        "--out",
        str(out),
        "--no-kb",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_and_resume(profile: Path, inputs: Path, out: Path, n_images: int, kills: list[int], seed: int = 0) -> dict:
    """Run the CLI, killing it with each signal of `kills` at a random point, then to the end; check the file."""
    rng = random.Random(seed)
    expected = n_images * len(PROFILE["instructions"])
    delivered = []
    for sig in kills:
        proc = _batch(profile, inputs, out)
        target = _lines(out / "verdicts.jsonl") + rng.randint(1, max(2, expected // (len(kills) + 2)))
        while proc.poll() is None and _lines(out / "verdicts.jsonl") < target:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(sig)
            delivered.append(sig)
        proc.wait(timeout=300)
    final = _batch(profile, inputs, out)
    _, err = final.communicate(timeout=1800)
    assert final.returncode in (0, 1, 3), err[-2000:]
    keys = Counter(
        json.loads(line)["key"] for line in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    )
    pairs = Counter(
        (json.loads(line)["verdict"]["image"], json.loads(line)["instruction_id"])
        for line in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    )
    return {"signals": delivered, "expected": expected, "keys": keys, "pairs": pairs, "stderr": err}


def test_killed_and_resumed_the_cli_loses_nothing_and_duplicates_nothing(cells, tmp_path):
    profile = write_profile(tmp_path / "profile.yaml")
    out = tmp_path / "out"
    got = kill_and_resume(profile, cells, out, n_images=12, kills=[signal.SIGKILL, signal.SIGTERM], seed=1)
    assert signal.SIGKILL in got["signals"], "the SIGKILL landed mid-run"
    assert sum(got["keys"].values()) == got["expected"] == len(got["keys"])  # nothing duplicated
    assert len(got["pairs"]) == got["expected"]  # nothing lost
    assert (out / "report.html").exists() and (out / "verdicts.csv").exists()
    # no terminal: progress as log lines, at INFO (a log watcher alerts on WARNING), without --verbose
    assert "INFO agent.batch.runner: batch progress done=" in got["stderr"]
    assert "WARNING agent.batch.runner: batch progress" not in got["stderr"]


@pytest.mark.slow
def test_kill_and_resume_at_scale(tmp_path):
    """The acceptance run: >= 500 images, >= 3 kills (one SIGKILL) at random points."""
    from vision.datasets.synth.battery_tab import generate_batch

    generate_batch(tmp_path / "images", n=500, seed=8080)
    profile = write_profile(tmp_path / "profile.yaml")
    got = kill_and_resume(
        profile, tmp_path / "images", tmp_path / "out", 500, [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL], seed=2
    )
    print(
        f"kill-and-resume: {len(got['signals'])} kills, {got['expected']} results expected, "
        f"{len(got['keys'])} keys, {sum(got['keys'].values())} lines"
    )
    assert len(got["signals"]) >= 3 and sum(got["keys"].values()) == got["expected"] == len(got["pairs"])
