"""How the parser reads what operators actually type (issue 21), one test per phrasing kind of the paraphrase set,
in both languages where the kind exists in both: colloquial and material names, -子 / -儿 forms, particles,
measure words, traditional characters, full-width text, Chinese numerals, correlatives, nested negation, parts
before a negated defect, 除了… / "except", comparison words, abbreviations, plurals, typos, function words skipped
with a note (and the words never skipped), jieba's lazy load."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from agent.parser import (
    AmbiguousQueryError,
    UnknownTermError,
    UnsupportedQueryError,
    format_logic,
    parse_instruction,
    read_instruction,
)
from agent.parser.lexicon import Lexicon
from agent.parser.tokenizer import parse_zh_numeral
from agent.query import InspectionQuery
from defect_agent.paths import project_root

TODAY = dt.date(2025, 6, 2)


def _p(text: str, line: str | None = None) -> InspectionQuery:
    return parse_instruction(text, line=line, today=TODAY)


def _read(text: str, line: str | None = None) -> tuple[list[str], str, list[str]]:
    """(classes, logic, notes) of a parse."""
    r = read_instruction(text, line=line, today=TODAY)
    return [c.defect_class or "any" for c in r.query.conditions], format_logic(r.query.logic), r.notes


def _classes(text: str, line: str | None = None) -> list[str]:
    return _read(text, line)[0]


@pytest.mark.parametrize(
    "text, line, cls",
    [
        ("有焊珠的电芯", "battery_tab", "spatter"),
        ("把烧黑的电芯都找出来", "battery_tab", "burn"),
        ("焊歪了的电芯挑出来", "battery_tab", "weld_offset"),
        ("假焊的电芯", "battery_tab", "missing_weld"),
        ("板子上有砂眼", "pcb", "pin_hole"),
        ("线路板上的铜渣", "pcb", "copper"),
        ("cells with spatter balls", "battery_tab", "spatter"),
        ("scorched cells", "battery_tab", "burn"),
        ("stray copper on the board", "pcb", "copper"),
        ("boards with bridged traces", "pcb", "short"),
    ],
)
def test_colloquial_and_material_names_name_their_class(text, line, cls):
    q = _p(text)
    assert (q.line, [c.defect_class for c in q.conditions]) == (line, [cls])


def test_suffix_forms_read_as_the_word_with_a_note():
    # a class or subject word + 子 / 儿, and the last character of one class's word + 子 / 儿
    assert _read("焊渣子超过三处的电芯")[:2] == (["spatter"], "c1")
    assert _p("焊渣子超过三处的电芯").conditions[0].count.value == 3
    assert _read("有针眼儿的板子") == (["pin_hole"], "c1", ["read '针眼儿' as '针眼' (pin_hole)"])
    assert _read("有渣子的电芯")[2] == ["read '渣子' as '焊渣' (spatter)"]
    assert _classes("极耳上有缝子的") == ["crack"] and _p("极耳上有缝子的").conditions[0].region == "tab"
    assert _classes("有口子的板子") == ["mousebite"] and _p("有口子的板子").line == "pcb"
    assert _read("渣子和缝子都有的电芯")[:2] == (["spatter", "crack"], "and(c1,c2)")
    # 路 ends both 断路 (open) and 短路 (short): 路子 names no class
    with pytest.raises(UnknownTermError):
        _p("有路子的板子")
    # English has no such suffix; its plural is read instead
    assert _classes("cells with spatters") == ["spatter"]


@pytest.mark.parametrize(
    "text, cls",
    [
        ("看看有没有裂纹吧", "crack"),
        ("有焊渣的电芯呢", "spatter"),
        ("裂纹超过两处的电芯啊", "crack"),
        ("有没有漏焊的呀", "missing_weld"),
        ("烧焦了吧", "burn"),
        ("板子开路了没有", "open"),
        ("pls flag cells with burns asap", "burn"),
        ("Hey, can you pull all cells w/ cracks? thx", "crack"),
    ],
)
def test_particles_and_chat_words_are_dropped(text, cls):
    assert _classes(text) == [cls]


def test_measure_words_count_defects_not_the_item():
    assert _p("三颗以上的焊渣").conditions[0].count.model_dump() == {"op": ">=", "value": 3}
    assert _p("有好几处焊渣的电芯").conditions[0].count.model_dump() == {"op": ">=", "value": 2}
    assert _p("有俩裂纹").conditions[0].count.model_dump() == {"op": ">=", "value": 2}
    # 一个电芯上 / 一片板子上 count the inspected item, not the defect
    assert _p("一个电芯上焊渣超过五颗").conditions[0].count.model_dump() == {"op": ">", "value": 5}
    assert _p("一片板子上短路超过两处").conditions[0].count.model_dump() == {"op": ">", "value": 2}
    assert _p("spatter >= 3 pcs").conditions[0].count.model_dump() == {"op": ">=", "value": 3}
    assert _p("more than 5 spatter particles").conditions[0].count.model_dump() == {"op": ">", "value": 5}


def test_traditional_characters_are_read_and_quoted_as_typed():
    q = _p("極耳焊接偏移超過0.3mm的電芯")
    assert (q.conditions[0].defect_class, q.conditions[0].constraints[0].value) == ("weld_offset", 0.3)
    assert q.conditions[0].text == "極耳焊接偏移超過0.3mm"  # clause texts quote the operator's characters
    assert _read("沒有裂紋也沒有燒傷的電芯")[:2] == (["crack", "burn"], "and(not(c1),not(c2))")
    assert _classes("漏銲的電芯") == ["missing_weld"]  # 銲: the variant OpenCC keeps, read as 焊
    assert _p("昨天的板子裡有針孔的").scope.date == TODAY - dt.timedelta(days=1)
    with pytest.raises(UnknownTermError) as err:
        _p("有燒商的電芯")
    assert err.value.words[0].word == "燒商" and err.value.words[0].suggestions[0] == "烧伤"


@pytest.mark.parametrize(
    "text, measure, op, value",
    [
        ("偏移超过０．３ｍｍ的电芯", "offset", ">", 0.3),
        ("焊渣面积≥０.５ｍｍ²", "area", ">=", 0.5),
        ("针孔直径＜０．２ｍｍ的电路板", "length", "<", 0.2),
        ("offset ＞ ０.３ｍｍ", "offset", ">", 0.3),
        ("spatter area ＞ ０.５ ｍｍ²", "area", ">", 0.5),
    ],
)
def test_full_width_digits_units_and_comparators(text, measure, op, value):
    (k,) = _p(text).conditions[0].constraints
    assert (k.measure, k.op.value, k.value) == (measure, op, value)


def test_chinese_numerals_up_to_thousands():
    c = Lexicon.load().counts
    zh = (c.zh_digits, c.zh_multipliers, c.zh_decimal_point)
    cases = {"两": 2, "十二": 12, "二十": 20, "一百零五": 105, "三百": 300, "一千二百": 1200, "两千": 2000,
             "零点三": 0.3, "零点一五": 0.15}  # fmt: skip
    assert {t: parse_zh_numeral(t, *zh) for t in cases} == cases
    # spoken short forms: a last digit right after 百 / 千 is the next unit down
    assert [parse_zh_numeral(t, *zh) for t in ("一千二", "三百五", "两百五")] == [1200, 350, 250]
    k = _p("裂纹长度超过一千二百微米").conditions[0].constraints[0]
    assert (k.value, k.raw_value, k.unit) == (1.2, 1200, "um")
    assert _p("偏移超过两百五十微米").conditions[0].constraints[0].value == 0.25
    # English number words
    assert _p("offset more than twelve pixels").conditions[0].constraints[0].value == pytest.approx(0.3)


@pytest.mark.parametrize(
    "text, classes, logic",
    [
        ("既有裂纹又有烧伤的电芯", ["crack", "burn"], "and(c1,c2)"),
        ("既没有裂纹也没有烧伤的电芯", ["crack", "burn"], "and(not(c1),not(c2))"),
        ("既不能有焊渣，也不能有裂纹", ["spatter", "crack"], "and(not(c1),not(c2))"),
        ("不是裂纹就是烧伤的电芯", ["crack", "burn"], "or(c1,c2)"),
        ("要么断路要么短路", ["open", "short"], "or(c1,c2)"),
        ("不仅有裂纹而且有烧伤", ["crack", "burn"], "and(c1,c2)"),
        ("无论是裂纹还是烧伤都要标出来", ["crack", "burn"], "or(c1,c2)"),
        ("板子上毛刺和残铜都没有的", ["spur", "copper"], "not(or(c1,c2))"),
        ("有焊渣，裂纹和烧伤都没有", ["spatter", "crack", "burn"], "and(c1,not(or(c2,c3)))"),
        ("both a missing weld and a burn", ["missing_weld", "burn"], "and(c1,c2)"),
        ("either shorts or opens", ["short", "open"], "or(c1,c2)"),
        ("neither a crack nor a burn", ["crack", "burn"], "and(not(c1),not(c2))"),
        ("not only cracks but also burns", ["crack", "burn"], "and(c1,c2)"),
        ("whether cracked or burnt", ["crack", "burn"], "or(c1,c2)"),
    ],
)
def test_correlatives(text, classes, logic):
    assert _read(text)[:2] == (classes, logic)


def test_except_reads_every_other_defect_and_besides_reads_both():
    # battery_tab's anomaly model makes an unexplained region a defect of its own: "every other" includes it
    bt_others = ["crack", "burn", "anomaly", "weld_offset", "missing_weld"]
    assert _read("除了焊渣以外的缺陷都标出来")[:2] == (bt_others, "or(c1,c2,c3,c4,c5)")
    assert _read("除了针孔，其他缺陷都要找出来")[:2] == (
        ["open", "short", "mousebite", "spur", "copper"],
        "or(c1,c2,c3,c4,c5)",
    )
    assert _read("all defects other than spatter")[:2] == (bt_others, "or(c1,c2,c3,c4,c5)")
    assert _read("any defect except pinholes")[1] == "or(c1,c2,c3,c4,c5)"
    # a negation before it covers every other defect: only spatter, if any
    assert _read("没有除了焊渣以外的缺陷")[1] == "not(or(c1,c2,c3,c4,c5))"
    assert _read("除了裂纹还有烧伤的电芯")[:2] == (["crack", "burn"], "and(c1,c2)")
    # "except" after a defect word says something no query holds: still an unknown word, with a hint
    with pytest.raises(UnknownTermError) as err:
        _p("find cells with cracks except burns")
    assert err.value.unknown == ["except"] and "any defect" in err.value.words[0].hint
    with pytest.raises(UnknownTermError):
        _p("焊点以外的裂纹")
    with pytest.raises(UnsupportedQueryError):
        _p("除了针孔以外长度超过1mm的缺陷")


@pytest.mark.parametrize(
    "text, classes, logic",
    [
        ("不是没有焊渣的电芯", ["spatter"], "c1"),
        ("并不是没有裂纹", ["crack"], "c1"),
        ("cells that are not crack-free", ["crack"], "c1"),
        ("cells not without spatter", ["spatter"], "c1"),
        ("boards not free of pinholes", ["pin_hole"], "c1"),
        ("不是没有短路的板子", ["short"], "c1"),
        ("cells that don't have cracks", ["crack"], "not(c1)"),
        ("boards that aren't shorted", ["short"], "not(c1)"),
        ("没有焊渣但有裂纹", ["spatter", "crack"], "and(not(c1),c2)"),
    ],
)
def test_nested_negations_cancel_in_pairs(text, classes, logic):
    assert _read(text)[:2] == (classes, logic)


@pytest.mark.parametrize(
    "text, cls, region",
    [
        ("焊点没有偏移的电芯", "weld_offset", "weld"),
        ("极耳上不能有裂纹", "crack", "tab"),
        ("tabs w/o burns", "burn", "tab"),
        ("the weld isn't offset", "weld_offset", "weld"),
        ("tabs with no burn marks", "burn", "tab"),
    ],
)
def test_a_part_before_a_negated_defect_is_where_it_is_not(text, cls, region):
    q = _p(text)
    assert format_logic(q.logic) == "not(c1)"
    assert (q.conditions[0].defect_class, q.conditions[0].region) == (cls, region)


@pytest.mark.parametrize(
    "text, measure, op, value",
    [
        ("offset ≤ 0.1 mm", "offset", "<=", 0.1),
        ("cracks ≥ 1.5 mm", "length", ">=", 1.5),
        ("at most 2 spatter spots", "count", "<=", 2),
        ("no more than 1 crack", "count", "<=", 1),
        ("at least 3 pinholes", "count", ">=", 3),
        ("more than 0.25 mm of offset", "offset", ">", 0.25),
        ("偏移不止0.3mm的电芯", "offset", ">", 0.3),
        ("焊渣顶多两处", "count", "<=", 2),
        ("偏移0.3mm往上的", "offset", ">=", 0.3),
        ("偏移量超过0.3毫米以上", "offset", ">", 0.3),  # the pleonasm keeps the precise word's meaning
    ],
)
def test_comparison_words(text, measure, op, value):
    c = _p(text).conditions[0]
    got = (
        (c.count.op.value, c.count.value) if measure == "count" else (c.constraints[0].op.value, c.constraints[0].value)
    )
    assert got == (op, value)
    with pytest.raises(UnsupportedQueryError, match="two different comparators"):
        _p("偏移超过0.3mm以下")  # opposite directions stay an error


@pytest.mark.parametrize(
    "text, cls, what",
    [
        ("cells w/ spatter", "spatter", None),
        ("no. of cracks >= 3", "crack", ("count", ">=", 3)),
        ("# of pinholes > 4", "pin_hole", ("count", ">", 4)),
        ("qty of spurs > 2", "spur", ("count", ">", 2)),
        ("crack len > 1 mm", "crack", ("length", ">", 1)),
        ("pinhole dia > 0.2 mm", "pin_hole", ("length", ">", 0.2)),
        ("cracks w/ conf >= 0.9", "crack", ("confidence", ">=", 0.9)),
    ],
)
def test_abbreviations(text, cls, what):
    c = _p(text).conditions[0]
    assert c.defect_class == cls
    if what and what[0] == "count":
        assert (c.count.op.value, c.count.value) == what[1:]
    elif what:
        assert [(k.measure, k.op.value, k.value) for k in c.constraints] == [what]
    assert _read("tabs w/o burns")[1] == "not(c1)"


@pytest.mark.parametrize(
    "text, cls",
    [("tabs with fractures", "crack"), ("misalignments over 0.3 mm", "weld_offset"), ("weld splashes", "spatter"),
     ("boards with mice bites", "mousebite"), ("boards with protrusions", "spur"), ("burrs on the traces", "spur")],
)  # fmt: skip
def test_english_plurals(text, cls):
    assert _classes(text) == [cls]


def test_typos_are_refused_with_a_suggestion_unless_correction_is_asked_for():
    with pytest.raises(UnknownTermError) as err:
        _p("boards with shrots")
    assert err.value.suggestions_for("shrots")[0] == "shorts"  # one swap beats one deletion ("shots")
    r = read_instruction("boards with shrots", today=TODAY, correct_typos=True)
    assert [c.defect_class for c in r.query.conditions] == ["short"]
    assert r.notes == ["read 'shrots' as 'shorts' (one letter off)"]
    # never a unit, a negation, a comparator, or a word of fewer than four letters
    for text in ("cracks longer than 1 millimetr", "cells witout cracks", "offset moer than 0.3 mm", "two bun"):
        with pytest.raises(UnknownTermError):
            read_instruction(text, correct_typos=True)


def test_function_words_are_skipped_with_a_note():
    assert _read("赶紧查一下有没有裂纹") == (
        ["crack"],
        "c1",
        ["skipped '赶紧' (adverb): it does not change what is asked"],
    )
    assert _read("这些电芯哪个有烧伤啊")[2] == ["skipped '哪个' (pronoun): it does not change what is asked"]
    assert _read("如果有裂纹就标出来")[:2] == (["crack"], "c1")


@pytest.mark.parametrize(
    "text, word",
    [
        ("裂纹大约2毫米", "大约"),  # an approximation next to a number
        ("焊渣3处左右", "左右"),
        ("排除有焊渣的电芯", "排除"),  # a verb that excludes
        ("找出烧伤面积最大的电芯", "最大"),  # a superlative
        ("重点看看裂纹", "重点"),  # reported whole, not 重 + the classifier 点
        ("有污点的电路板", "污点"),
        ("cracks about 2 mm long", "about"),  # no English word is skipped: it could change the numbers
    ],
)
def test_words_that_could_change_the_meaning_still_stop_with_did_you_mean(text, word):
    with pytest.raises(UnknownTermError) as err:
        _p(text)
    assert word in err.value.unknown


def test_a_word_of_another_line_is_never_skipped():
    with pytest.raises(UnknownTermError) as err:
        _p("有短路的电芯", line="battery_tab")
    assert "pcb" in err.value.words[0].hint


def test_ambiguous_besides_list_stays_ambiguous():
    with pytest.raises(AmbiguousQueryError):
        _p("除了裂纹，烧伤也要")


def test_jieba_loads_only_when_chinese_is_left_unread():
    code = (
        "import sys\n"
        "import agent.parser as p\n"
        "assert 'jieba' not in sys.modules, 'imported with agent.parser'\n"
        "p.parse_instruction('找出有裂纹的电芯')\n"
        "assert 'jieba' not in sys.modules, 'loaded for words the lexicon reads'\n"
        "p.parse_instruction('赶紧找出有裂纹的电芯')\n"
        "assert 'jieba' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Building prefix dict" not in out.stderr  # jieba's load is not printed on the operator's terminal
