"""The LoRA-vs-full benchmark's bookkeeping: method names, the results table, combining runs (no training here)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_lora")


def _record(job_id: str, method: str, size, rank=None, map50=0.5, reference=True) -> dict:
    return {
        "id": job_id,
        "method": method,
        "rank": rank,
        "size": size,
        "n_train": 800 if size == "all" else size,
        "epochs": 10,
        "batch": 16,
        "imgsz": 320,
        "reference": reference,
        "base": "/m/battery_tab.pt",
        "map50": map50,
        "map50_95": map50 / 2,
        "miss_rate": 0.01,
        "false_alarm_rate": 0.02,
        "trainable_params": 149_000 if method == "lora" else 3_000_000,
        "base_params": 3_100_000,
        "file_bytes": 313_000,
        "epochs_run": 10,
        "truncated": False,
        "train_seconds": 100.0,
    }


def test_method_names_parse_and_typos_fail(bench):
    assert bench.parse_method("lora8_ref") == ("lora", 8, True, False)
    assert bench.parse_method("full") == ("full", None, False, False)
    assert bench.parse_method("lora4b_ref") == ("lora_bias", 4, True, False)
    assert bench.parse_method("lora4d_ref") == ("dora", 4, True, False)
    assert bench.parse_method("lora2h8_ref") == ("lora", 2, True, False)
    assert bench.head_rank_of("lora2h8_ref") == 8 and bench.head_rank_of("lora4_ref") is None
    assert bench.parse_method("head_ref_alt") == ("head", None, True, True)
    with pytest.raises(SystemExit, match="unknown method"):
        bench.parse_method("ful")
    with pytest.raises(SystemExit, match="unknown method"):
        bench.parse_method("lora4bd")


def test_table_orders_sizes_numerically_with_all_last(bench):
    records = [_record("a", "full", "all"), _record("b", "lora", 200, rank=4), _record("c", "head", 50)]
    rows = bench.markdown_table(records).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["50", "200", "800"]
    assert "lora4 +ref" in rows[1] and "4.8%" in rows[1]


def test_table_shows_both_val_geometries_and_the_first_stage(bench):
    rec = dict(_record("f", "full", "all"), map50_square=0.9662, map50_95_square=0.6307, init="/w/full_ref_nall.pt")
    old = _record("l", "lora", "all", rank=4)  # records written before the square protocol existed
    rows = bench.markdown_table([rec, old]).splitlines()
    assert "mAP50 (square)" in rows[0]
    full_row = next(r for r in rows if "full" in r)
    assert "0.9662" in full_row and "0.6307" in full_row and "continued from full_ref_nall.pt" in full_row
    lora_row = next(r for r in rows if "lora4" in r)
    assert lora_row.split("|")[5].strip() == "-"


def test_second_stage_finds_the_first_stages_file_or_says_which_is_missing(bench, tmp_path):
    (tmp_path / "full_ref_nall.pt").write_bytes(b"x")
    (tmp_path / "lora2_ref_nall_p3.safetensors").write_bytes(b"x")
    assert bench.first_stage_file(tmp_path, "full_ref", "all", "p3").name == "full_ref_nall.pt"
    assert bench.first_stage_file(tmp_path, "lora2_ref", "all", "p3").name == "lora2_ref_nall_p3.safetensors"
    with pytest.raises(SystemExit, match="lora2_ref_nall.safetensors not found"):
        bench.first_stage_file(tmp_path, "lora2_ref", "all")
    with pytest.raises(SystemExit, match="full_ref_n200.pt"):
        bench.first_stage_file(tmp_path, "full_ref", 200)


def test_combine_writes_one_table_and_refuses_mixed_settings(bench, tmp_path):
    def run(name, records, imgsz=320):
        path = tmp_path / name
        path.write_text(
            json.dumps(
                {
                    "base": "battery_tab.pt",
                    "imgsz": imgsz,
                    "device": "cpu",
                    "failed": [],
                    "wall_seconds": 10.0,
                    "command": name,
                    "records": records,
                }
            )
        )
        return path

    small = run("small.json", [_record("l4", "lora", 50, rank=4), _record("f", "full", 50)])
    large = run("all.json", [_record("l4a", "lora", "all", rank=4)])
    out = tmp_path / "lora.json"
    bench.combine_results([small, large], out)
    combined = json.loads(out.read_text())
    assert [r["id"] for r in combined["records"]] == ["l4", "f", "l4a"]
    assert combined["wall_seconds"] == 20.0
    table_rows = [ln for ln in out.with_suffix(".md").read_text().splitlines() if ln.startswith("| ")]
    assert len(table_rows) == 1 + 3  # header + one row per record

    other = run("640.json", [_record("x", "full", 50)], imgsz=640)
    with pytest.raises(SystemExit, match="imgsz"):
        bench.combine_results([small, other], tmp_path / "bad.json")
