"""Interactive shell for line operators: type instructions, follow up on the last result.

Commands (anything else is taken as an instruction and run on the current images):
  :images PATH...     set the images (files, folders, globs)
  :line NAME          switch product line
  :show N             the verdict of image N of the last result (1-based) as JSON
  help, :help         this help;  :quit (or Ctrl-D) leaves
Follow-ups on the last result, in words:
  "show the 5 most similar past cases of image 3" / "显示第3张图的5个最相似案例"
  "why is image 3 fail" / "为什么第3张不合格"   -> that image's verdict and answer, explained in a few lines
  "only those on line 2" / "only those in lot L123" / "only failed" -> filter the last result by file name or verdict
Tab completes defect terms of the current line and the commands; history persists in var/shell_history."""

from __future__ import annotations

import cmd
import json
import re
from pathlib import Path

from agent.verdict import Verdict
from defect_agent.errors import DefectAgentError
from defect_agent.paths import data_dir

_SIMILAR = re.compile(r"(?:(\d+)\s*(?:most\s+)?similar.*?image\s*(\d+))|(?:第\s*(\d+)\s*张.*?(\d+)\s*个)", re.I)
_ONLY_LINE = re.compile(r"only\s+(?:those\s+)?(?:on|in|from)\s+(line|lot|folder)\s*([\w-]+)", re.I)
_WHY = re.compile(r"(?:\bwhy\b.*?\bimage\s*(\d+))|(?:为什么.*?第\s*(\d+)\s*张)|(?:第\s*(\d+)\s*张.*?为什么)", re.I)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_ONLY_VERDICT = re.compile(r"only\s+(?:the\s+)?(failed|fail|review|passed|pass|matching)", re.I)


class InspectionShell(cmd.Cmd):
    """The operator's interactive shell: instructions, follow-up questions, tab completion, history."""

    intro = "defect-agent shell — type an instruction, :images PATH to choose images, :help for more."
    prompt = "inspect> "

    def __init__(
        self,
        line: str | None = None,
        images: list[str] | None = None,
        inspector_factory=None,
        kb_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.kb_dir = kb_dir
        from defect_agent.config import load_app_config

        self.line = line or load_app_config().default_line
        self.images = images or []
        self.last: list[Verdict] = []
        self._factory = inspector_factory
        self._inspectors: dict[str, object] = {}
        self._history = data_dir() / "shell_history"

    # -- plumbing -------------------------------------------------------------------------------------------------
    def preloop(self) -> None:
        try:
            import readline

            readline.set_completer_delims(" \t\n")
            self._history.parent.mkdir(parents=True, exist_ok=True)
            if self._history.exists():
                readline.read_history_file(self._history)
        except (ImportError, OSError):
            pass

    def postloop(self) -> None:
        try:
            import readline

            readline.write_history_file(self._history)
        except (ImportError, OSError):
            pass

    def completenames(self, text, *ignored):  # first word: commands and defect terms alike
        return self.completedefault(text)

    def completedefault(self, text, *ignored):
        from agent.parser import known_terms

        words = [":images", ":line", ":show", ":help", ":quit", *known_terms(self.line)]
        return [w for w in words if w.lower().startswith(text.lower())]

    def emptyline(self) -> bool:
        return False

    def _inspector(self):
        if self.line not in self._inspectors:
            if self._factory is not None:
                self._inspectors[self.line] = self._factory(self.line)
            else:
                from agent.pipeline import Inspector

                self._inspectors[self.line] = Inspector.from_config(line=self.line, kb_dir=self.kb_dir)
        return self._inspectors[self.line]

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")

    # -- input ----------------------------------------------------------------------------------------------------
    # typeshed types Cmd.default as -> None, but Cmd.onecmd returns its result as the stop flag
    def default(self, line: str) -> bool:  # type: ignore[override]
        text = line.strip()
        if text in (":quit", ":q", "exit", "quit", "EOF"):
            return True
        try:
            return self._dispatch(text)
        except DefectAgentError as exc:
            self.say(f"error: {exc}")
        return False

    def do_EOF(self, arg: str) -> bool:
        return True

    def do_help(self, arg: str) -> None:  # cmd's own help lists do_* methods, which are not this shell's commands
        self.say(__doc__ or "")

    def _dispatch(self, text: str) -> bool:
        if text.startswith(":images"):
            from agent.images import collect_images

            self.images = collect_images(text.split()[1:])
            self.say(f"{len(self.images)} images")
        elif text.startswith(":line"):
            from defect_agent.config import load_line

            self.line = load_line(text.split()[1]).name
            self.say(f"line {self.line}")
        elif text.startswith(":show"):
            self.say(self._verdict(int(text.split()[1])).model_dump_json(indent=2))
        elif text in (":help", "help", "?"):
            self.say(__doc__ or "")
        elif self._follow_up(text):
            pass
        else:
            self._run(text)
        return False

    def _verdict(self, number: int) -> Verdict:
        if not self.last:
            raise DefectAgentError("no result yet: type an instruction first")
        if not 1 <= number <= len(self.last):
            raise DefectAgentError(f"image {number} is not in the last result (1..{len(self.last)})")
        return self.last[number - 1]

    def explain(self, number: int, lang: str) -> list[str]:
        """A few lines on why image `number` of the last result got its verdict and its answer."""
        from agent.messages import say
        from agent.report import deciding_clause, defect_names

        v = self._verdict(number)
        reasons = [v.error] if v.error else v.verdict_reasons
        if not v.error and v.defects:  # the rules re-read in the language of the question
            from agent.acceptance import judge_part
            from defect_agent.config import load_app_config, load_line

            reasons = judge_part(v.defects, load_line(v.line), load_app_config().fusion, lang).reasons
        lines = [
            f"{number}. {Path(v.image).name}: {say('col_verdict', lang)} {say('verdict_' + v.verdict, lang)}",
            *(f"   - {r}" for r in reasons[:4]),
        ]
        answer = say("match_yes" if v.matches_query else "match_no", lang) + ("?" if v.match_uncertain else "")
        clause = deciding_clause(v, lang)
        lines.append(f"   {say('col_match', lang)}: {answer} ({v.score:.2f})" + (f" — {clause}" if clause else ""))
        lines.append(f"   {say('col_defects', lang)}: {defect_names(v, lang)}")
        return lines

    def _follow_up(self, text: str) -> bool:
        m = _WHY.search(text)
        if m:
            number = int(next(g for g in m.groups() if g))
            for row in self.explain(number, "zh" if _CJK.search(text) else "en"):
                self.say(row)
            return True
        m = _SIMILAR.search(text)
        if m:
            k, n = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(4)), int(m.group(3)))
            verdict = self._verdict(n)
            cases = [c for d in verdict.defects for c in d.similar_cases]
            if len(cases) < k and verdict.defects:
                cases = self._more_similar(verdict, k)
            cases = sorted({c.case_id: c for c in cases}.values(), key=lambda c: -c.similarity)[:k]
            for c in cases:
                self.say(f"case {c.case_id}  sim {c.similarity:.3f}  {c.defect_class}  {c.disposition}  {c.root_cause}")
            if not cases:
                self.say("no similar past cases for that image")
            return True
        m = _ONLY_LINE.search(text)
        if m:
            token = (m.group(1) + m.group(2)).lower()
            loose = re.compile(rf"{m.group(1)}[_\- ]?{re.escape(m.group(2))}(?!\d)", re.I)
            self.last = [v for v in self.last if loose.search(Path(v.image).as_posix()) or token in v.image.lower()]
            self._summary()
            return True
        m = _ONLY_VERDICT.search(text)
        if m:
            word = m.group(1).lower()
            keep = {"failed": "fail", "fail": "fail", "passed": "pass", "pass": "pass", "review": "review"}.get(word)
            self.last = [v for v in self.last if (v.matches_query if word == "matching" else v.verdict == keep)]
            self._summary()
            return True
        return False

    def _more_similar(self, verdict: Verdict, k: int):
        inspector = self._inspector()
        kb = getattr(inspector, "kb", None)
        if kb is None:
            return []
        from agent.images import read_image
        from vision.crops import crop_region

        image = read_image(verdict.image)
        crops = [crop_region(image, d.box) for d in verdict.defects]
        vectors = inspector.embedder.embed_images(crops)
        return [c for v in vectors for c in kb.search_by_vector(v, k=k, line=verdict.line)]

    def _run(self, instruction: str) -> None:
        if not self.images:
            raise DefectAgentError("no images: set them with :images PATH...")
        from agent.parser import parse_instruction

        query = parse_instruction(instruction, line=self.line)
        if query.line != self.line:
            self.line = query.line
        self.last = list(self._inspector().inspect(query, self.images))
        self._summary()

    def _summary(self) -> None:
        for i, v in enumerate(self.last, 1):
            self.say(f"{i:3d}  {v.verdict:6s}  match={'yes' if v.matches_query else 'no '}  {v.score:.2f}  {v.image}")
        self.say(json.dumps({k: sum(v.verdict == k for v in self.last) for k in ("fail", "review", "pass")}))
