"""Tokenizer and lexicon: normalisation, longest-match Chinese, English word boundaries, numbers, ids."""

from __future__ import annotations

import pytest

from agent.parser import Lexicon, known_terms
from agent.parser.lexicon import Vocabulary, build_vocabulary, vocabulary_for
from agent.parser.normalize import normalize
from agent.parser.tokenizer import NUM, UNKNOWN, Tokenizer, parse_zh_numeral
from defect_agent.config import load_line
from defect_agent.errors import ConfigError


def _toks(text: str, line: str = "battery_tab"):
    return Tokenizer(vocabulary_for(line)).tokenize(text)[1]


def _kinds(text: str, line: str = "battery_tab"):
    return [(t.kind, t.surface) for t in _toks(text, line)]


def test_normalize_full_width_and_keeps_map_to_original():
    n = normalize("偏移超过０.３ｍｍ，且  ＞ 1㎟")
    assert n.text == "偏移超过0.3mm,且 > 1mm2"
    start = n.text.index("0.3mm")
    assert n.span(start, start + 5) == "０.３ｍｍ"


def test_chinese_longest_match_prefers_the_longer_word():
    kinds = _kinds("极耳焊接偏移超0.3mm且伴随焊渣飞溅")
    assert kinds[0] == ("class", "极耳焊接偏移")  # not 极耳 (tab) + 焊接 ...
    assert ("cmp", "超") in kinds and ("class", "焊渣飞溅") in kinds
    assert _kinds("不超过")[0] == ("cmp", "不超过")  # not 不 (not) + 超过
    assert _kinds("无焊点")[0] == ("class", "无焊点")  # missing_weld, not 无 + 焊点


def test_english_words_need_word_boundaries():
    kinds = _kinds("cracks or burns in order")
    assert ("or", "or") in kinds
    assert ("unknown", "order") in kinds  # "or" must not match inside "order"
    assert [k for k in _kinds("3 or more cracks") if k[0] == "cmp"] == [("cmp", "or more")]
    # "or wider than": the postfix "or wider" must not swallow the "wider" of "wider than"
    assert ("cmp", "wider than") in _kinds("cracks longer than 1 mm or wider than 0.2 mm")


def test_plurals_and_hyphens():
    assert _toks("scorch marks")[0].get("name") == "burn"
    assert _toks("pin-holes", "pcb")[0].get("name") == "pin_hole"
    assert _toks("mouse bites", "pcb")[0].get("name") == "mousebite"
    assert _toks("images")[0].kind == "filler"  # regular plural of a filler word


def test_numbers_digits_words_and_chinese_numerals():
    nums = [t.value for t in _toks("0.3mm .5 two 十二 两 零点三 一百零五") if t.kind == NUM]
    assert nums == [0.3, 0.5, 2.0, 12.0, 2.0, 0.3, 105.0]
    assert parse_zh_numeral("二十五", {"二": 2, "五": 5}, {"十": 10}, "点") == 25
    assert [(t.kind, t.surface) for t in _toks("三点焊渣")][:2] == [("num", "三"), ("classifier", "点")]


def test_number_then_plus_is_at_least():
    t = _toks("3+ cracks")
    assert t[1].kind == "cmp" and t[1].get("op") == ">=" and t[1].get("position") == "postfix"


def test_folder_and_lot_ids_are_captured_with_case():
    toks = _toks('cracks in folder line2/day1 from lot no. L-77 and in folder "night shift"')
    assert [t.capture for t in toks if t.kind in ("folder", "lot")] == ["line2/day1", "L-77", "night shift"]
    assert [t.capture for t in _toks("L123批次") if t.kind == "lot"] == ["L123"]
    # "a lot of" is no lot id (an id needs a digit)
    assert all(t.capture is None for t in _toks("a lot of cracks") if t.kind == "lot")


def test_unknown_chinese_characters_form_one_word():
    unknown = [t.surface for t in _toks("焊渣飞贱和裂纹") if t.kind == UNKNOWN]
    assert unknown == ["飞贱"]


def test_class_words_come_from_the_line_not_the_lexicon():
    bt, pcb = vocabulary_for("battery_tab"), vocabulary_for("pcb")
    assert bt.lookup("offset").kind == "class" and pcb.lookup("offset").kind == "measure"
    assert pcb.lookup("short").get("name") == "short" and bt.lookup("short") is None
    assert bt.lookup("boards").kind == "subject" and bt.lookup("boards").get("line") == "pcb"
    lexicon = Lexicon.load()
    lexicon_words = set(_strings(lexicon.model_dump(by_alias=True)))
    measure_words = {w for words in lexicon.measures.values() for w in words.all()}
    for name in ("battery_tab", "pcb"):
        cfg = load_line(name)
        for spec in [*cfg.classes, *cfg.derived]:
            shared = set(spec.synonyms.en + spec.synonyms.zh) & lexicon_words
            # only a measure word may double as a class word (offset / 偏移: the class wins on its line)
            assert shared <= measure_words, f"{spec.name} synonyms duplicated in the lexicon: {shared - measure_words}"


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def test_lexicon_conflicts_are_config_errors():
    lexicon = Lexicon.load()
    bad = lexicon.model_copy(deep=True)
    bad.fillers.en.append("more than")  # already a comparator
    with pytest.raises(ConfigError, match="more than"):
        build_vocabulary(load_line("battery_tab"), bad, {})
    line = load_line("battery_tab").model_copy(deep=True)
    line.classes[3].synonyms.en.append("weld spatter")  # crack and spatter would share a word
    with pytest.raises(ConfigError, match="two classes"):
        build_vocabulary(line, lexicon, {})


def test_known_terms_for_completion():
    terms = known_terms("battery_tab")
    assert {"spatter", "焊渣飞溅", "weld_offset", "偏移", "length", "mm", "毫米"} <= set(terms)
    assert "short" not in terms
    assert "short circuit" in known_terms("pcb")
    assert isinstance(vocabulary_for("pcb"), Vocabulary)
