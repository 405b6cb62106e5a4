"""
The tasks: GSM8K, MATH500, Countdown (3 numbers), 4x4 Sudoku, arithmetic word problems (a chain
of 2 to 6 dependent steps), and the code tasks HumanEval and MBPP (their programs run in
execute.py's contained interpreter). Each one loads its data, writes prompts, scores a completion
for training (`reward`) and for evaluation (`is_correct`), and writes a reference completion (for
SFT and tests). Countdown, Sudoku and arithmetic are generated here.

    task = get_task("countdown")
    train, test = task.generate(2000, seed=0), task.generate(500, seed=1)  # disjoint: see _split_for
    text = task.prompt(test[0], style="compact")          # "Countdown: 30,100,93 -> 23"
    r = task.reward("<answer>30-(100-93)</answer>", test[0])

Rules follow DEFINITIONS.md section 4 (the d1 / CJ-GRPO rewards, JustGRPO prompts); deviations from the
reference code are marked (ours). Prompt styles:
    d1       d1 / CJ-GRPO training prompt: format text at the start of the user turn
    d1_eval  d1 evaluation prompt (asks for \\boxed{} inside <answer>); the assistant turn is
             pre-filled with task.prefill("d1_eval") == "<reasoning>"
    just     JustGRPO: the bare question, MATH adds a \\boxed{} instruction; its code prompts for
             humaneval and mbpp (not countdown, sudoku); its reward is +1 if is_correct else -1
    compact  a short prompt for the project's tiny byte-level models, answered "<answer>...</answer>"
Rewards take anything: None, empty or megabyte strings, unclosed tags score 0 (or the format-only
part) and never raise. Every scan is linear in the completion length (no backtracking regex) and
reads at most MAX_COMPLETION_CHARS characters, more than any generation window holds.
"""
import ast
import csv
import io
import json
import math
import random
import re
import zlib
from fractions import Fraction
from itertools import permutations, product
from pathlib import Path

from execute import Limits, run_batch

STYLES = ("d1", "d1_eval", "just", "compact")

# Prompt texts as in the d1 code (the chat template strips the leading newline).
D1_FORMAT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
D1_MATH = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
           "Wrap the final answer in a \\boxed{}. ")
D1_MATH_EVAL = (D1_MATH + "\nRespond in the following format:\n<reasoning>\nYour reasoning here\n"
                "</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
D1_COUNTDOWN_EVAL = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
    "be used exactly once. Think step-by-step. After reasoning, provide only your final expression "
    "inside \\boxed{} tags without including an equals sign or the target number. For example: "
    "\\boxed{a + b * c}Respond in the following format:\n<reasoning>\nYour reasoning here\n"
    "</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
D1_SUDOKU = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""
# JustGRPO's released code covers GSM8K only; this is the usual wording of the \boxed{} instruction.
JUST_MATH = "\nPlease reason step by step, and put your final answer within \\boxed{}."

# -----------------------------------------------------------------------------
# reading completions (linear-time helpers)


# LLaDA-8B's context is 4096 positions, so no run generates more than 4096 tokens, and at 16
# characters a token (4x English BPE's ~4) a real completion stays below this. Longer text cannot
# come from the model; reading only this much bounds every reward's work (10 MB took seconds).
MAX_COMPLETION_CHARS = 4096 * 16


def _text(completion):
    """Completions are strings; anything else (None, bytes, lists) scores as an empty completion.
    Only the first MAX_COMPLETION_CHARS characters are read."""
    return completion[:MAX_COMPLETION_CHARS] if isinstance(completion, str) else ""


def _last_answer(text):
    """Content of the last <answer>...</answer> pair, stripped, or None when no pair is closed."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(end, 0))
    return text[start + len("<answer>"):end].strip() if end >= 0 and start >= 0 else None


BRACE = re.compile(r"[{}]")


def _last_boxed(text):
    """Content of the last \\boxed{...} with balanced braces, or None (no \\boxed, or unclosed)."""
    start = text.rfind("\\boxed{")
    depth, begin = 0, start + len("\\boxed{")
    for m in BRACE.finditer(text, begin if start >= 0 else len(text)):
        depth += 1 if m.group() == "{" else -1
        if depth < 0:
            return text[begin:m.start()]
    return None


def _boxed_flat(text):
    """Every \\boxed{...} read up to its first '}' (d1's non-nested regex), in order. Stops at the
    first unclosed one: no later one can close either, so the scan stays linear."""
    out, pos = [], 0
    while (start := text.find("\\boxed{", pos)) >= 0:
        end = text.find("}", start + len("\\boxed{"))
        if end < 0:
            break
        out.append(text[start + len("\\boxed{"):end])
        pos = end + 1
    return out


NUMBER = re.compile(r"-?[0-9]+\.?[0-9]*")  # ASCII digits only: float() would also read "١٢" as 12


def _numbers(s):
    """Numbers in s as floats, commas removed first (ours: d1 reads "1,080" as 1 and 80)."""
    return [float(m) for m in NUMBER.findall(s.replace(",", ""))]


def _completion(reasoning, answer, style):
    """A completion in the format a d1 or compact prompt asks for, without the d1_eval pre-fill."""
    if style == "compact":
        return f"<answer>{answer}</answer>"
    text = f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"
    return text.removeprefix("<reasoning>") if style == "d1_eval" else text

# -----------------------------------------------------------------------------
# data files


def _read_rows(path):
    """Rows of a .jsonl or .csv file as (where, dict), where = "file:line" for error messages."""
    path = str(path)
    if not path.endswith((".jsonl", ".csv")):
        raise ValueError(f"{path}: expected a .jsonl or .csv file")
    try:  # read whole, so that a binary or UTF-16 file fails here with its name, not mid-run
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    if "\0" in text:
        raise ValueError(f"{path}: holds NUL bytes: binary or UTF-16, not UTF-8 text")
    if path.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield f"{path}:{reader.line_num}", row
        return
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
            yield f"{path}:{i}", row


class Task:
    """A task: its data, prompts, rewards. Subclasses define from_row, prompt, reward,
    is_correct and reference; generate exists only where the data is generated."""
    name = ""

    def load(self, path):
        """The examples of a data file; a malformed row raises ValueError naming file:line."""
        out = []
        for where, row in _read_rows(path):
            try:
                out.append(self.from_row(row))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{where}: bad {self.name} row ({type(e).__name__}: {e})") from None
        return out

    def generate(self, n, seed, split=None):
        """n distinct examples, the same for the same seed; split as in _split_for."""
        raise ValueError(f"{self.name} is not generated: read it with load(path)")

    def grade(self, completions, examples):
        """(is_correct, reward) of each completion; the code tasks run their programs in parallel here."""
        return [(bool(self.is_correct(c, e)), float(self.reward(c, e))) for c, e in zip(completions, examples)]

    def prefill(self, style="d1"):
        """Text after the assistant header: d1's evaluation starts the answer with "<reasoning>"."""
        return "<reasoning>" if style == "d1_eval" else ""

    def _style(self, style, just=True):
        """The style, checked: JustGRPO has prompts for gsm8k and math500 only."""
        if style not in STYLES or (style == "just" and not just):
            valid = [s for s in STYLES if just or s != "just"]
            raise ValueError(f"{self.name}: prompt style {style!r} not one of {valid}")
        return style

# -----------------------------------------------------------------------------
# GSM8K


def _gsm8k_gold(example):
    return example["answer"].split("####")[1].strip()


def _plain(s):
    """(ours) Commas and spaces removed: 14 test golds are written "1,080"."""
    return s.replace(",", "").replace(" ", "")


def _xml_answer(text):
    """d1's extract_xml_answer: after the last <answer>, up to </answer>, stripped (or all text)."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def correctness_reward(text, gold):
    """d1 correctness_reward_func: 2.0 if the extracted answer equals the gold (ours: commas removed)."""
    return 2.0 if _plain(_xml_answer(text)) == _plain(gold) else 0.0


def int_reward(text):
    """d1 int_reward_func: 0.5 if the extracted answer is an integer (ours: comma-free, ASCII digits)."""
    return 0.5 if re.fullmatch(r"[0-9]+", _plain(_xml_answer(text))) else 0.0


def strict_format_reward(text):
    """d1 strict_format_reward_func, r"^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$"
    (ours: DOTALL). Written with str methods: the regex backtracks quadratically on long inputs."""
    head, mid, tail = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n"
    for end in (tail, tail + "\n"):  # `$` also matches before one final newline
        if text.startswith(head) and text.endswith(end) and len(text) >= len(head) + len(end):
            if mid in text[len(head):len(text) - len(end)]:
                return 0.5
    return 0.0


def soft_format_reward(text):
    """d1 soft_format_reward_func, re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>")
    (ours: DOTALL): the first '</reasoning> <answer>' after the opening tag, then any </answer>."""
    if not text.startswith("<reasoning>"):
        return 0.0
    m = re.compile(r"</reasoning>\s*<answer>").search(text, len("<reasoning>"))
    return 0.5 if m and text.find("</answer>", m.end()) >= 0 else 0.0


def xml_count_reward(text):
    """d1 count_xml: 0.125 per tag placed once, minus 0.001 per character after the answer."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125 - len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


class GSM8K(Task):
    name = "gsm8k"

    def from_row(self, row):
        q, a = row["question"], row["answer"]
        if not (isinstance(q, str) and isinstance(a, str) and "####" in a):
            raise ValueError("needs a question and an answer with the gold after '####'")
        return {"question": q, "answer": a}

    def prompt(self, example, style="d1"):
        q = example["question"]
        return {"d1": D1_FORMAT + "\n\n" + q, "d1_eval": D1_MATH_EVAL + "\n\n" + q,
                "just": q, "compact": q}[self._style(style)]

    def reward(self, completion, example):
        """d1's GSM8K reward: correctness 2 + integer 0.5 + strict 0.5 + soft 0.5 + xml up to 0.5."""
        t, gold = _text(completion), _gsm8k_gold(example)
        return (correctness_reward(t, gold) + int_reward(t) + strict_format_reward(t)
                + soft_format_reward(t) + xml_count_reward(t))

    def is_correct(self, completion, example):
        """d1's evaluation: the first \\boxed{} holding a number, else the <answer> content's last
        number, equal as floats to the gold. Without either (JustGRPO's prompts ask for no format),
        the last number of the whole completion, as the answer extraction of DEFINITIONS.md 4.1 does."""
        t = _text(completion)
        found = next((nums[0] for b in _boxed_flat(t) if (nums := _numbers(b))), None)
        if found is None:
            start = t.find("<answer>")
            end = t.find("</answer>", start) if start >= 0 else -1
            nums = _numbers(t[start + len("<answer>"):end] if end >= 0 else t)
            found = nums[-1] if nums else None
        golds = _numbers(_gsm8k_gold(example))
        return found is not None and golds == [found]

    def reference(self, example, style="d1"):
        reasoning, gold = example["answer"].split("####")[0].strip(), _gsm8k_gold(example)
        reasoning = re.sub(r"<<[^>]*>>", "", reasoning)  # calculator annotations "<<3*4=12>>"
        if self._style(style) == "just":
            return f"{reasoning}\nThe answer is \\boxed{{{gold}}}."
        return _completion(reasoning, f"\\boxed{{{gold}}}" if style == "d1_eval" else gold, style)

# -----------------------------------------------------------------------------
# MATH500


def _fix_fracs(s):
    """\\frac12 -> \\frac{1}{2}, \\frac1{23} -> \\frac{1}{23}."""
    head, *parts = s.split("\\frac")
    for i, p in enumerate(parts):
        if len(p) >= 2 and p[0] != "{":
            parts[i] = "{" + p[0] + "}" + (p[1:] if p[1] == "{" else "{" + p[1] + "}" + p[2:])
    return "\\frac".join([head, *parts])


def normalize_math(s):
    """The MATH answer normalisation of Hendrycks et al. (2021), written out rule by rule, plus
    (ours) a trailing ".0" dropped from whole numbers. Applied to both sides before comparing."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    s = s.split("\\text{ ")[0]  # units: "5 \text{ cm}" -> "5 "
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    s = "0" + s if s.startswith(".") else s
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:  # "x = 5" -> "5"
        s = s.split("=")[1]
    s = s.replace(" ", "")
    s = "\\sqrt".join(p if i == 0 or p.startswith("{") or not p else "{" + p[0] + "}" + p[1:]
                      for i, p in enumerate(s.split("\\sqrt")))  # \sqrt3 -> \sqrt{3}
    s = _fix_fracs(s)
    s = "\\frac{1}{2}" if s == "0.5" else s
    if s.count("/") == 1:  # "3/4" -> \frac{3}{4} for plain integers
        a, b = s.split("/")
        if all(re.fullmatch(r"-?(?:0|[1-9][0-9]*)", x) for x in (a, b)):
            s = f"\\frac{{{a}}}{{{b}}}"
    return re.sub(r"^(-?[0-9]+)\.0+$", r"\1", s)


def math_equal(answer, gold):
    """Equivalence of two MATH answers: equal after normalize_math. None is never equal."""
    if not (isinstance(answer, str) and isinstance(gold, str)):
        return False
    return normalize_math(answer) == normalize_math(gold)


class MATH500(Task):
    name = "math500"

    def from_row(self, row):
        # MATH train rows have no "answer" field: it is the last \boxed{} of the solution
        answer = row.get("answer") or _last_boxed(row["solution"])
        if not isinstance(answer, str):
            raise ValueError("no answer, and no \\boxed{} in the solution")
        return {"problem": str(row["problem"]), "solution": row.get("solution", ""), "answer": answer}

    def prompt(self, example, style="d1"):
        p = example["problem"]
        return {"d1": f"{D1_FORMAT}\n\n{D1_MATH}\n\n{p}", "d1_eval": D1_MATH_EVAL + "\n\n" + p,
                "just": p + JUST_MATH, "compact": p}[self._style(style)]

    def reward(self, completion, example):
        """d1's MATH reward: correctness 2.0 + boxed_and_answer_tags_format_reward."""
        t = _text(completion)
        correct = 2.0 if self.is_correct(t, example) else 0.0
        parts = t.split("<answer>", 2)  # d1: r.split("<answer>")[1].split("</answer>")[0], else all of r
        inside = parts[1].split("</answer>")[0] if len(parts) > 1 else t
        # (ours) the reference tests "\boxed" in a non-raw string ("\b" = backspace): never true
        return correct + 0.5 * ((len(parts) > 1) + (1.0 if "\\boxed" in inside else 0.5))

    def is_correct(self, completion, example):
        """The last \\boxed{} of the completion equals the gold after MATH normalisation."""
        return math_equal(_last_boxed(_text(completion)), example["answer"])

    def reference(self, example, style="d1"):
        boxed = f"\\boxed{{{example['answer']}}}"
        if self._style(style) == "just":
            return example.get("solution") or boxed
        return _completion(example.get("solution") or example["answer"], boxed, style)

# -----------------------------------------------------------------------------
# Countdown

MAX_EXPR_CHARS = 200  # a 3-number answer needs ~20; the bound keeps ast and Fraction work tiny


def _apply(op, x, y):
    """One exact operation on ints and Fractions (Fraction only where "/" needs it, as it is
    slow); None for division by zero."""
    if op == "/":
        return None if y == 0 else Fraction(x) / y
    return x + y if op == "+" else x - y if op == "-" else x * y


def _countdown_value(expr, numbers):
    """Exact value of expr if it is integers, + - * / and parentheses, using each given number
    exactly once; else None. Parsed with ast, never eval: "9**9**9" is a Pow node, rejected."""
    if len(expr) > MAX_EXPR_CHARS or not re.fullmatch(r"[0-9+\-*/() \t\n]+", expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # e.g. "03", unbalanced
        return None
    ops, used = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}, []

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)  # the reference's eval accepts a sign; so do we
            return None if v is None else -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            x, y = value(node.left), value(node.right)
            return None if x is None or y is None else _apply(ops[type(node.op)], x, y)
        return None

    v = value(tree)
    return v if v is not None and sorted(used) == sorted(numbers) else None


def _countdown_exprs(numbers):
    """Every expression over three numbers, each used once, in both bracketings: (text, value)."""
    for (a, b, c), (p, q) in product(permutations(numbers), product("+-*/", repeat=2)):
        ab, bc = _apply(p, a, b), _apply(q, b, c)
        yield f"({a}{p}{b}){q}{c}", None if ab is None else _apply(q, ab, c)
        yield f"{a}{p}({b}{q}{c})", None if bc is None else _apply(p, a, bc)


def _countdown_answer(text):
    """The last <answer> content, unwrapped from \\boxed{} (d1's evaluation prompt asks for it)."""
    answer = _last_answer(text)
    if answer is not None and answer.startswith("\\boxed{") and answer.endswith("}"):
        answer = answer[len("\\boxed{"):-1].strip()
    return answer


TRAIN_SEED = 0  # generate(n, TRAIN_SEED) draws training problems, any other seed held-out ones


def _split_of(key):
    """Hash split of generated problems by crc32(key) % 10 (key: the sorted numbers of a Countdown
    problem, the puzzle string of a Sudoku, the chain of an arithmetic problem): 0 "test", 1
    "validation", else "train", so the three never overlap, whatever seeds draw them. Test is
    the same tenth as before the validation split existed, so earlier test sets are unchanged."""
    bucket = zlib.crc32(key.encode()) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _split_for(seed, split):
    """The split a generate call draws from: as given, else "train" for TRAIN_SEED and "test" for
    any other seed, so held-out sets drawn with seeds 1, 2, ... never meet the training set.
    Checkpoints and hyperparameters are chosen on "validation", never on "test"."""
    split = split or ("train" if seed == TRAIN_SEED else "test")
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split {split!r}: use 'train', 'validation' or 'test'")
    return split


class Countdown(Task):
    name = "countdown"

    def from_row(self, row):
        if "input" in row:  # the published test file: {"input": "30,100,93", "output": "23"}
            numbers, target = [int(x) for x in row["input"].split(",")], int(row["output"])
        else:  # our rows: JSON integers only, so "123" is not read as [1, 2, 3] nor 23.7 as 23
            numbers, target = row["numbers"], row["target"]
            if not (isinstance(numbers, list) and all(type(x) is int for x in numbers) and type(target) is int):
                raise ValueError(f"numbers {numbers!r} / target {target!r}: expected a list of integers and an integer")
        if len(numbers) != 3:
            raise ValueError(f"numbers {numbers!r}: expected 3")
        return {"numbers": numbers, "target": target}

    def generate(self, n, seed, split=None, max_number=100, max_target=100):
        """n distinct problems of the split: 3 numbers in 1..max_number, a target in 1..max_target
        reachable with + - * / using each number once, and one such expression ("expr")."""
        split, rng, out, seen = _split_for(seed, split), random.Random(seed), [], set()
        while len(out) < n:
            numbers = [rng.randint(1, max_number) for _ in range(3)]
            if _split_of(str(sorted(numbers))) != split:
                continue
            reachable = {}
            for expr, v in _countdown_exprs(numbers):
                if v is not None and v.denominator == 1 and 1 <= v <= max_target:
                    reachable.setdefault(int(v), expr)
            if not reachable:
                continue
            target = rng.choice(sorted(reachable))
            if (key := f"{sorted(numbers)}->{target}") not in seen:
                seen.add(key)
                out.append({"numbers": numbers, "target": target, "expr": reachable[target]})
        return out

    def prompt(self, example, style="d1"):
        nums, target = example["numbers"], example["target"]
        if self._style(style, just=False) == "compact":
            return f"Countdown: {','.join(map(str, nums))} -> {target}"
        if style == "d1_eval":
            return f"{D1_COUNTDOWN_EVAL}\n\nNumbers: {nums}\nTarget: {target}"
        return (f"{D1_FORMAT}\nUsing only the numbers {nums}, create an arithmetic expression that evaluates "
                f"to exactly {target}. You must use all numbers from the list, and each number must be used "
                "exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide "
                "only your final expression inside <answer></answer> tags without including an equals sign "
                "or the target number. For example, if the numbers are [2, 3, 4] and the target is 5, a "
                "valid answer is: <answer>\n2*4-3\n</answer>")

    def reward(self, completion, example):
        """TinyZero / d1 countdown reward: 1.0 right, 0.1 an answer that is wrong or invalid, 0 none."""
        answer = _countdown_answer(_text(completion))
        if answer is None:
            return 0.0
        # exact: the reference's 1e-5 tolerance would accept 200001/200000*1 for 1
        return 1.0 if _countdown_value(answer, example["numbers"]) == example["target"] else 0.1

    def is_correct(self, completion, example):
        return self.reward(completion, example) == 1.0

    def reference(self, example, style="d1"):
        expr = example.get("expr") or self._solve(example)
        answer = f"\\boxed{{{expr}}}" if self._style(style, just=False) == "d1_eval" else expr
        return _completion(f"{expr} = {example['target']}", answer, style)

    @staticmethod
    def _solve(example):
        """An expression for a loaded problem (data files keep none)."""
        for expr, v in _countdown_exprs(example["numbers"]):
            if v == example["target"]:
                return expr
        raise ValueError(f"countdown problem {example} has no solution")

# -----------------------------------------------------------------------------
# Sudoku 4x4


def _sudoku_grids():
    """All 288 solved 4x4 grids as 16-character strings, filled cell by cell with backtracking."""
    unit = [(i // 4, 4 + i % 4, 8 + i // 8 * 2 + i % 4 // 2) for i in range(16)]  # row, column, box

    def fill(g):
        if len(g) == 16:
            yield "".join(g)
        for d in "1234" if len(g) < 16 else "":
            if all(g[j] != d for j in range(len(g)) if set(unit[j]) & set(unit[len(g)])):
                yield from fill(g + [d])
    return list(fill([]))


SUDOKU_GRIDS = _sudoku_grids()
# bit k of _HAS[cell][digit] is set when grid k has that digit there: the grids that fit a
# puzzle are the AND over its givens, so uniqueness is one popcount
_HAS = [{d: sum(1 << k for k, g in enumerate(SUDOKU_GRIDS) if g[i] == d) for d in "1234"} for i in range(16)]


def sudoku_solutions(puzzle):
    """Number of solved grids consistent with the puzzle's givens."""
    fits = (1 << len(SUDOKU_GRIDS)) - 1
    for i, d in enumerate(puzzle):
        if d != "0":
            fits &= _HAS[i][d]
    return fits.bit_count()


def _sudoku_cells(completion, example):
    """(empty cells filled right, empty cells) for d1's rule: ASCII digits of the last <answer>,
    the first 16, padded with '0'."""
    answer = _last_answer(_text(completion))
    empty = [i for i, d in enumerate(example["puzzle"]) if d == "0"]
    if answer is None:
        return 0, len(empty)
    digits = re.sub(r"[^0-9]", "", answer)[:16].ljust(16, "0")
    return sum(digits[i] == example["solution"][i] for i in empty), len(empty)


def sudoku_metrics(completions, examples):
    """d1's Sudoku report: pooled cell accuracy (right empty cells / all empty cells) and the
    share of puzzles solved completely."""
    cells = [_sudoku_cells(c, e) for c, e in zip(completions, examples)]
    return {"cell_accuracy": sum(r for r, _ in cells) / max(1, sum(n for _, n in cells)),
            "solved": sum(r == n > 0 for r, n in cells) / max(1, len(cells))}


class Sudoku(Task):
    name = "sudoku"

    def from_row(self, row):
        puzzle = row.get("Puzzle", row.get("puzzle"))  # the published CSV's header, or our JSONL keys
        solution = row.get("Solution", row.get("solution"))
        if not (re.fullmatch(r"[0-4]{16}", puzzle) and re.fullmatch(r"[1-4]{16}", solution)
                and all(p in ("0", s) for p, s in zip(puzzle, solution))):
            raise ValueError(f"puzzle {puzzle!r} / solution {solution!r} are not a 4x4 Sudoku")
        return {"puzzle": puzzle, "solution": solution}

    def generate(self, n, seed, split=None, empties=(6, 10)):
        """n distinct puzzles of the split, each with a unique solution and a number of empty cells
        drawn from the inclusive range `empties` (a 4x4 puzzle needs at least 4 givens)."""
        if not 0 <= empties[0] <= empties[1] <= 12:
            raise ValueError(f"empties {empties}: a 4x4 puzzle has 0 to 12 empty cells")
        split, rng, out, seen = _split_for(seed, split), random.Random(seed), [], set()
        while len(out) < n:
            solution, k = rng.choice(SUDOKU_GRIDS), rng.randint(*empties)
            puzzle = list(solution)
            for i in rng.sample(range(16), 16):  # blank cells while the solution stays unique
                if puzzle.count("0") == k:
                    break
                puzzle[i] = "0"
                if sudoku_solutions(puzzle) != 1:
                    puzzle[i] = solution[i]
            puzzle = "".join(puzzle)
            if puzzle.count("0") == k and _split_of(puzzle) == split and puzzle not in seen:
                seen.add(puzzle)
                out.append({"puzzle": puzzle, "solution": solution})
        return out

    def prompt(self, example, style="d1"):
        if self._style(style, just=False) == "compact":
            return f"Sudoku 4x4: {example['puzzle']}"
        return f"{D1_SUDOKU}\n\nSolve the following Sudoku puzzle: {example['puzzle']}\n"

    def reward(self, completion, example):
        """d1 sudoku_reward_func: the share of empty cells filled right (0 without empty cells)."""
        right, empty = _sudoku_cells(completion, example)
        return right / empty if empty else 0.0

    def is_correct(self, completion, example):
        right, empty = _sudoku_cells(completion, example)
        return right == empty > 0

    def reference(self, example, style="d1"):
        self._style(style, just=False)
        return _completion("Fill each empty cell with the digit its row, column and box lack.",
                           example["solution"], style)

# -----------------------------------------------------------------------------
# Arithmetic word problems (ours: a sequential task, one line per dependent step)

ARITH_NAMES = [("Ann", "she", "her"), ("Bob", "he", "him"), ("Eva", "she", "her"), ("Tom", "he", "him"),
               ("Mia", "she", "her"), ("Sam", "he", "him"), ("Lin", "she", "her"), ("Raj", "he", "him"),
               ("Zoe", "she", "her"), ("Max", "he", "him"), ("Ida", "she", "her"), ("Leo", "he", "him")]
ARITH_OBJECTS = ["coins", "apples", "stamps", "marbles", "cards", "pens", "beads", "shells", "books",
                 "eggs", "nuts", "keys"]
ARITH_START = ["{N} has {v} {o}.", "{N} starts with {v} {o}.", "{N} owns {v} {o}.", "{N} is given {v} {o}."]
ARITH_STEPS = {  # short sentences: a 6-step prompt stays under ~260 bytes
    "+": ["{P} finds {b} more.", "{P} buys {b} more.", "A friend gives {p2} {b} more.", "{P} gets {b} more."],
    "-": ["{P} gives away {b}.", "{P} loses {b}.", "{P} sells {b}.", "{P} uses {b} of them."],
    "*": ["{P} gets {b} times as many.", "Now {p} has {b} times as many.", "{P} multiplies them by {b}."],
    "/": ["{P} keeps 1/{b} of them.", "{P} keeps one of {b} equal piles.", "{P} splits them into {b} and keeps one part."],
}
ARITH_QUESTION = ["How many {o} does {n} have now?", "How many {o} now?", "How many {o} does {p} have?",
                  "How many are there in the end?"]
# a last division may instead end with the shares, as in "She shares them equally among 3 friends. How many does each get?"
ARITH_SHARE = "{P} shares them equally among {b} friends. How many does each get?"


def _arith_op(rng, v, cap):
    """One step from the value v: (op, operand, result), every value an integer in 0..cap.
    Multipliers and divisors are 2..9 (one digit) and divisions exact, so each line is one small
    exact computation."""
    ops = [op for op, ok in (("+", v < cap), ("-", v > 0), ("*", 0 < v <= cap // 2),
                             ("/", any(v % d == 0 for d in range(2, 10)) and v > 0)) if ok]
    op = rng.choice(ops)
    if op == "+":
        b = rng.randint(1, cap - v)
        return op, b, v + b
    if op == "-":
        b = rng.randint(1, v)
        return op, b, v - b
    if op == "*":
        b = rng.randint(2, min(9, cap // v))
        return op, b, v * b
    b = rng.choice([d for d in range(2, 10) if v % d == 0])
    return op, b, v // b


def _arith_integer(text):
    """The last <answer> content (unwrapped from \\boxed{}) as an int when it is only ASCII digits,
    else None. At most 9 digits: int() of a long digit string is slow (and refused past 4300)."""
    answer = _countdown_answer(text)
    return int(answer) if answer is not None and re.fullmatch(r"[0-9]{1,9}", answer) else None


class Arithmetic(Task):
    name = "arithmetic"

    def from_row(self, row):
        q, a, steps = row["question"], row["answer"], row.get("steps", [])
        if not (isinstance(q, str) and type(a) is int and a >= 0):
            raise ValueError("needs a question (string) and an answer (non-negative integer)")
        if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
            raise ValueError("steps must be a list of strings such as \"7+5=12\"")
        return {"question": q, "answer": a, "steps": steps}

    def generate(self, n, seed, split=None, ops=(2, 6), max_value=999):
        """n distinct problems of the split: a start value and a chain of ops[0]..ops[1] dependent
        operations (+ - * and exact /), every value in 0..max_value. Each problem draws its own cap
        (9, 99 or max_value) so the lines, and the answer lengths, vary widely."""
        if not (1 <= ops[0] <= ops[1] and max_value >= 9):
            raise ValueError(f"ops {ops} / max_value {max_value}: need 1 <= ops[0] <= ops[1], max_value >= 9")
        split, rng, out, seen = _split_for(seed, split), random.Random(seed), [], set()
        while len(out) < n:
            k, cap = rng.randint(*ops), rng.choice((9, 99, max_value))
            (name, p, p2), obj = rng.choice(ARITH_NAMES), rng.choice(ARITH_OBJECTS)
            v = rng.randint(2, cap)  # from 2: "1 coins" reads badly
            words = dict(N=name, n=name, P=p.capitalize(), p=p, p2=p2, o=obj)
            sentences, steps = [rng.choice(ARITH_START).format(v=v, **words)], []
            for i in range(k):
                op, b, result = _arith_op(rng, v, cap)
                if i == k - 1 and op == "/" and rng.random() < 0.5:
                    question = ARITH_SHARE.format(b=b, **words)
                else:
                    sentences.append(rng.choice(ARITH_STEPS[op]).format(b=b, **words))
                    question = None
                steps.append(f"{v}{op}{b}={result}")
                v = result
            sentences.append(question or rng.choice(ARITH_QUESTION).format(**words))
            chain = " ".join(steps)  # split and de-duplicate by the computation, whatever the wording
            if _split_of(chain) == split and chain not in seen:
                seen.add(chain)
                out.append({"question": " ".join(sentences), "answer": v, "steps": steps})
        return out

    def prompt(self, example, style="d1"):
        q = example["question"]
        return {"d1": D1_FORMAT + "\n\n" + q, "d1_eval": D1_MATH_EVAL + "\n\n" + q,
                "compact": q}[self._style(style, just=False)]

    def reward(self, completion, example):
        """As Countdown's: 1.0 the right integer, 0.1 an answer that is wrong, 0 no answer."""
        if _countdown_answer(_text(completion)) is None:
            return 0.0
        return 1.0 if self.is_correct(completion, example) else 0.1

    def is_correct(self, completion, example):
        """The last <answer> (or the \\boxed{} inside it) is exactly the gold integer."""
        return _arith_integer(_text(completion)) == example["answer"]

    def reference(self, example, style="d1"):
        """One line per intermediate result ("7+5=12", "12/3=4"), then the answer."""
        answer = str(example["answer"])
        if self._style(style, just=False) == "compact":
            return "".join(s + "\n" for s in example["steps"]) + _completion("", answer, style)
        reasoning = "\n".join(example["steps"]) or answer
        return _completion(reasoning, f"\\boxed{{{answer}}}" if style == "d1_eval" else answer, style)

# -----------------------------------------------------------------------------
# Code: HumanEval and MBPP. A completion's program runs against the row's tests in execute.py's
# contained interpreter; reward 1 if every test passes, else 0 (JustGRPO: +1 / -1, in train_rl).

# JustGRPO's code prompts (its eval.py; the released code evaluates HumanEval and MBPP but does
# not train on them). Both begin with this sentence.
JUST_CODE = ("You are an expert Python programmer. Your task is to complete the implementation of a "
             "function named `{name}`.\n\n")
# MBPP's usual split by task_id (Austin et al. 2021): 1-10 few-shot prompts, 11-510 test,
# 511-600 validation, 601-974 train.
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}


def extract_code(text):
    """JustGRPO's answer extraction: the first ```python block, stripped, else the whole completion.
    Written with str.find (linear time); it gives what its regex r"```python\n(.*?)```" (DOTALL) gives."""
    start = text.find("```python\n")
    end = text.find("```", start + len("```python\n")) if start >= 0 else -1
    return text[start + len("```python\n"):end].strip() if end >= 0 else text


def _fenced(code):
    return f"```python\n{code.strip()}\n```"


def _mbpp_header(row):
    """JustGRPO's MBPP function header: the name is the second space-separated word of the first
    test up to "(" (as published: "assert (Diff(...))" gives an empty name), with one input_param_i
    per argument of the first call of that name (none found: no parameters; 2 when the test does
    not parse)."""
    name = row["test_list"][0].split(" ")[1].split("(")[0]
    try:
        calls = [n for n in ast.walk(ast.parse(row["test_list"][0].strip()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", "") == name]
        n_args = len(calls[0].args) if calls else 0
    except SyntaxError:
        n_args = 2
    return name, ", ".join(f"input_param_{i + 1}" for i in range(n_args))


class CodeTask(Task):
    """What HumanEval and MBPP share: the prompt styles around a problem text, and grading by
    running program(completion, example) -> (program, tests) in execute.py (in parallel in grade)."""
    limits = Limits()

    def prompt(self, example, style="d1"):
        if self._style(style) == "compact":
            return self.compact(example)
        just = self.just_prompt(example)
        return just if style == "just" else D1_FORMAT + "\n\n" + just  # (ours) d1 has no code prompts

    def grade(self, completions, examples):
        results = run_batch([self.program(_text(c), e) for c, e in zip(completions, examples)], self.limits)
        return [(r.passed, float(r.passed)) for r in results]

    def reward(self, completion, example):
        """1.0 if the extracted program passes every test of the row, else 0.0."""
        return self.grade([completion], [example])[0][1]

    def is_correct(self, completion, example):
        return self.grade([completion], [example])[0][0]

    def reference(self, example, style="d1"):
        code = self.solution(example)
        if self._style(style) == "compact":
            return self.compact_solution(example)
        return _fenced(code) if style == "just" else _completion("The function below passes the tests.",
                                                                  _fenced(code), style)


class HumanEval(CodeTask):
    """OpenAI's HumanEval rows {task_id, prompt, entry_point, canonical_solution, test}. As in
    JustGRPO the program is the row's prompt, then the extracted code (which may redefine the
    function), then the row's test and check(entry_point)."""
    name = "humaneval"

    def from_row(self, row):
        keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
        if not all(isinstance(row[k], str) for k in keys):
            raise ValueError(f"fields {keys} must be strings")
        return {k: row[k] for k in keys}

    def just_prompt(self, example):
        return (JUST_CODE.format(name=example["entry_point"]) +
                f"Here is the function to complete:\n```python\n{example['prompt'].rstrip()}\n```\n")

    def compact(self, example):
        """The def line of the entry point: the prompts of the small models' window (512) must stay short."""
        head = f"def {example['entry_point']}("
        return next((line for line in example["prompt"].splitlines() if line.startswith(head)), head)

    def solution(self, example):
        return example["prompt"] + example["canonical_solution"]

    def compact_solution(self, example):
        return example["canonical_solution"]  # the body: the program puts the row's prompt before it

    def program(self, completion, example):
        return (example["prompt"] + extract_code(completion) + "\n",
                example["test"] + f"\ncheck({example['entry_point']})\n")


class MBPP(CodeTask):
    """Google's MBPP rows {task_id, text, code, test_list, test_setup_code, challenge_test_list}.
    The program is the extracted code; the tests are test_setup_code (ours: JustGRPO's MBPP test
    file is not published; two rows, 367 and 927, need it), then test_list (not the challenge tests)."""
    name = "mbpp"

    def from_row(self, row):
        tests, setup = row["test_list"], row.get("test_setup_code", "")
        if not (isinstance(row["task_id"], int) and isinstance(row["text"], str) and isinstance(row["code"], str)
                and isinstance(setup, str) and tests and all(isinstance(t, str) for t in tests)):
            raise ValueError("needs an int task_id, text, code, test_setup_code and a non-empty test_list of strings")
        return {"task_id": row["task_id"], "text": row["text"], "code": row["code"], "test_list": list(tests),
                "test_setup_code": setup}

    def load(self, path, split=None):
        """The rows of a split of MBPP_SPLITS by task_id (every row when split is None)."""
        if split is not None and split not in MBPP_SPLITS:
            raise ValueError(f"mbpp split {split!r}: use one of {', '.join(MBPP_SPLITS)}")
        rows = super().load(path)
        return rows if split is None else [r for r in rows if r["task_id"] in MBPP_SPLITS[split]]

    def just_prompt(self, example):
        name, params = _mbpp_header(example)
        tests = "\n".join(f"    {t}" for t in example["test_list"])
        return (JUST_CODE.format(name=name) + f"** TARGET FUNCTION **\n{example['text']}\n\n** UNIT TESTS **\n"
                f"Your code should pass unit tests like:\n{tests}\n\nHere is the function to complete:\n"
                f"```python\ndef {name}({params}):\n    \"\"\"{example['text']}\n    \"\"\"\n```\n")

    def compact(self, example):
        return f"{example['text']}\n{example['test_list'][0]}"

    def solution(self, example):
        return example["code"]

    compact_solution = solution

    def program(self, completion, example):
        return extract_code(completion) + "\n", example["test_setup_code"] + "\n" + "\n".join(example["test_list"]) + "\n"


def pass_at_k(n, c, k):
    """The unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) for n samples of which c pass."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

# -----------------------------------------------------------------------------

TASKS = {"gsm8k": GSM8K, "math500": MATH500, "countdown": Countdown, "sudoku": Sudoku,
         "arithmetic": Arithmetic, "humaneval": HumanEval, "mbpp": MBPP}


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}")
    return TASKS[name]()
