"""A real `defect-agent serve` on loopback for the API and browser tests: a scratch project home (the real configs
and models linked in, its own `configs/default.yaml` with the limits a test wants, its own `var/`), started as a
subprocess and waited for on /health."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest_socket
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_home(base: Path, **overrides: dict) -> Path:
    """A project root whose configs/default.yaml carries `overrides` (e.g. limits={...}); lines and models linked."""
    home = base / "home"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "lines").symlink_to(ROOT / "configs" / "lines")
    for name in ("lexicon.yaml", "lora_ranks.yaml"):
        (home / "configs" / name).symlink_to(ROOT / "configs" / name)
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    (home / "configs" / "default.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (home / "models").symlink_to(ROOT / "models")
    return home


def battery_cells(folder: Path, n: int = 3, seed: int = 2030) -> list[Path]:
    from vision.datasets.synth.battery_tab import generate_batch

    return [Path(p) for p in generate_batch(folder, n=n, seed=seed)]


@contextmanager
def running_server(home: Path, *args: str, token: str | None = None, timeout: float = 90.0):
    """`defect-agent serve --port P …` as a subprocess; yields its base URL; stops it afterwards."""
    pytest_socket.enable_socket()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECT_AGENT")}
    env.update(DEFECT_AGENT_HOME=str(home), DEFECT_AGENT_THREADS="2", PYTHONPATH=str(ROOT))
    if token:
        env["DEFECT_AGENT_TOKEN"] = token
    exe = Path(sys.prefix) / "bin" / "defect-agent"
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), *args], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (home / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"server did not start: {log_text}") from exc
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def png_bytes(image) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def copy_into(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in paths]
