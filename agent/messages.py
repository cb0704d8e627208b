"""Words the operator reads, in the operator's language (zh / en): reasons, measurement labels and class names.

One table of message templates per language, so a Chinese instruction gets Chinese reasons and an English one
English; class names come from the line's own synonyms (what the operators of that line call them)."""

from __future__ import annotations

from defect_agent.config import ClassSpec, DerivedDefect, LineConfig

LANGS = ("en", "zh")

_MESSAGES: dict[str, dict[str, str]] = {
    "rejects": {
        "en": "{name} (p={p:.2f}) rejects the part: {detail}",
        "zh": "{name}（置信度 {p:.2f}）判定不合格：{detail}",
    },
    "class_rejects": {
        "en": "this defect class rejects on this line",
        "zh": "本产线该缺陷类别一律判不合格",
    },
    "over_limit": {"en": "{what} > limit {limit:g} mm", "zh": "{what}，超过限值 {limit:g} mm"},
    "near_limit": {
        "en": "{what} within {margin:g} mm of the limit {limit:g} mm",
        "zh": "{what}，距限值 {limit:g} mm 不足 {margin:g} mm",
    },
    "near_limit_uncertain": {
        "en": "{what}: the limit {limit:g} mm lies within its uncertainty",
        "zh": "{what}：限值 {limit:g} mm 落在测量不确定度之内",
    },
    "bound_uncertain": {
        "en": "{what}: the bound {bound} lies within its uncertainty, a person should measure",
        "zh": "{what}：界限 {bound} 落在测量不确定度之内，需人工测量",
    },
    "near": {
        "en": "{name} at the limit, a person should measure: {detail}",
        "zh": "{name}处于限值边缘，需人工复核：{detail}",
    },
    "unexplained_anomaly": {
        "en": "{name} (p={p:.2f}): a region unlike the line's normal parts that no trained defect class explains: "
        "a person should look",
        "zh": "{name}（置信度 {p:.2f}）：与正常产品不同、且不属于任何已训练缺陷类别的区域，需人工复核",
    },
    "uncertain_finding": {
        "en": "{name} uncertain (p={p:.2f} in the review band {low:g}-{high:g}): a person should look",
        "zh": "{name}不确定（置信度 {p:.2f} 位于复核区间 {low:g}-{high:g}），需人工复核",
    },
    "unmeasured": {
        "en": "{name} found but {keys} could not be measured: a person should measure",
        "zh": "发现{name}，但无法测量 {keys}，需人工测量",
    },
    "part_ok": {
        "en": "no finding rejects the part under the {line} line's acceptance rules",
        "zh": "按 {line} 产线验收规则，无不合格项",
    },
    "not_inspected": {"en": "image not inspected: {error}", "zh": "图像未检测：{error}"},
    "clause": {
        "en": "{id} [{label}] {state} (p={p:.2f}): {detail}",
        "zh": "{id}【{label}】{state}（p={p:.2f}）：{detail}",
    },
    "met": {"en": "met", "zh": "满足"},
    "uncertain": {"en": "uncertain", "zh": "不确定"},
    "not_met": {"en": "not met", "zh": "不满足"},
    "none_found": {"en": "no {what} found", "zh": "未发现{what}"},
    "any_defect": {"en": "defect", "zh": "缺陷"},
    "yes": {"en": "matches", "zh": "符合指令"},
    "no": {"en": "does not match", "zh": "不符合指令"},
    "uncertain_suffix": {"en": " (uncertain: a person should confirm)", "zh": "（不确定，需人工确认）"},
    "query_result": {
        "en": "{logic} -> score {score:.2f} (review band {low:g}-{high:g}): {answer}",
        "zh": "{logic} -> 得分 {score:.2f}（复核区间 {low:g}-{high:g}）：{answer}",
    },
    "table_title": {"en": "{n} images", "zh": "共 {n} 张图像"},
    "col_image": {"en": "image", "zh": "图像"},
    "col_verdict": {"en": "part", "zh": "判定"},
    "col_why": {"en": "why (line rules)", "zh": "原因（产线规则）"},
    "col_match": {"en": "instruction", "zh": "指令"},
    "col_clause": {"en": "deciding clause", "zh": "决定条件"},
    "col_defects": {"en": "defects", "zh": "缺陷"},
    "verdict_pass": {"en": "pass", "zh": "合格"},
    "verdict_fail": {"en": "fail", "zh": "不合格"},
    "verdict_review": {"en": "review", "zh": "复核"},
    "match_yes": {"en": "match", "zh": "符合"},
    "match_no": {"en": "no match", "zh": "不符合"},
    "table_counts": {
        "en": "fail {fail}  review {review}  pass {ok}  matching the instruction: {matching}  unreadable: {unreadable}",
        "zh": "不合格 {fail}  复核 {review}  合格 {ok}  符合指令: {matching}  无法读取: {unreadable}",
    },
    "table_title_many": {"en": "{n} images x {m} instructions", "zh": "共 {n} 张图像 x {m} 条指令"},
    "col_query": {"en": "#", "zh": "指令号"},
    "table_counts_many": {
        "en": "fail {fail}  review {review}  pass {ok}  unreadable: {unreadable}  matching each instruction: {matching}",
        "zh": "不合格 {fail}  复核 {review}  合格 {ok}  无法读取: {unreadable}  各指令符合数: {matching}",
    },
    "legend_fail": {"en": "rejects the part", "zh": "判不合格"},
    "legend_review": {"en": "review", "zh": "需复核"},
    "legend_pass": {"en": "within limits", "zh": "在限值内"},
    "legend_faint": {"en": "below reporting threshold", "zh": "低于报告阈值"},
    "also_found": {"en": "also found, not asked: {items}", "zh": "另发现（指令未问及）：{items}"},
}

_MEASUREMENT_NAMES: dict[str, dict[str, str]] = {
    "offset_mm": {"en": "offset", "zh": "偏移"},
    "length_mm": {"en": "length", "zh": "长度"},
    "width_mm": {"en": "width", "zh": "宽度"},
    "area_mm2": {"en": "area", "zh": "面积"},
}


def pick_lang(lang: str | None) -> str:
    """A supported language code: `zh` for any Chinese variant, else `en`."""
    return "zh" if lang and lang.lower().startswith("zh") else "en"


def say(key: str, lang: str, **fields: object) -> str:
    """The message `key` in `lang` with its fields filled in."""
    table = _MESSAGES[key]
    return table.get(pick_lang(lang), table["en"]).format(**fields)


def class_label(name: str, line: LineConfig | None, lang: str) -> str:
    """What the line's operators call a class in `lang` (its first synonym), else the class name."""
    if line is not None:
        specs: list[ClassSpec | DerivedDefect] = [*line.classes, *line.derived]
        for spec in specs:
            if spec.name == name:
                words = spec.synonyms.zh if pick_lang(lang) == "zh" else spec.synonyms.en
                if words:
                    return words[0]
    return name.replace("_", " ")


def shown_measurements(measurements: dict[str, float]) -> dict[str, float]:
    """The measurements an operator reads (offset, length, width, area), without internal components."""
    return {k: v for k, v in measurements.items() if k in _MEASUREMENT_NAMES}


def measurement_text(key: str, value: float, lang: str, uncertainty: float | None = None) -> str:
    """`offset 0.37 mm` / `偏移 0.37 mm`, or with its uncertainty `length 2.31 ± 0.08 mm`: a measurement as an
    operator reads it."""
    names = _MEASUREMENT_NAMES.get(key)
    label = names.get(pick_lang(lang), names["en"]) if names else key
    unit = "mm²" if key.endswith("mm2") else ("mm" if key.endswith("_mm") else "")
    plus_minus = f" ± {uncertainty:.2f}" if uncertainty else ""
    return f"{label} {value:.2f}{plus_minus} {unit}".rstrip()


def measurements_text(measurements: dict[str, float], uncertainty: dict[str, float], lang: str) -> str:
    """The shown measurements of a finding, each with its ± where one is known, comma-separated."""
    return ", ".join(
        measurement_text(k, v, lang, uncertainty.get(k)) for k, v in shown_measurements(measurements).items()
    )
