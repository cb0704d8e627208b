"""Texts paired with crops for contrastive training, in English and Chinese, built from the line configs
(classes[].description, classes[].synonyms, prompts.object_name, prompts.*_states) and a few sentence templates.

Every text carries the set of crop kinds it describes (e.g. `pcb/short`); a class-specific sentence describes one
kind, a WinCLIP-style state prompt ("a photo of a damaged printed circuit board") describes every defect kind of its
line, a normal-state prompt every normal kind. Training treats all texts whose set holds a crop's kind as
positives of that crop."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from defect_agent.config import LineConfig

NORMAL = "normal"

EN_CLASS_TEMPLATES = (
    "{syn}",
    "a close-up of {syn} on a {obj}",
    "an inspection crop showing {syn}",
    "a {obj} with {syn}",
    "a photo of {syn} on the {obj}",
    "defect: {syn}",
)
ZH_CLASS_TEMPLATES = (
    "{syn}",
    "{obj}上有{syn}",
    "{obj}局部有{syn}",
    "{syn}的特写",
    "有{syn}的{obj}",
    "缺陷：{syn}",
)
EN_NORMAL_TEMPLATES = (
    "a defect-free {obj}",
    "a {obj} with no defects",
    "a normal section of a {obj}",
    "no defect on the {obj}",
)
ZH_NORMAL_TEMPLATES = ("无缺陷的{obj}", "{obj}没有缺陷", "{obj}的正常区域", "正常的{obj}")

# Normal crop kinds that a line's generator or dataset yields beyond a generic "normal": kind -> (en, zh) sentences.
NORMAL_KINDS: dict[str, dict[str, dict[str, list[str]]]] = {
    "battery_tab": {
        "normal_weld": {
            "en": [
                "a normal weld zone with an even knurled pattern",
                "a good ultrasonic weld with regular dimples",
                "an intact weld nugget on the tab",
                "a clean tab weld",
            ],
            "zh": ["正常的焊接区，纹路均匀", "焊点完好，压花规则", "极耳上完好的焊点", "干净的极耳焊接区"],
        },
        "normal_tab": {
            "en": [
                "a clean brushed metal tab surface",
                "a smooth and undamaged tab",
                "a flawless electrode tab",
                "bare tab metal with no marks",
            ],
            "zh": ["干净的极耳金属表面", "光滑无损的极耳", "完好的极耳", "没有痕迹的极耳表面"],
        },
    },
    "pcb": {
        NORMAL: {
            "en": [
                "a defect-free pcb crop with intact copper traces",
                "clean copper traces on a circuit board",
                "a good section of a printed circuit board",
                "traces and pads without defects",
            ],
            "zh": ["完好的电路板局部", "铜线完整无缺陷的电路板", "正常的印刷电路板区域", "没有缺陷的线路和焊盘"],
        },
    },
}


@dataclass(frozen=True)
class TextItem:
    """One training sentence for the embedder: its language, line, the crop kinds it describes and its role."""

    text: str
    lang: str  # "en" | "zh"
    line: str
    kinds: frozenset[str]  # crop kinds ("<line>/<kind>") this text describes
    role: str  # "class" | "normal" | "state"


@dataclass
class LineTexts:
    """A line's crop kinds (defect and normal) and all training texts describing them."""

    line: str
    defect_kinds: list[str]
    normal_kinds: list[str]
    items: list[TextItem] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [*self.defect_kinds, *self.normal_kinds]


def kind_key(line: str, kind: str) -> str:
    return f"{line}/{kind}"


def state_prompts(line: LineConfig, normal: bool) -> dict[str, list[str]]:
    """WinCLIP prompt ensemble: templates x states x object names, per language."""
    p = line.prompts
    states = p.normal_states if normal else p.defect_states
    out: dict[str, list[str]] = {}
    for lang in ("en", "zh"):
        templates = getattr(p.templates, lang)
        objects = getattr(p.object_name, lang) or getattr(line.subject, lang)[:1]
        texts = [
            t.format(state=s, object=o) for t, s, o in itertools.product(templates, getattr(states, lang), objects)
        ]
        out[lang] = list(dict.fromkeys(" ".join(t.split()) if lang == "en" else t for t in texts))
    return out


def class_texts(line: LineConfig, class_name: str) -> dict[str, list[str]]:
    """Sentences naming one defect class: its config descriptions plus synonyms set in templates."""
    spec = line.class_spec(class_name)
    out: dict[str, list[str]] = {}
    for lang, templates in (("en", EN_CLASS_TEMPLATES), ("zh", ZH_CLASS_TEMPLATES)):
        syns = getattr(spec.synonyms, lang) or ([class_name.replace("_", " ")] if lang == "en" else [])
        objects = getattr(line.prompts.object_name, lang) or getattr(line.subject, lang)[:1] or [""]
        texts = list(getattr(spec.description, lang))
        for template, syn, obj in itertools.product(templates, syns, objects[:2]):
            texts.append(template.format(syn=syn, obj=obj))
        out[lang] = list(dict.fromkeys(" ".join(t.split()) for t in texts if t.strip()))
    return out


def normal_texts(line: LineConfig, kind: str = NORMAL) -> dict[str, list[str]]:
    """Sentences for a normal crop kind: the line's own (NORMAL_KINDS) or generic templates."""
    special = NORMAL_KINDS.get(line.name, {}).get(kind)
    out: dict[str, list[str]] = {}
    for lang, templates in (("en", EN_NORMAL_TEMPLATES), ("zh", ZH_NORMAL_TEMPLATES)):
        objects = getattr(line.prompts.object_name, lang) or getattr(line.subject, lang)[:1] or [""]
        generic = [t.format(obj=o) for t, o in itertools.product(templates, objects)]
        out[lang] = list(dict.fromkeys([*(special[lang] if special else []), *generic]))
    return out


def line_texts(line: LineConfig, normal_kinds: list[str] | None = None) -> LineTexts:
    """All training texts of a line. `normal_kinds` defaults to the line's NORMAL_KINDS keys, else ["normal"]."""
    normal_kinds = normal_kinds or list(NORMAL_KINDS.get(line.name, {NORMAL: None}))
    defect_kinds = [c.name for c in line.classes if c.role == "defect"]
    lt = LineTexts(line=line.name, defect_kinds=defect_kinds, normal_kinds=normal_kinds)
    seen: set[tuple[str, str]] = set()

    def add(text: str, lang: str, kinds: list[str], role: str) -> None:
        if (text, lang) in seen:
            return
        seen.add((text, lang))
        lt.items.append(TextItem(text, lang, line.name, frozenset(kind_key(line.name, k) for k in kinds), role))

    for name in defect_kinds:
        for lang, texts in class_texts(line, name).items():
            for t in texts:
                add(t, lang, [name], "class")
    for kind in normal_kinds:
        for lang, texts in normal_texts(line, kind).items():
            for t in texts:
                add(t, lang, [kind], "normal")
    for normal, kinds in ((False, defect_kinds), (True, normal_kinds)):
        for lang, texts in state_prompts(line, normal).items():
            for t in texts:
                add(t, lang, kinds, "state")
    return lt
