"""The config a created line starts from (configs/lines/<line>.yaml): classes named after the example folders, zh + en
words seeded from configs/defect_words.yaml, prompts, the anomaly model; validated before it is written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from agent.images import collect_images
from defect_agent.config import LineConfig, load_line
from defect_agent.errors import ConfigError, EmptyInput
from defect_agent.files import atomic_write
from defect_agent.paths import configs_dir


def config_path(name: str) -> Path:
    return configs_dir() / "lines" / f"{name}.yaml"


def _class_name(folder: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", folder.strip().lower()).strip("_")
    if not name or not name[0].isalpha():
        raise ConfigError(f"example folder {folder!r} does not make a class name (letters, digits, _; a letter first)")
    return name


def defect_words() -> dict[str, list[str]]:
    path = configs_dir() / "defect_words.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): [str(w) for w in v] for k, v in data.items()}


def class_entry(name: str, words: dict[str, list[str]]) -> dict[str, Any]:
    spoken = name.replace("_", " ")
    en = list(dict.fromkeys([spoken, name, spoken + "s"]))
    zh = words.get(name, [])
    return {
        "name": name,
        "synonyms": {"en": en, "zh": zh},
        "description": {"en": [f"a {spoken} on the part"], "zh": [f"产品上有{zh[0]}"] if zh else []},
    }


def example_classes(examples: Path | None) -> dict[str, list[str]]:
    """class -> image paths, one class per sub-folder of `examples` (images directly in it are refused)."""
    if examples is None:
        return {}
    if not examples.is_dir():
        raise EmptyInput(f"--examples {examples}: not a folder (expected one sub-folder per defect class)")
    out: dict[str, list[str]] = {}
    for sub in sorted(p for p in examples.iterdir() if p.is_dir()):
        out.setdefault(_class_name(sub.name), []).extend(collect_images([sub]))
    if not out:
        raise EmptyInput(
            f"--examples {examples} holds no sub-folders: put each class's images in a folder named after it"
        )
    return out


def line_yaml(
    name: str, title: tuple[str, str], mm_per_px: float, classes: dict[str, list[str]], model: str
) -> dict[str, Any]:
    words = defect_words()
    zh_title, en_title = title
    return {
        "name": name,
        "title": {"en": [en_title], "zh": [zh_title]},
        "subject": {"en": ["part", "parts", en_title], "zh": ["产品", "工件", zh_title]},
        "calibration": {"mm_per_px": mm_per_px},
        "classes": [class_entry(c, words) for c in classes],
        "anomaly": {"model": model},
        "prompts": {
            "templates": {
                "en": ["a photo of {state} {object}", "an inspection image of {state} {object}"],
                "zh": ["{state}{object}的照片"],
            },
            "object_name": {"en": [en_title], "zh": [zh_title]},
            "normal_states": {"en": ["a clean", "a flawless", "a normal"], "zh": ["正常的", "完好的"]},
            "defect_states": {"en": ["a damaged", "a defective"], "zh": ["有缺陷的", "损坏的"]},
        },
    }


def write_config(name: str, data: dict[str, Any], header: str) -> Path:
    LineConfig.model_validate(data)  # never write a config `load_line` would refuse
    path = config_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)
    atomic_write(path, text.encode("utf-8"))
    load_line.cache_clear()
    return path


def title_pair(title: str | None, name: str) -> tuple[str, str]:
    """`--title "中文/English"` -> (zh, en); either half may be left out."""
    spoken = name.replace("_", " ")
    if not title:
        return spoken, spoken
    zh, sep, en = title.partition("/")
    zh, en = zh.strip(), en.strip()
    if not sep:
        return (zh, spoken) if re.search(r"[\u4e00-\u9fff]", zh) else (spoken, zh)
    return zh or spoken, en or spoken


def header_of(path: Path) -> str:
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not text.startswith("#"):
            break
        lines.append(text)
    return "".join(lines)
