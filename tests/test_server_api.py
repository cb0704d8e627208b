"""The station's HTTP API against a real `defect-agent serve` on loopback: what line software calls, the bad inputs
a shop floor sends (each a JSON 4xx, never a 5xx), the token, the limits and the capture root; then schemathesis
over the OpenAPI document: every generated request answered without a server error."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from server_support import battery_cells, copy_into, png_bytes, running_server, scratch_home

pytestmark = pytest.mark.enable_socket

LIMITS = {"max_upload_mb": 1.0, "max_image_pixels": 2_000_000, "max_files_per_request": 4}


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    base = tmp_path_factory.mktemp("station")
    home = scratch_home(base, limits=LIMITS)
    cells = battery_cells(base / "cells", n=3)
    captured = copy_into(cells[:1], base / "capture" / "cam1")
    (base / "outside.png").write_bytes(cells[0].read_bytes())
    with running_server(home, "--capture-root", str(base / "capture")) as url:
        with httpx.Client(base_url=url, timeout=300) as client:
            yield {"client": client, "cells": cells, "captured": captured, "base": base, "url": url}


def upload(path) -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (path.name, path.read_bytes(), "image/png"))


def test_health_and_lines(station):
    c = station["client"]
    assert c.get("/health").json()["status"] == "ok"
    lines = {line["name"]: line for line in c.get("/lines").json()}
    assert {"battery_tab", "pcb"} <= set(lines)
    assert any("焊渣飞溅" in t["zh"] for t in lines["battery_tab"]["terms"])


def test_inspect_uploads_and_a_captured_path(station):
    c = station["client"]
    r = c.post(
        "/inspect",
        data={"instruction": "找出有焊渣飞溅的电芯", "paths": ["cam1/" + station["captured"][0].name]},
        files=[upload(p) for p in station["cells"][1:]],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["language"] == "zh" and len(body["images"]) == 3
    for item in body["images"]:
        v = item["verdict"]
        assert v["verdict"] in {"pass", "fail", "review"} and isinstance(v["matches_query"], bool)
        assert v["schema_version"] == "2.0" and "server" not in item["name"]
        assert c.get(f"/images/{item['image_id']}").status_code == 200
    assert sum(body["counts"][k] for k in ("fail", "review", "pass")) == 3


def test_a_broken_upload_gets_its_own_verdict_and_the_rest_are_judged(station):
    c = station["client"]
    r = c.post(
        "/inspect",
        data={"instruction": "find cells with weld spatter"},
        files=[("files", ("torn.png", b"not an image", "image/png")), upload(station["cells"][0])],
    )
    assert r.status_code == 200
    first, second = r.json()["images"]
    assert first["verdict"]["error"] and "torn.png" in first["verdict"]["error"]
    assert "/server/" not in first["verdict"]["error"]  # no storage path leaks
    assert second["verdict"]["error"] is None


BAD_REQUESTS = [
    ("no images", {"data": {"instruction": "find cells with spatter"}}, 422, "no_images"),
    ("unknown word", {"data": {"instruction": "find cells with blorps"}, "files": "cell"}, 422, "bad_instruction"),
    ("empty instruction", {"data": {"instruction": ""}, "files": "cell"}, 422, "invalid_request"),
    ("unknown line", {"data": {"instruction": "find spatter", "line": "nope"}, "files": "cell"}, 404, "unknown_line"),
    ("bad lang", {"data": {"instruction": "find spatter", "lang": "fr"}, "files": "cell"}, 422, "invalid_request"),
    ("path escapes", {"data": {"instruction": "find spatter", "paths": "../outside.png"}}, 403, "outside_capture_root"),
    (
        "absolute path outside",
        {"data": {"instruction": "find spatter", "paths": "/etc/passwd"}},
        403,
        "outside_capture_root",
    ),
    ("missing path", {"data": {"instruction": "find spatter", "paths": "cam1/none.png"}}, 404, "not_found"),
    ("too many files", {"data": {"instruction": "find spatter"}, "files": "five"}, 413, "too_many"),
    ("too large", {"data": {"instruction": "find spatter"}, "files": "big"}, 413, "too_large"),
    ("too many pixels", {"data": {"instruction": "find spatter"}, "files": "wide"}, 413, "too_many_pixels"),
]


@pytest.mark.parametrize("name,request_kwargs,status,kind", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_inspect_requests_get_json_4xx(station, name, request_kwargs, status, kind):
    c = station["client"]
    cell = station["cells"][0]
    kwargs = dict(request_kwargs)
    files = {
        "cell": [upload(cell)],
        "five": [upload(cell)] * 5,
        "big": [("files", ("big.png", b"\x89PNG" + bytes(1_200_000), "image/png"))],
        "wide": [("files", ("wide.png", png_bytes(np.zeros((1000, 2500), np.uint8)), "image/png"))],
    }.get(kwargs.pop("files", ""), None)
    r = c.post("/inspect", files=files, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and body["detail"]


def test_cases_save_find_show_and_their_bad_inputs(station):
    c = station["client"]
    r = c.post("/inspect", data={"instruction": "find cells with weld spatter"}, files=[upload(station["cells"][0])])
    item = r.json()["images"][0]
    box = {"x1": 10, "y1": 10, "x2": 60, "y2": 50}
    body = {
        "line": "battery_tab",
        "defect_class": "焊渣",  # a synonym: stored under the canonical name
        "image_id": item["image_id"],
        "box": box,
        "disposition": "rework",
        "report": "api test: beads beside the weld",
    }
    saved = c.post("/cases", json=body)
    assert saved.status_code == 201, saved.text
    case = saved.json()["case"]
    assert case["defect_class"] == "spatter"
    assert c.get(f"/cases/{case['id']}").json()["case"]["report"] == body["report"]
    assert c.get(f"/cases/{case['id']}/image").headers["content-type"].startswith("image/")
    hits = c.get("/cases/search", params={"text": "beads beside the weld", "k": 3}).json()["hits"]
    assert hits and hits[0]["case_id"] == case["id"]
    assert c.get("/cases/search", params={"case_id": case["id"]}).status_code == 200
    bad = [
        ({**body, "defect_class": "blorp"}, 422, "unknown_class"),
        ({**body, "line": "nope"}, 404, "unknown_line"),
        ({**body, "image_id": "0" * 64}, 404, "not_found"),
        ({**body, "box": {"x1": 10, "y1": 10, "x2": 5000, "y2": 50}}, 422, "invalid_box"),
        ({**body, "disposition": "burn it"}, 422, "invalid_request"),
    ]
    for payload, status, kind in bad:
        r = c.post("/cases", json=payload)
        assert (r.status_code, r.json()["error"]) == (status, kind), payload
    nan = json.dumps({**body, "measurements": {"length_mm": math.nan}}, allow_nan=True)
    r = c.post("/cases", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] in {"invalid_measurement", "invalid_request"}
    assert c.get("/cases/999999").status_code == 404
    assert c.get("/cases/search").status_code == 422
    assert c.get("/cases/search", params={"text": "x", "case_id": 1}).status_code == 422
    assert c.get("/images/not-a-hash").status_code == 404
    assert c.get("/cases/abc").status_code == 422


def test_the_token_guards_every_api_call_and_is_required_beyond_loopback(tmp_path):
    from agent.server import check_bind
    from defect_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    home = scratch_home(tmp_path)
    with running_server(home, token="s3cret") as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/health").status_code == 200  # liveness stays open for the plant's monitoring
            r = c.get("/lines")
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            assert c.get("/lines", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/lines", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/lines", headers={"X-API-Token": "s3cret"}).status_code == 200


def test_schemathesis_finds_no_server_error(station):
    """Property-based requests from the OpenAPI document: no 5xx and every answer matches its declared schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{station['url']}/openapi.json")
    calls: list[str] = []
    failures: list[str] = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(base_url=station["url"], timeout=120)
            calls.append(f"{case.method} {case.path}")
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        run()
    print(f"schemathesis: {len(calls)} generated requests over {len(set(calls))} operations")
    assert len(calls) >= 100
    assert not failures, failures[:5]
