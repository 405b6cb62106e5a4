"""Tests of tasks.py (CPU, seconds): rewards on inline samples, adversarial input, generators."""
import json
import random
import re
import time

import pytest

import tasks as T

# -----------------------------------------------------------------------------
# tasks.py

GSM_ROWS = [
    {"question": "Janet has 3 apples and buys 3 more. How many?", "answer": "3+3=<<3+3=6>>6\n#### 6"},
    {"question": "A shop sells 36 boxes of 30. How many items?",
     "answer": "36*30=<<36*30=1080>>1080\n#### 1,080"},
    {"question": "The temperature drops 5 from 2. What is it?", "answer": "2-5=<<2-5=-3>>-3\n#### -3"},
]


def test_get_task_names_and_unknown():
    for name in ("gsm8k", "math500", "countdown", "sudoku"):
        assert T.get_task(name).name == name
    with pytest.raises(ValueError, match="gsm8k, math500, countdown, sudoku"):
        T.get_task("svamp")


def test_gsm8k_reference_is_correct_in_every_style_and_gold_plus_one_is_not():
    task = T.get_task("gsm8k")
    for row in GSM_ROWS:
        ex = task.from_row(row)
        gold = ex["answer"].split("####")[1].strip()
        wrong = str(int(gold.replace(",", "")) + 1)
        for style in T.STYLES:
            ref = task.reference(ex, style)
            assert task.is_correct(ref, ex), (style, ref)
            assert not task.is_correct(ref.replace(gold, wrong), ex), (style, ref)
        ref = task.reference(ex)
        integer = 0.5 if not gold.startswith("-") else 0.0  # d1's isdigit() test
        assert task.reward(ref, ex) == pytest.approx(2.0 + integer + 1.5)
        assert task.reward(ref.replace(gold, wrong), ex) == pytest.approx(integer + 1.5)


def test_gsm8k_comma_gold_and_dotall_fixes():
    task, ex = T.get_task("gsm8k"), GSM_ROWS[1]
    assert T.correctness_reward("<answer>\n1080\n</answer>", "1,080") == 2.0  # reference: 0
    assert T.correctness_reward("<answer>1,080</answer>", "1080") == 2.0
    assert T.int_reward("<answer>1,080</answer>") == 0.5
    assert task.is_correct("<answer>The total is 1,080 items</answer>", ex)
    assert task.is_correct("so \\boxed{1,080}", ex)
    multi_line = "<reasoning>\nstep 1\nstep 2\n</reasoning>\n<answer>\n1080\n</answer>\n"
    assert T.strict_format_reward(multi_line) == 0.5 and T.soft_format_reward(multi_line) == 0.5
    assert T.xml_count_reward(multi_line) == pytest.approx(0.5)
    assert T.strict_format_reward(multi_line + "\n") == 0.5  # `$` matches before a final newline
    assert T.strict_format_reward(multi_line + "\n\n") == 0.0 == T.strict_format_reward(multi_line[:-1] + " ")
    assert T.xml_count_reward(multi_line + "x" * 10) == pytest.approx(0.5 - 0.02)


def test_gsm8k_eval_reads_first_numeric_boxed_then_last_number_of_answer():
    task, ex = T.get_task("gsm8k"), GSM_ROWS[0]
    assert task.is_correct("\\boxed{...} then \\boxed{6} and \\boxed{7}", ex)
    assert not task.is_correct("\\boxed{7} then \\boxed{6}", ex)
    assert task.is_correct("<answer>7</answer> \\boxed{6}", ex)
    assert task.is_correct("<answer>from 7 we get 6</answer>", ex)
    assert not task.is_correct("the answer is 6", ex)  # d1: no \boxed and no <answer> -> wrong
    assert not task.is_correct("<answer>٦</answer>", ex)  # Arabic-Indic six


def test_gsm8k_format_rewards_match_the_reference_regexes_with_dotall():
    strict = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
    soft = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
    parts = ["<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n", "\n", "x", " ",
             "<reasoning>", "</reasoning>", "<answer>", "</answer>"]
    rng, hits = random.Random(0), [0, 0]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.3:
            text = "<reasoning>\n" + text + "\n</answer>\n"
        assert T.strict_format_reward(text) == (0.5 if strict.match(text) else 0.0), repr(text)
        assert T.soft_format_reward(text) == (0.5 if soft.match(text) else 0.0), repr(text)
        hits[0] += bool(strict.match(text))
        hits[1] += bool(soft.match(text))
    assert min(hits) > 20  # the samples exercise both outcomes


MATH_EQUIVALENT = [
    ("\\frac{1}{2}", "\\dfrac{1}{2}"), ("\\frac12", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"),
    (".5", "0.5"), ("1/2", "\\tfrac12"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("10\\%", "10"), ("\\$18", "18"), ("x = 5", "5"),
    ("5 \\text{ cm}", "5"), ("\\sqrt3", "\\sqrt{3}"), ("5.0", "5"), ("-2.00", "-2"),
    ("\\frac1{23}", "\\frac{1}{23}"),
    ("\\!1,\\!000", "1,000"), ("\\text{(C)}", "\\text{(C)}"), ("6 - 5i", "6-5i"),
]
MATH_DIFFERENT = [
    ("\\frac{1}{3}", "\\frac{1}{2}"), ("5", "50"), ("5.5", "5"), ("(3,2)", "(2,3)"), ("x=5", "6"),
    ("5.0", "50"), ("2.01", "2"), ("\\sqrt{3}", "\\sqrt{2}"), ("\\text{(C)}", "\\text{(D)}"), ("-2", "2"),
]


def test_math_normalisation_equivalent_and_different():
    for a, b in MATH_EQUIVALENT:
        assert T.math_equal(a, b) and T.math_equal(b, a), (a, b)
    for a, b in MATH_DIFFERENT:
        assert not T.math_equal(a, b), (a, b)
    assert not T.math_equal(None, "5") and not T.math_equal("5", None)


def test_math_reward_and_is_correct():
    task = T.get_task("math500")
    ex = task.from_row({"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."})
    assert ex["answer"] == "\\frac{1}{2}"  # taken from the solution when the row has no answer
    assert task.is_correct("so \\boxed{\\dfrac12}", ex)
    assert not task.is_correct("\\boxed{\\frac{1}{2}} no wait \\boxed{1}", ex)  # the last \boxed counts
    assert not task.is_correct("\\boxed{\\frac{1}{2}", ex)  # unclosed
    assert not task.is_correct("\\frac{1}{2}", ex)  # no \boxed
    assert task.reward("<answer>\\boxed{0.5}</answer>", ex) == 2.0 + 1.0
    assert task.reward("<answer>1/2</answer>", ex) == 0.75  # tags, no \boxed (reference: always this)
    assert task.reward("\\boxed{1/2}", ex) == 2.0 + 0.5  # \boxed, no tags
    assert task.reward("", ex) == 0.25
    for style in T.STYLES:
        assert task.is_correct(task.reference(ex, style), ex), style
    assert "\\boxed{}" in task.prompt(ex, "just") and task.prompt(ex, "just").startswith("Half of one?")


def test_countdown_adversarial_expressions_are_safe_and_fast():
    task, ex = T.get_task("countdown"), {"numbers": [30, 100, 93], "target": 23}
    right = ["30-(100-93)", " 30 - (100 - 93) ", "30-100+93", "(93+30)-100", "\\boxed{30-(100-93)}",
             "-(100-93)+30", "30-(100-93)\n"]
    wrong = ["9**9**9", "30-(100-93)+0", "(100-93)*30/30", "30-(100-93.0)", "30-(100-93)=23", "23",
             "30 - (100 - 93) - 0 * 9**9**9**9", "__import__('os').system('true')",
             "(" * 10_000 + "1" + ")" * 10_000, "1" * 1_000_000, "30//1-(100-93)", "٣٠-(١٠٠-٩٣)",
             "30-(100-93", "1_0+20-7", "0x1e+5", "30-(100-93) and 1",
             "30 - (" + "(" * 150 + "100-93" + ")" * 150 + ")"]
    start = time.time()
    for expr in right:
        assert task.reward(f"<reasoning>..</reasoning><answer>{expr}</answer>", ex) == 1.0, expr
    for expr in wrong:
        assert task.reward(f"<answer>{expr}</answer>", ex) == 0.1, expr[:40]
    assert task.reward("30-(100-93)", ex) == 0.0 and task.reward("<answer>30-(100-93)", ex) == 0.0
    assert task.reward("<answer>1+1</answer> <answer>30-(100-93)</answer>", ex) == 1.0  # the last one
    assert task.reward("<answer>3/(5-5)</answer>", {"numbers": [3, 5, 5], "target": 1}) == 0.1
    assert task.reward("<answer>(30/100)*93-4.9</answer>", ex) == 0.1
    assert task.is_correct("<answer>30-(100-93)</answer>", ex)
    assert not task.is_correct("<answer>7</answer>", ex)
    assert time.time() - start < 2.0


def test_bad_input_never_raises_and_returns_fast():
    big = ("<answer>" * 60_000 + "\\boxed{" * 60_000 + "<reasoning>\n</reasoning><answer>" * 20_000
           + "9" * 100_000)
    bad = [None, "", 123, b"<answer>6</answer>", ["x"], "\\boxed{", "<answer>", "</answer><answer>",
           "١٢٣", big, big + "</answer>", "{" * 1_000_000, "\\boxed{" + "{" * 500_000]
    examples = {"gsm8k": GSM_ROWS[0], "math500": {"problem": "p", "answer": "6"},
                "countdown": {"numbers": [1, 2, 3], "target": 6},
                "sudoku": {"puzzle": "0" * 16, "solution": "1234341221434321"}}
    start = time.time()
    for name, ex in examples.items():
        task = T.get_task(name)
        for completion in bad:
            r = task.reward(completion, ex)
            assert isinstance(r, float) and -1.0 < r <= 1.5, (name, str(completion)[:30], r)
            assert task.is_correct(completion, ex) is False, (name, str(completion)[:30])
    assert time.time() - start < 10.0


def test_countdown_generate_deterministic_disjoint_and_references_score_one():
    task = T.get_task("countdown")
    train, test = task.generate(150, seed=0), task.generate(40, seed=1)  # seed 0: train, others: held out
    assert train == task.generate(150, seed=0) and test != task.generate(40, seed=2)
    assert train != task.generate(150, seed=7, split="train")
    numbers = [{str(sorted(e["numbers"])) for e in s} for s in (train, test, task.generate(40, seed=2))]
    assert not numbers[0] & (numbers[1] | numbers[2])
    small = [{str(sorted(e["numbers"])) for e in task.generate(n, seed=s, max_number=12)}
             for n, s in ((100, 0), (30, 1))]
    assert not small[0] & small[1]  # 364 number sets only: any leak would show
    with pytest.raises(ValueError, match="split"):
        task.generate(5, seed=0, split="val")
    for ex in train + test:
        assert len(ex["numbers"]) == 3 and all(1 <= x <= 100 for x in ex["numbers"])
        assert 1 <= ex["target"] <= 100
        for style in ("d1", "d1_eval", "compact"):
            assert task.reward(task.reference(ex, style), ex) == 1.0, (ex, style)
        assert len(task.reference(ex, "compact")) <= 40 and len(task.prompt(ex, "compact")) <= 40
        loaded = {"numbers": ex["numbers"], "target": ex["target"]}  # data files keep no expression
        assert task.reward(task.reference(loaded, "compact"), loaded) == 1.0


def count_sudoku_solutions(puzzle):
    """Brute force, independent of tasks.py: try every digit in every empty cell."""
    g = [int(c) for c in puzzle]

    def ok(i, d):
        r, c = divmod(i, 4)
        peers = {r * 4 + k for k in range(4)} | {k * 4 + c for k in range(4)}
        peers |= {(r // 2 * 2 + a) * 4 + c // 2 * 2 + b for a in (0, 1) for b in (0, 1)}
        return all(g[j] != d for j in peers - {i})

    def count(i):
        if i == 16:
            return 1
        if g[i]:
            return count(i + 1) if ok(i, g[i]) else 0
        total = 0
        for d in range(1, 5):
            if ok(i, d):
                g[i] = d
                total += count(i + 1)
                g[i] = 0
        return total
    return count(0)


def test_sudoku_generate_unique_deterministic_disjoint_and_references_score_one():
    task = T.get_task("sudoku")
    assert len(T.SUDOKU_GRIDS) == len(set(T.SUDOKU_GRIDS)) == 288 == count_sudoku_solutions("0" * 16)
    train, test = task.generate(200, seed=0), task.generate(60, seed=3, empties=(8, 12))
    assert train == task.generate(200, seed=0) and train != task.generate(200, seed=4, split="train")
    assert not {e["puzzle"] for e in train} & {e["puzzle"] for e in test}
    one_empty = [task.generate(n, seed=s, empties=(1, 1)) for n, s in ((300, 0), (100, 5))]
    assert not {e["puzzle"] for e in one_empty[0]} & {e["puzzle"] for e in one_empty[1]}  # 4608 puzzles only
    for ex, (lo, hi) in [(e, (6, 10)) for e in train] + [(e, (8, 12)) for e in test]:
        assert lo <= ex["puzzle"].count("0") <= hi
        assert count_sudoku_solutions(ex["puzzle"]) == 1
        assert count_sudoku_solutions(ex["solution"]) == 1
        assert all(p in ("0", s) for p, s in zip(ex["puzzle"], ex["solution"]))
        for style in ("d1", "d1_eval", "compact"):
            ref = task.reference(ex, style)
            assert task.reward(ref, ex) == 1.0 and task.is_correct(ref, ex)
        assert len(task.reference(ex, "compact")) <= 40 and len(task.prompt(ex, "compact")) <= 40


def test_sudoku_reward_cells_and_metrics():
    task = T.get_task("sudoku")
    ex = {"puzzle": "1030040220030301", "solution": "1234341221434321"}  # 8 empty cells
    assert task.reward("<answer>\n1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1\n</answer>", ex) == 1.0
    assert task.reward("<answer>12343412</answer>", ex) == 4 / 8  # padded with 0
    assert task.reward("<answer>1111111111111111</answer><answer>1234341221434321</answer>", ex) == 1.0
    assert task.reward("<answer>١٢٣٤</answer>", ex) == 0.0
    assert task.reward("<answer>٣1234341221434321</answer>", ex) == 1.0  # only ASCII digits are read
    assert task.reward("1234341221434321", ex) == 0.0  # no <answer>
    full = {"puzzle": ex["solution"], "solution": ex["solution"]}
    assert task.reward("<answer>1234341221434321</answer>", full) == 0.0  # d1: no empty cell, 0
    m = T.sudoku_metrics(["<answer>1234341221434321</answer>", "<answer>12343412</answer>", None], [ex] * 3)
    assert m == {"cell_accuracy": (8 + 4 + 0) / 24, "solved": 1 / 3}


def test_prompts_styles_and_prefill():
    gsm, cd, sd = T.get_task("gsm8k"), T.get_task("countdown"), T.get_task("sudoku")
    q = GSM_ROWS[0]["question"]
    assert gsm.prompt(GSM_ROWS[0]) == T.D1_FORMAT + "\n\n" + q and gsm.prompt(GSM_ROWS[0], "just") == q
    assert "\\boxed{...}" in gsm.prompt(GSM_ROWS[0], "d1_eval") and gsm.prefill("d1_eval") == "<reasoning>"
    assert gsm.prefill("d1") == "" and not gsm.reference(GSM_ROWS[0], "d1_eval").startswith("<reasoning>")
    ex = {"numbers": [30, 100, 93], "target": 23}
    assert cd.prompt(ex, "compact") == "Countdown: 30,100,93 -> 23"
    assert "Using only the numbers [30, 100, 93]" in cd.prompt(ex)
    assert "Target: 23" in cd.prompt(ex, "d1_eval")
    assert sd.prompt({"puzzle": "1030040220030301"}, "compact") == "Sudoku 4x4: 1030040220030301"
    for task, style in [(cd, "just"), (sd, "just"), (gsm, "chat")]:
        with pytest.raises(ValueError, match="style"):
            task.prompt(ex if task is cd else {"puzzle": "0" * 16, "question": "q"}, style)
    with pytest.raises(ValueError, match="not generated"):
        gsm.generate(10, seed=0)


def test_loaders_read_published_formats(tmp_path):
    p = tmp_path / "gsm.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in GSM_ROWS) + "\n\n")
    assert T.get_task("gsm8k").load(p) == GSM_ROWS
    p = tmp_path / "cd_test.jsonl"
    p.write_text('{"input": "30,100,93", "output": "23"}\n{"numbers": [1, 2, 3], "target": 6}\n')
    assert T.get_task("countdown").load(p) == [{"numbers": [30, 100, 93], "target": 23},
                                               {"numbers": [1, 2, 3], "target": 6}]
    p = tmp_path / "sudoku.csv"
    p.write_text("Puzzle,Solution\n1030040220030301,1234341221434321\n")
    assert T.get_task("sudoku").load(p) == [{"puzzle": "1030040220030301", "solution": "1234341221434321"}]
    p = tmp_path / "math.jsonl"
    p.write_text(json.dumps({"problem": "p", "solution": "s \\boxed{\\frac{1}{2}}", "answer": "1/2"}) + "\n")
    assert T.get_task("math500").load(p)[0]["answer"] == "1/2"  # the file's answer field wins


def test_malformed_data_files_name_file_and_line(tmp_path):
    good = json.dumps(GSM_ROWS[0]) + "\n"
    cases = [("gsm8k", "bad.jsonl", good + "\n{not json\n", 3),
             ("gsm8k", "nogold.jsonl", good + json.dumps({"question": "q", "answer": "4"}), 2),
             ("math500", "m.jsonl", json.dumps({"problem": "p", "solution": "no box"}) + "\n", 1),
             ("countdown", "c.jsonl", '{"input": "1,2,3", "output": "6"}\n{"input": "1,x,3"}\n', 2),
             ("sudoku", "s.csv", "Puzzle,Solution\n1030040220030301,1234341221434321\n1030040220030301,1234\n", 3),
             ("sudoku", "h.csv", "a,b\n1,2\n", 2)]
    for name, fname, text, line in cases:
        p = tmp_path / fname
        p.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{fname}:{line}:")):
            T.get_task(name).load(p)
    p = tmp_path / "data.txt"
    p.write_text("x")
    with pytest.raises(ValueError, match="data.txt"):
        T.get_task("gsm8k").load(p)
