"""A new line from normal images and a few examples, with no boxes drawn (issue 20), end to end through the CLI in a
scratch project: `line new` writes config + model + card and files the examples, `inspect` uses the stored threshold,
`line mark-normal` moves the next inspection, `line list / show / rm`; the acceptance of anomaly regions beside a
detector; and how knowledge-base cases move an anomaly region (agent.anomaly_stage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml

from defect_agent.config import load_line

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def run(args: list[str], home: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECT_AGENT")}
    env.update(DEFECT_AGENT_HOME=str(home), DEFECT_AGENT_THREADS="2", COLUMNS="200", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [str(VENV / "bin" / "defect-agent"), *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A scratch project (own configs/ and var/, shipped models linked) and generated cells: 20 normal, two example
    classes (crack, burn), test cells of each kind."""
    from vision.datasets.synth.battery_tab import generate_battery_tab, image_seed
    from vision.datasets.synth.unseen import normal_cell, normal_params

    home = tmp_path_factory.mktemp("line_home")
    shutil.copytree(ROOT / "configs", home / "configs")
    (home / "models").symlink_to(ROOT / "models")
    data = home / "capture"
    for i in range(20):
        img, _ = normal_cell(image_seed(11, i, 7))
        (data / "normal").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / "normal" / f"n{i:02d}.png"), img)
    for cls, force in (("crack", {"force_crack": True}), ("burn", {"force_burn": True})):
        (data / "examples" / cls).mkdir(parents=True)
        for i in range(2):
            seed = image_seed(12, i, 7)
            img, _ = generate_battery_tab(seed, normal_params(seed).model_copy(update=force))
            cv2.imwrite(str(data / "examples" / cls / f"{cls}{i}.png"), img)
    (data / "test").mkdir()
    for i, force in enumerate(({}, {"force_crack": True}, {"force_burn": True}, {})):
        seed = image_seed(13, i, 7)
        img, _ = generate_battery_tab(seed, normal_params(seed).model_copy(update=force))
        cv2.imwrite(str(data / "test" / f"t{i}_{'bad' if force else 'ok'}.png"), img)
    result = run(
        [
            "line", "new", "cellx", "--normal", str(data / "normal"), "--examples", str(data / "examples"),
            "--title", "电芯/cell", "--mm-per-px", "0.025", "--kb", str(home / "kb"),
        ],
        home,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return {"home": home, "data": data, "kb": home / "kb", "out": Path(result.stdout)}


def test_line_new_writes_a_config_inspect_can_load_and_a_card_with_measured_figures(made):
    home = made["home"]
    cfg = yaml.safe_load((home / "configs" / "lines" / "cellx.yaml").read_text(encoding="utf-8"))
    assert "locator" not in cfg and cfg["anomaly"]["model"] == "var/lines/cellx/anomaly.safetensors"
    assert [c["name"] for c in cfg["classes"]] == ["burn", "crack"]
    crack = next(c for c in cfg["classes"] if c["name"] == "crack")
    assert "裂纹" in crack["synonyms"]["zh"] and "crack" in crack["synonyms"]["en"]
    assert cfg["title"] == {"en": ["cell"], "zh": ["电芯"]}
    card = json.loads((home / "var" / "lines" / "cellx" / "card.json").read_text(encoding="utf-8"))
    assert card["fit_images"] + card["held_back_images"] == 20 and card["held_back_images"] >= 4
    assert card["threshold"] > 0 and card["map_threshold"] > 0
    assert set(card["examples"]) == {"crack", "burn"} and card["examples"]["crack"]["added_to_kb"] == 2
    assert (home / "var" / "lines" / "cellx" / "MODEL_CARD.md").read_text(encoding="utf-8").startswith("# Line `cellx`")
    listed = run(["line", "list", "--json"], home)
    rows = {json.loads(line)["name"]: json.loads(line) for line in listed.stdout.splitlines()}
    assert rows["cellx"]["anomaly"] and not rows["cellx"]["detector"] and rows["cellx"]["created_by_line_new"]
    assert rows["battery_tab"]["detector"]
    shown = json.loads(run(["line", "show", "cellx"], home).stdout)
    assert shown["card"]["threshold"] == card["threshold"]


def test_inspect_uses_the_stored_threshold_and_names_regions_from_examples(made):
    home, data = made["home"], made["data"]
    out = home / "verdicts.jsonl"
    result = run(
        [
            "inspect",
            "find every anomaly",
            str(data / "test"),
            "--line",
            "cellx",
            "--kb",
            str(made["kb"]),
            "--out",
            str(out),
        ],
        home,
    )
    assert result.returncode == 0, result.stderr
    verdicts = {Path(v["image"]).name: v for v in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    card = json.loads((home / "var" / "lines" / "cellx" / "card.json").read_text(encoding="utf-8"))
    for v in verdicts.values():
        assert v["anomaly"]["threshold"] == pytest.approx(card["threshold"], abs=1e-4)
        assert v["anomaly"]["anomalous"] == (v["anomaly"]["score"] > v["anomaly"]["threshold"])
        assert v["models"]["anomaly"].startswith("patchcore-")
    for name in ("t1_bad.png", "t2_bad.png"):
        assert verdicts[name]["verdict"] == "fail", verdicts[name]["verdict_reasons"]
        assert any(d["source"] == "anomaly" and d["measurements"]["length_mm"] > 0 for d in verdicts[name]["defects"])
    # the crack cell's region is named after the crack examples (a close case, cosine >= 0.8), not left `anomaly`,
    # and that close defect case is its evidence
    named = [d for d in verdicts["t1_bad.png"]["defects"] if d["defect_class"] == "crack"]
    assert named and named[0]["case_evidence"] == 1.0 and named[0]["alternatives"]["crack"] >= 0.8
    assert verdicts["t0_ok.png"]["verdict"] == "pass" and verdicts["t3_ok.png"]["verdict"] == "pass"


def test_a_lower_threshold_in_the_config_changes_the_verdict(made, monkeypatch):
    """The threshold inspect applies is the config's / model's, not a constant: set it below a normal cell's score
    and that cell is flagged."""
    from agent.lines import config_path
    from agent.pipeline import Inspector

    home = made["home"]
    monkeypatch.setenv("DEFECT_AGENT_HOME", str(home))
    load_line.cache_clear()
    path = config_path("cellx")
    original = path.read_text(encoding="utf-8")
    try:
        image = str(made["data"] / "test" / "t0_ok.png")
        inspector = Inspector.from_config(line="cellx", use_embedder=False)
        calm = inspector.inspect_image(inspector.parse("find every anomaly"), image)
        assert calm.anomaly is not None and not calm.anomaly.anomalous and calm.verdict == "pass"
        data = yaml.safe_load(original)
        data["anomaly"]["threshold"] = calm.anomaly.score * 0.5
        data["anomaly"]["map_threshold"] = calm.anomaly.peak * 0.5
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        load_line.cache_clear()
        strict = Inspector.from_config(line="cellx", use_embedder=False)
        flagged = strict.inspect_image(strict.parse("find every anomaly"), image)
        assert flagged.anomaly is not None and flagged.anomaly.anomalous and flagged.verdict == "fail"
    finally:
        path.write_text(original, encoding="utf-8")
        load_line.cache_clear()


def test_mark_normal_teaches_the_model_and_the_next_inspection_uses_it(made, monkeypatch):
    from agent.pipeline import Inspector

    home = made["home"]
    monkeypatch.setenv("DEFECT_AGENT_HOME", str(home))
    load_line.cache_clear()
    image = str(made["data"] / "test" / "t2_bad.png")  # a burn mark the engineer declares acceptable on this line
    before = Inspector.from_config(line="cellx", use_embedder=False)
    first = before.inspect_image(before.parse("find every anomaly"), image)
    assert first.verdict == "fail"
    result = run(["line", "mark-normal", "cellx", image, "--kb", str(made["kb"])], home)
    assert result.returncode == 0, result.stderr
    assert "patch features joined" in result.stdout
    load_line.cache_clear()
    after = Inspector.from_config(line="cellx", use_embedder=False)
    second = after.inspect_image(after.parse("find every anomaly"), image)
    assert second.anomaly.score < first.anomaly.score * 0.5
    assert second.verdict == "pass", second.verdict_reasons
    assert second.models.anomaly != first.models.anomaly  # the bank changed, and the verdict says which one judged


def test_line_rm_removes_only_lines_made_by_line_new(made):
    home = made["home"]
    refused = run(["line", "rm", "battery_tab", "--yes"], home)
    assert refused.returncode == 2 and "line new" in refused.stderr
    scratch = run(["line", "new", "cell_tmp", "--normal", str(made["data"] / "normal"), "--image-size", "128"], home)
    assert scratch.returncode == 0, scratch.stderr
    # a line from normal images alone (no examples, no defect class yet) inspects with the embedder and the KB
    result = run(["inspect", "find every anomaly", str(made["data"] / "test"), "--line", "cell_tmp"], home)
    assert result.returncode == 0, result.stderr
    again = run(["line", "new", "cell_tmp", "--normal", str(made["data"] / "normal")], home)
    assert again.returncode == 2 and "exists" in again.stderr
    removed = run(["line", "rm", "cell_tmp", "--yes"], home)
    assert removed.returncode == 0, removed.stderr
    assert not (home / "configs" / "lines" / "cell_tmp.yaml").exists()
    assert not (home / "var" / "lines" / "cell_tmp").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["line", "new", "Bad Name", "--normal", "."], "line name"),
        (["line", "new", "few", "--normal", "configs"], "holds no images"),
        (["line", "new", "rate", "--normal", ".", "--max-false-alarm", "0.7"], "max-false-alarm"),
    ],
)
def test_line_new_refuses_bad_input_in_one_line(made, args, message):
    result = run(args, made["home"])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _anomaly_line(with_detector: bool):
    from defect_agent.config import LineConfig

    data = {
        "name": "cells_a",
        "calibration": {"mm_per_px": 0.025},
        "classes": [{"name": "crack"}, {"name": "burn"}],
        "anomaly": {"model": "var/lines/cells_a/anomaly.safetensors"},
    }
    if with_detector:
        data["locator"] = {"weights": "models/locator/battery_tab.pt"}
    return LineConfig.model_validate(data)


def _stage(line):
    from agent.anomaly_stage import AnomalyStage
    from vision.anomaly import AnomalyModel

    model = AnomalyModel()
    model.threshold, model.map_threshold = 10.0, 8.0
    return AnomalyStage(model, line)


def _case(defect_class: str, similarity: float, disposition: str = "scrap"):
    from retrieval.hits import SimilarCase

    return SimilarCase(
        case_id=1, similarity=similarity, line="cells_a", defect_class=defect_class, disposition=disposition
    )


def test_the_anomaly_class_joins_the_line_after_the_detector_classes():
    line = _anomaly_line(with_detector=True)
    assert line.class_names == ["crack", "burn"]  # the detector's class ids are unchanged
    assert line.anomaly_class == "anomaly" and "anomaly" in line.defect_names
    assert "异常区域" in line.class_spec("anomaly").synonyms.zh


def test_an_unexplained_anomaly_reviews_beside_a_detector_and_rejects_alone():
    from agent.acceptance import judge_part
    from agent.verdict import DefectFinding
    from defect_agent.config import FusionConfig
    from vision.detection import Box

    finding = DefectFinding(
        defect_class="anomaly", box=Box(x1=0, y1=0, x2=10, y2=10), source="anomaly", confidence=0.9, probability=0.9
    )
    beside = judge_part([finding], _anomaly_line(with_detector=True), FusionConfig())
    alone = judge_part([finding], _anomaly_line(with_detector=False), FusionConfig())
    assert beside.verdict == "review" and "no trained defect class" in beside.reasons[0]
    assert alone.verdict == "fail"


def test_close_defect_examples_lift_a_region_and_close_normal_examples_lower_it():
    stage = _stage(_anomaly_line(with_detector=False))
    faint = stage.confidence(0.9 * stage.map_threshold)  # below the threshold: passes on its own
    assert faint < 0.35
    name, best, lifted, evidence = stage.name_and_fuse(faint, [_case("crack", 0.93), _case("crack", 0.9)])
    assert name == "crack" and best == {"crack": 0.93} and lifted > 0.65 and evidence == 1.0
    strong = stage.confidence(1.15 * stage.map_threshold)  # fails the part on its own
    assert strong > 0.65
    _, _, lowered, _ = stage.name_and_fuse(strong, [_case("anomaly", 0.95, "accept"), _case("anomaly", 0.9, "accept")])
    assert lowered < 0.35
    # cases below case_min_similarity are the nearest of a region unlike every example: they move nothing
    name, _, same, none = stage.name_and_fuse(faint, [_case("crack", 0.5), _case("burn", 0.4)])
    assert name is None and same == pytest.approx(faint) and none is None
    # one example each way: the evidence is mixed and stays bounded
    _, _, mixed, _ = stage.name_and_fuse(strong, [_case("crack", 0.9), _case("anomaly", 0.9, "accept")])
    assert mixed == pytest.approx(strong, abs=1e-6)


def test_the_station_serves_a_new_line_at_once_and_learns_a_false_alarm(made):
    """`serve` sees a line made by `line new` without a restart; POST /lines/{line}/normal teaches its model and the
    next POST /inspect of the same image uses it."""
    import httpx
    from server_support import running_server

    home = made["home"]
    image = made["data"] / "test" / "t1_bad.png"  # a crack cell: still flagged after the other test's lesson

    def inspect(url: str) -> dict:
        with image.open("rb") as fh:
            r = httpx.post(
                f"{url}/inspect",
                data={"instruction": "find every anomaly", "line": "cellx"},
                files=[("files", (image.name, fh, "image/png"))],
                timeout=300,
            )
        assert r.status_code == 200, r.text
        return r.json()["images"][0]

    with running_server(home, "--kb", str(made["kb"])) as url:
        lines = {x["name"] for x in httpx.get(f"{url}/lines", timeout=30).json()}
        assert "cellx" in lines
        first = inspect(url)
        assert first["verdict"]["verdict"] != "pass"
        marked = httpx.post(f"{url}/lines/cellx/normal", json={"image_id": first["image_id"]}, timeout=300)
        assert marked.status_code == 200, marked.text
        assert marked.json()["patches_added"] > 0
        second = inspect(url)
        assert second["verdict"]["anomaly"]["score"] < first["verdict"]["anomaly"]["score"]
        assert second["verdict"]["models"]["anomaly"] != first["verdict"]["models"]["anomaly"]
        refused = httpx.post(f"{url}/lines/pcb/normal", json={"image_id": first["image_id"]}, timeout=30)
        assert refused.status_code == 409 and refused.json()["error"] == "no_anomaly_model"


def test_the_nightly_batch_runs_a_new_line_from_a_profile(made):
    home = made["home"]
    profile = home / "configs" / "profiles" / "cellx_nightly.yaml"
    profile.write_text(
        "name: cellx_nightly\nline: cellx\ninstructions:\n  - id: any\n    text: find every anomaly\n", encoding="utf-8"
    )
    out = home / "nightly"
    result = run(
        ["batch", "--profile", str(profile), str(made["data"] / "test"), "--out", str(out), "--kb", str(made["kb"])],
        home,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: a part failed the line's rules
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()]
    verdicts = [row["verdict"] for row in rows]  # ledger rows: key, run, instruction, image digest, the verdict
    assert len(verdicts) == 4 and all(v["line"] == "cellx" and v["anomaly"] is not None for v in verdicts)
    assert (out / "report.html").is_file()
