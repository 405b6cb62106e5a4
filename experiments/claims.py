"""
The two papers' claims on a small testbed, each with its numbers, interval and a verdict.

    python experiments/claims.py                       # one GPU: results/claims.md, claims.json, claims_*.png
    python experiments/claims.py --quick               # the whole pipeline on the CPU with tiny settings
    python experiments/claims.py --stages rl,report    # rerun stages; finished ones are read from --work_dir

Stages (each writes its JSON into --work_dir and is skipped when that file exists):
  sft     train the testbed model with train_sft.py (byte tokenizer, Sudoku + Countdown + arithmetic
          weighted 1:1:4, responses EOS-padded to a 256-slot window), pick the checkpoint on the validation split,
          save it to --model (skipped when --model exists: the bundled checkpoints/testbed)
  eval    every decoding schedule on --n_test test problems per task at L = 128 and 256 (C1, C2, C3, and
          the "before" half of F4)
  passk   pass@k and decode-time entropy of AR, semi-AR and full-diffusion order at temperature 1 (F1, F2)
  rl      CJ-GRPO (ASS + EOSER and semi-AR rollouts), diffu-GRPO, JustGRPO (all positions and the top 25%
          by entropy), --seeds each, equal rollout budgets, as concurrent processes on one GPU (C4, C5,
          F3, F4, F5); each run is then scored on the test problems
  report  verdicts, results/claims.{md,json} and the plots (matplotlib, an optional install)

Claims: C1-C5 from "Taming Masked Diffusion LMs via Consistency Trajectory RL with Fewer Decoding
Steps", F1-F5 from "The Flexibility Trap". Every verdict rule is fixed in `verdicts` below, before
any number is seen: a difference "holds" when its 95% interval lies on the claimed side of the
margin, "does not hold" when it lies on the other side, otherwise "inconclusive". Problems are
drawn from the test split (tasks.py hashes problems into train / validation / test); the
checkpoint and the in-run RL curves use the validation split only.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import numpy as np
import torch
from tqdm import tqdm

import train_rl as RL
from model import LLaDA, load_tokenizer
from sample import generate
from tasks import get_task
from train_common import autocast, config_from_args

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ClaimsConfig:
    """The papers' claims on a small testbed (experiments/claims.py); every field is a --flag."""
    stages: str = "sft,eval,passk,rl,report"
    quick: bool = False               # tiny settings, CPU, minutes: checks the pipeline, not the claims
    model: str = "checkpoints/testbed"  # the testbed checkpoint; the sft stage trains it when missing
    work_dir: str = "out/claims"      # per-stage JSON, RL runs, logs
    results_dir: str = "results"      # claims.md, claims.json, claims_*.png
    device: str = ""                  # "" = cuda if available
    n_test: int = 1000                # test problems per task (evaluation claims and RL scores)
    batch_size: int = 1000            # problems per generate() call
    # the testbed model (train_sft.py)
    sft_steps: int = 4000
    sft_batch: int = 256
    sft_lr: float = 6e-4
    sft_cooldown: float = 0.3         # share of the last steps whose lr decays to zero
    sft_n_train: int = 100000         # generated training problems per task
    sft_task_weights: str = "1,1,4"   # sudoku, countdown, arithmetic shares of a batch: an even mix saturates
                                      # Sudoku before arithmetic is learnt (results/testbed_probes_h100.json)
    d_model: int = 448                # ~20M parameters, 39 MB in bf16
    n_layers: int = 8
    n_heads: int = 7
    mlp_hidden_size: int = 1216
    window: int = 256                 # SFT response window: covers every L evaluated
    # pass@k (F1, F2)
    passk_task: str = "arithmetic"
    passk_problems: int = 48
    passk_samples: int = 64           # n samples per problem; pass@k for k = 1, 2, 4, ..., n
    # RL (C4, C5, F3, F4, F5)
    seeds: str = "0,1,2,3,4,5"        # RL seeds; each half gives its own verdicts (does a verdict survive a rerun?)
    rl_steps: int = 12                # optimizer steps per run: 12 x 16 prompts x G 6 = 1152 rollouts
    rl_prompts: int = 16
    rl_group: int = 6
    rl_lr: float = 5e-5               # one learning rate for every algorithm (not tuned: see the report)
    rl_gen_length: int = 128
    rl_eval_every: int = 10           # validation accuracy during training (the curves)
    rl_eval_n: int = 256
    rl_n_test: int = 500              # test problems each RL run is scored on
    jobs: int = 8                     # RL runs at a time sharing the GPU (16 at once ran out of an H100's memory)
    competent: float = 0.2            # a task enters a claim only if some decoder solves this share of it


def quick_overrides(c):
    """A pipeline check in a few minutes on two CPU cores; its numbers mean nothing."""
    if c.work_dir == ClaimsConfig.work_dir:
        c.work_dir += "-quick"
    for k, v in dict(model=f"{c.work_dir}/testbed", results_dir=f"{c.work_dir}/results", device="cpu", n_test=8,
                     batch_size=8, sft_steps=12, sft_batch=8, sft_lr=1e-3, sft_n_train=200, d_model=32, n_layers=2, n_heads=2,
                     mlp_hidden_size=64, window=128, passk_problems=4, passk_samples=4, seeds="0", rl_steps=2, rl_n_test=8,
                     rl_gen_length=64,
                     rl_prompts=2, rl_group=2, rl_eval_every=1, rl_eval_n=4, jobs=2,
                     competent=0.0).items():  # every task judged, so that every verdict path runs
        setattr(c, k, v)
    return c

# -----------------------------------------------------------------------------
# statistics


def wilson(k, n, z=1.96):
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))


def bootstrap_diff(a, b, reps=2000, seed=0):
    """mean(a - b) over paired problems with a 95% percentile-bootstrap interval (problems resampled)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(d), (reps, len(d)))
    means = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


MIN_SEEDS = 3  # an RL comparison needs this many seeds of both arms for a verdict
# Student's t, 97.5% quantile, by degrees of freedom; past 30 the value at 30 (slightly wide, never narrow)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042}


def seed_interval(diffs):
    """Mean of per-seed paired differences with a 95% t interval (one seed: no interval)."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return float(d.mean()), -math.inf, math.inf
    half = T975[min(len(d) - 1, 30)] * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def pass_at_k(n, c, k):
    """The unbiased estimator 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def verdict(lo, hi, margin=0.0):
    """The claimed direction is "greater than margin"."""
    return "holds" if lo > margin else "does not hold" if hi < margin else "inconclusive"


def both(*vs):
    """A claim made of several parts: it fails if one part fails, holds only if every part holds."""
    return "does not hold" if "does not hold" in vs else "holds" if set(vs) == {"holds"} else "inconclusive"

# -----------------------------------------------------------------------------
# decoding on test problems


def end_of_text(tok, ids):
    """Index of the first end token (EOS or end of turn) of a generation window, or its length."""
    ends = [i for i, t in enumerate(ids) if t in (tok.eos_id, tok.eot_id)]
    return ends[0] if ends else len(ids)


@torch.no_grad()
def run_decoder(model, tok, task, examples, L, kw, device, batch_size, temperature=0.0, keep=False):
    """Greedy (or sampled) decoding of every example with one schedule. Per example: correct, trapped
    (the first end token comes before "</answer>": the answer was cut by an early EOS), steps taken;
    with keep, also the committed tokens, their commit steps and decode-time entropies."""
    out = dict(correct=[], trapped=[], steps=[], tokens=[], step_of=[], entropy=[])
    t0 = time.time()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        prompts, attn = RL.encode_prompts(tok, task, chunk, "compact", device)
        P = prompts.size(1)
        with autocast(device):
            x, traj = generate(model, prompts, attention_mask=attn, gen_length=L, temperature=temperature,
                               return_trajectory=True, record_entropy=keep, **kw)
        steps = (traj.step_of[:, P:].amax(1) + 1).tolist()
        for j, (row, ex) in enumerate(zip(x[:, P:].tolist(), chunk)):
            text = tok.decode(row, skip_special=True)
            out["correct"].append(int(task.is_correct(text, ex)))
            out["trapped"].append(int("</answer>" not in tok.decode(row[:end_of_text(tok, row)])))
            out["steps"].append(steps[j])
            if keep:
                n = end_of_text(tok, row) + 1  # the content and the first end token
                out["tokens"].append(row[:n])
                out["step_of"].append(traj.step_of[j, P:P + n].tolist())
                out["entropy"].append(traj.entropy[j, P:P + n].tolist())
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["seconds"] = time.time() - t0
    return out


def summary(res, L):
    n, k = len(res["correct"]), sum(res["correct"])
    calls = float(np.mean(res["steps"]))
    return dict(n=n, accuracy=k / n, ci=wilson(k, n), eos_trap=float(np.mean(res["trapped"])),
                trap_ci=wilson(sum(res["trapped"]), n), model_calls=calls, tokens_per_step=L / calls,
                seconds=res["seconds"], correct="".join(map(str, res["correct"])))


def schedule_grid(L, quick=False):
    """(family, label, generate kwargs): full diffusion, semi-AR and ASS, each with and without EOSER,
    over step counts from log2(L) to L/2, plus AR order and the adaptive decoders."""
    S, nb = L.bit_length() - 1, L // 32
    grid = []
    for steps in sorted({S, L // 2} if quick else {S, L // 8, L // 4, L // 2}):
        grid += [("full diffusion", f"linear, {steps} steps", dict(schedule="linear", steps=steps)),
                 ("full diffusion + EOSER", f"linear + EOSER, {steps} steps", dict(schedule="linear", steps=steps, eoser=True))]
        semi = max(nb, steps // nb * nb)  # semi-AR needs a whole number of steps per 32-slot block
        grid += [("semi-AR block 32", f"semi-AR block 32, {semi} steps", dict(schedule="linear", steps=semi, block_length=32))]
    grid += [("ASS", f"ASS, {S} steps", dict(schedule="ass", steps=S)),
             ("ASS + EOSER", f"ASS + EOSER, {S} steps", dict(schedule="ass", steps=S, eoser=True)),
             ("AR order", f"AR order, {L} steps", dict(schedule="linear", steps=L, block_length=1))]
    grid += [("threshold", f"threshold {t}", dict(schedule="threshold", threshold=t)) for t in (0.9, 0.7, 0.5)]
    grid += [("entropy bound", f"entropy bound {b}", dict(schedule="entropy_bound", entropy_bound=b)) for b in (0.5, 1.0, 2.0)]
    if L > 128:  # the costly points only at L = 128 (AR order: L calls; F4's decoders are read there)
        grid = [g for g in grid if g[0] != "AR order" and g[1] not in ("threshold 0.7", "threshold 0.5", "entropy bound 0.5")]
    if quick:  # an untrained model is never confident: AR order and the adaptive decoders take L calls each
        grid = [g for g in grid if g[0] != "AR order"]
    seen, unique = set(), []
    for row in grid:  # semi-AR rounds some step counts to the same value
        if row[1] not in seen:
            seen.add(row[1])
            unique.append(row)
    return unique


PARALLEL = [r for r in schedule_grid(128) if r[0] in ("threshold", "entropy bound")]  # F4's decoders

# -----------------------------------------------------------------------------
# stages


def stage_sft(c, device):
    model_dir = model_path(c)
    if (model_dir / "config.json").is_file():
        return dict(reused=str(c.model))
    run = Path(c.work_dir) / "sft"
    if run.exists():  # a stage that did not finish: its folder is ours to redo
        shutil.rmtree(run)
    every = max(1, c.sft_steps // 5)
    cmd = [sys.executable, str(ROOT / "train_sft.py"), "--out_dir", str(run), "--tasks", "sudoku,countdown,arithmetic",
           "--gen_length", str(c.window), "--d_model", str(c.d_model), "--n_layers", str(c.n_layers),
           "--n_heads", str(c.n_heads), "--mlp_hidden_size", str(c.mlp_hidden_size), "--max_sequence_length", "1024",
           "--batch_size", str(c.sft_batch), "--max_steps", str(c.sft_steps), "--lr", str(c.sft_lr),
           "--cooldown", str(c.sft_cooldown), "--task_weights", c.sft_task_weights,
           "--eval_every", str(every), "--save_every", str(every), "--keep_every_save", "--device", device.type,
           "--n_train", str(c.sft_n_train), "--eval_n", "256" if not c.quick else "8"]
    if device.type == "cuda":
        cmd.append("--compile")
    t0 = time.time()
    if subprocess.run(cmd).returncode:
        raise SystemExit(f"sft stage: train_sft.py failed (its output is above); command: {' '.join(cmd)}")
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    evals = [r for r in rows if any(k.startswith("acc_") for k in r)]
    score = lambda r: np.mean([v for k, v in r.items() if k.startswith("acc_")])
    best = max(evals, key=score)  # the validation split: tasks.py never draws test problems for it
    LLaDA.from_pretrained(run / f"step_{best['step']}").save_pretrained(model_dir, dtype=torch.bfloat16,
                                                                         max_shard_bytes=11 * 2**20)  # files under 12 MB
    return dict(picked_step=best["step"], validation=best, minutes=(time.time() - t0) / 60,
                curve=[{k: v for k, v in r.items() if k == "step" or k.startswith("acc_")} for r in evals])


def stage_eval(c, device):
    model, tok = load_model(c, device)
    Ls = [c.rl_gen_length] if c.quick else [128, 256]
    partial = Path(c.work_dir) / "eval_partial.json"  # a stage cut short goes on from the last finished (task, L)
    out = json.loads(partial.read_text()) if partial.is_file() else []
    for task_name in ("sudoku", "countdown", "arithmetic"):
        task = get_task(task_name)
        examples = task.generate(c.n_test, seed=1)
        for L in Ls:
            if any(r["task"] == task_name and r["L"] == L for r in out):
                continue
            grid = schedule_grid(L, c.quick)
            if c.quick and task_name not in RL_TASKS:  # F4 reads the adaptive decoders on the RL tasks only
                grid = [g for g in grid if g[0] not in ("threshold", "entropy bound")]
            for family, label, kw in tqdm(grid, desc=f"{task_name} L={L}"):
                res = run_decoder(model, tok, task, examples, L, kw, device, c.batch_size)
                out.append(dict(task=task_name, L=L, family=family, schedule=label, **summary(res, L)))
            partial.write_text(json.dumps(out))
    return dict(rows=out)


ORDERS = [("AR order", dict(block_length=1)), ("semi-AR block 4", dict(block_length=4)),
          ("semi-AR block 32", dict(block_length=32)), ("full diffusion (low confidence)", dict())]


def token_class(tok, t):
    if t in (tok.eos_id, tok.eot_id):
        return "end"
    s = tok.decode([t])
    return "digit" if s.isdigit() else "operator" if s in "+-*/=" else "newline" if s == "\n" else "text and tags"


def stage_passk(c, device):
    """F1 and F2: n samples per problem at temperature 1, every order decoding one slot per step."""
    model, tok = load_model(c, device)
    task, L = get_task(c.passk_task), c.rl_gen_length
    problems = task.generate(c.passk_problems, seed=1)
    examples = [ex for ex in problems for _ in range(c.passk_samples)]
    ks = [2 ** i for i in range(int(math.log2(c.passk_samples)) + 1)]
    out = {}
    for name, kw in ORDERS:
        torch.manual_seed(0)
        res = run_decoder(model, tok, task, examples, L, dict(schedule="linear", steps=L, **kw), device,
                          c.batch_size * 4, temperature=1.0, keep=True)
        per_problem = np.asarray(res["correct"]).reshape(len(problems), c.passk_samples).sum(1)
        passk = {k: [pass_at_k(c.passk_samples, int(n_c), k) for n_c in per_problem] for k in ks}
        # decode-time entropy over the content slots (EOS padding is near-certain and would dilute it)
        ends = (tok.eos_id, tok.eot_id)
        content = [e[:-1] if t and t[-1] in ends else e for t, e in zip(res["tokens"], res["entropy"])]
        ent = [float(np.mean(e)) if e else 0.0 for e in content]
        classes = {}
        for toks, steps, ents in zip(res["tokens"], res["step_of"], res["entropy"]):
            for t, s, e in zip(toks, steps, ents):
                cl = classes.setdefault(token_class(tok, t), dict(n=0, step=0.0, entropy=0.0))
                cl["n"] += 1
                cl["step"] += s / L
                cl["entropy"] += e
        classes = {k: dict(share=v["n"], commit_step=v["step"] / v["n"], entropy=v["entropy"] / v["n"]) for k, v in classes.items()}
        total = sum(v["share"] for v in classes.values())
        for v in classes.values():
            v["share"] /= total
        out[name] = dict(ks=ks, pass_at_k=[float(np.mean(passk[k])) for k in ks],
                         per_problem=[passk[k] for k in ks], entropy=ent,
                         mean_entropy=float(np.mean(ent)), classes=classes, seconds=res["seconds"])
    return out

# -----------------------------------------------------------------------------
# RL: one process per (task, arm, seed), all sharing the GPU


def rl_arms(L):
    """Every arm trains on the same rollout budget; the decoding its rollouts use is its own."""
    # mu 2 and a 5-step warm-up for the two clipped-ratio algorithms, as these runs were first made
    # (train_rl's cj_grpo default of mu 1 sizes the bundled model's 3-minute job)
    semi = dict(schedule="linear", block_length=32, diffusion_steps=L // 4, eoser=False, num_iterations=2, warmup=5)
    # the EOS tail skipped: after the first EOS the model is near certain (bench/bench_train.py: cosine to the
    # full gradient >= 0.99999997), and it halves the cost of the arithmetic runs
    just = dict(algo="just_grpo", skip_eos_tail=True)
    return {"cj_grpo, ASS + EOSER rollout": dict(algo="cj_grpo", schedule="ass", eoser=True, num_iterations=2, warmup=5),
            "cj_grpo, semi-AR rollout": dict(algo="cj_grpo", **semi),
            "diffu_grpo, semi-AR rollout": dict(algo="diffu_grpo", **semi),
            "just_grpo, AR rollout": just,
            "just_grpo, top 25% entropy": dict(just, top_entropy=0.25)}


RL_TASKS = {"arithmetic": list(rl_arms(128)), "sudoku": list(rl_arms(128))}


def rl_flags(c, task, arm, seed, out_dir):
    flags = dict(init=c.model, task=task, out_dir=out_dir, seed=seed, steps=c.rl_steps, prompts_per_step=c.rl_prompts,
                 group_size=c.rl_group, lr=c.rl_lr, gen_length=c.rl_gen_length, eval_every=c.rl_eval_every,
                 eval_n=c.rl_eval_n, save_every=c.rl_steps, device=c.device, n_train=20000 if not c.quick else 200,
                 micro_batch=c.rl_prompts * c.rl_group, stack=128, **rl_arms(c.rl_gen_length)[arm])
    return [f"--{k}={v}" for k, v in flags.items()]


def rl_job(c, spec):
    """One RL run (train_rl.py), then its test scores: with its own rollout decoding, ASS + EOSER at
    log2(L) steps, semi-AR blocks of 32 at L/4 steps, and (JustGRPO) F4's parallel decoders."""
    out_dir = Path(spec["out_dir"])
    cfg = config_from_args(RL.RLConfig, rl_flags(c, spec["task"], spec["arm"], spec["seed"], str(out_dir)),
                           defaults_by=("algo", RL.ALGO_DEFAULTS))  # each algorithm with its reference's optimizer
    t0 = time.time()
    RL.main(cfg)
    minutes = (time.time() - t0) / 60
    device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = LLaDA.from_pretrained(out_dir / "latest", device=device).eval()
    tok, task, L = load_tokenizer(out_dir / "latest"), get_task(spec["task"]), c.rl_gen_length
    examples = task.generate(c.rl_n_test, seed=1)
    decoders = {"own": RL.decode_kwargs(cfg, cfg.algo), "ASS + EOSER": dict(schedule="ass", eoser=True),
                "semi-AR block 32": dict(schedule="linear", steps=L // 4, block_length=32)}
    if cfg.algo == "just_grpo":
        decoders.update({label: kw for _, label, kw in PARALLEL})
    scores = {name: summary(run_decoder(model, tok, task, examples, L, kw, device, c.batch_size), L)
              for name, kw in decoders.items()}
    curve = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    result = dict(**spec, minutes=minutes, scores=scores, curve=curve)
    (out_dir / "result.json").write_text(json.dumps(result))


def rl_start(ev, c):
    """Per RL task, the best test accuracy of any decoder at the RL length before training."""
    return {t: max(r["accuracy"] for r in ev["rows"] if r["task"] == t and r["L"] == c.rl_gen_length) for t in RL_TASKS}


def stage_rl(c, device):
    root = Path(c.work_dir) / "rl"
    root.mkdir(parents=True, exist_ok=True)
    ev = Path(c.work_dir) / "eval.json"
    if not ev.is_file():
        raise SystemExit(f"rl stage: {ev} is missing: run the eval stage first (it decides which tasks the model "
                         f"is competent on)")
    # a task the model cannot yet do gives nearly every group one reward: no signal, and no verdict (rl_claims)
    tasks = [t for t, a in rl_start(json.loads(ev.read_text()), c).items() if a >= c.competent]
    specs = [dict(task=t, arm=a, seed=s, out_dir=str(root / f"{t}-{a.split(',')[0]}-{i}-s{s}"))
             for s in map(int, c.seeds.split(",")) for t in tasks for i, a in enumerate(RL_TASKS[t])]
    # seed by seed, so that a stage cut short leaves whole seeds of every arm; within a seed the longest first
    cost = ["just_grpo, AR rollout", "cj_grpo, semi-AR rollout", "just_grpo, top 25% entropy"]
    todo = sorted((s for s in specs if not (Path(s["out_dir"]) / "result.json").is_file()),
                  key=lambda s: (s["seed"], cost.index(s["arm"]) if s["arm"] in cost else len(cost), s["task"] != "arithmetic"))
    for s in todo:  # a run killed earlier: its folder holds no result, start it again
        shutil.rmtree(s["out_dir"], ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running, failed, bar = [], [], tqdm(total=len(todo), desc="RL runs")
    argv = [f"--{k}={getattr(c, k)}" for k in ClaimsConfig.__dataclass_fields__ if k != "stages"]
    while todo or running:
        while todo and len(running) < c.jobs:
            s = todo.pop(0)
            log = open(Path(c.work_dir) / f"rl-{Path(s['out_dir']).name}.log", "w")
            p = subprocess.Popen([sys.executable, __file__, "--stages=rl_job", f"--rl_job={json.dumps(s)}", *argv],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((p, s, log))
        time.sleep(1)
        for p, s, log in [r for r in running if r[0].poll() is not None]:
            running.remove((p, s, log))
            log.close()
            bar.update()
            if p.returncode:  # the others go on: a rerun of the stage redoes only the failed runs
                failed.append(f"{s['out_dir']} (exit {p.returncode}, log {log.name})")
                tqdm.write(f"RL run failed: {failed[-1]}")
    if failed:
        raise SystemExit(f"{len(failed)} RL runs failed: " + "; ".join(failed))
    return dict(runs=[json.loads((Path(s["out_dir"]) / "result.json").read_text()) for s in specs])

# -----------------------------------------------------------------------------
# verdicts


def correct_vec(row):
    return np.array([int(ch) for ch in row["correct"]])


def find(rows, **kw):
    hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    if not hits:
        raise KeyError(f"no evaluation row with {kw}")
    return hits[0]


def fmt_ci(x, lo, hi, pct=True):
    f = (lambda v: f"{100 * v:+.1f}") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(x)} [{f(lo)}, {f(hi)}]"


def verdicts(ev, pk, rl, c):
    """Each claim: what the paper reports, our measure, our number with its interval, the verdict."""
    rows, claims = ev["rows"], []
    L = max(r["L"] for r in rows)
    S = L.bit_length() - 1

    def claim(cid, paper, measure, number, v, detail):
        claims.append(dict(id=cid, paper=paper, measure=measure, number=number, verdict=v, detail=detail))

    best = {t: max(r["accuracy"] for r in rows if r["task"] == t and r["L"] == L) for t in ("sudoku", "countdown", "arithmetic")}
    tasks = [t for t, a in best.items() if a >= c.competent]  # near the floor every decoder ties: no evidence either way
    left_out = "; ".join(f"{t} left out (best decoder {100 * a:.1f}% < {100 * c.competent:.0f}%)" for t, a in best.items()
                         if t not in tasks)
    tail = lambda parts: "; ".join(parts + ([left_out] if left_out else []))
    judged = lambda vs: combine(vs) if vs else "not measured"

    # C1: at L/2 steps, full diffusion vs semi-AR, accuracy and the early-EOS share, per task
    parts, vs = [], []
    for t in tasks:
        full, semi = find(rows, task=t, L=L, schedule=f"linear, {L // 2} steps"), find(rows, task=t, L=L, family="semi-AR block 32", model_calls=L // 2)
        acc = bootstrap_diff(correct_vec(semi), correct_vec(full))
        trap = (full["eos_trap"], *full["trap_ci"])
        vs.append(both(verdict(trap[1], trap[2], 0.05), verdict(acc[1], acc[2])))
        over = ", ".join(f"{r['model_calls']:.0f}: {100 * r['eos_trap']:.0f}%" for r in rows
                         if r["task"] == t and r["L"] == L and r["family"] == "full diffusion")
        parts.append(f"{t}: trap {100 * trap[0]:.1f}% [{100 * trap[1]:.1f}, {100 * trap[2]:.1f}] vs semi-AR "
                     f"{100 * semi['eos_trap']:.1f}%; semi-AR - full {fmt_ci(*acc)} pts; full-diffusion trap by steps {over}")
    claim("C1", "full-diffusion decoding commits EOS early (the EOS trap) and does much worse than semi-AR blocks",
          f"L = {L}, {L // 2} steps, greedy: share of answers cut by an early EOS (Wilson 95%), and semi-AR minus "
          f"full-diffusion accuracy (paired bootstrap 95%); holds if the trap share's interval is above 5% and "
          f"semi-AR is better, does not hold if either interval lies on the other side", tail(parts), judged(vs), "per task, majority")
    # C2: EOSER on full diffusion (linear and ASS) at few steps; above semi-AR on some task
    parts, vs, above = [], [], []
    for t in tasks:
        for fam, lab in (("linear", f"linear, {S} steps"), ("ASS", f"ASS, {S} steps")):
            eo = find(rows, task=t, L=L, schedule=lab.replace(",", " + EOSER,"))
            d = bootstrap_diff(correct_vec(eo), correct_vec(find(rows, task=t, L=L, schedule=lab)))
            vs.append(verdict(d[1], d[2]))
            parts.append(f"{t} {fam}: {fmt_ci(*d)}")
        best = max((r for r in rows if r["task"] == t and r["L"] == L and "EOSER" in r["family"]), key=lambda r: r["accuracy"])
        semi = find(rows, task=t, L=L, family="semi-AR block 32", model_calls=best["model_calls"]) if any(
            r["task"] == t and r["L"] == L and r["family"] == "semi-AR block 32" and r["model_calls"] == best["model_calls"] for r in rows) else None
        if semi is not None:
            d = bootstrap_diff(correct_vec(best), correct_vec(semi))
            above.append(f"{t}: {best['schedule']} - {semi['schedule']} {fmt_ci(*d)}")
    claim("C2", "EOSER removes the trap and lifts full-diffusion decoding, on some tasks above semi-AR",
          f"L = {L}, {S} steps: accuracy with EOSER minus without (linear and ASS, paired bootstrap); the best "
          f"EOSER decoder minus semi-AR at equal steps", tail(parts) + (" | " + "; ".join(above) if above else ""),
          judged(vs), "two comparisons per task (linear / ASS), majority; the comparison with semi-AR is shown, not judged")
    # C3: ASS + EOSER at log2 L is the best few-step decoder and close to L/2-step baselines
    parts, vs = [], []
    for t in tasks:
        ae = find(rows, task=t, L=L, schedule=f"ASS + EOSER, {S} steps")
        few = [r for r in rows if r["task"] == t and r["L"] == L and r["model_calls"] <= L // 32 + S and r is not ae
               and r["family"] not in ("threshold", "entropy bound")]
        runner = max(few, key=lambda r: r["accuracy"])
        d_few = bootstrap_diff(correct_vec(ae), correct_vec(runner))
        base = max((r for r in rows if r["task"] == t and r["L"] == L and r["model_calls"] == L // 2), key=lambda r: r["accuracy"])
        d_half = bootstrap_diff(correct_vec(ae), correct_vec(base))
        ok = d_few[1] > -0.02 and d_few[0] >= 0 and d_half[1] > -0.10
        bad = d_few[2] < 0 or d_half[2] < -0.10
        vs.append("holds" if ok else "does not hold" if bad else "inconclusive")
        parts.append(f"{t}: ASS+EOSER {100 * ae['accuracy']:.1f}% - best other few-step ({runner['schedule']}) "
                     f"{fmt_ci(*d_few)}; - best {L // 2}-step ({base['schedule']}) {fmt_ci(*d_half)}")
    claim("C3", "ASS + EOSER at log2(L) steps is the best few-step decoder and comes close to L/2-step baselines",
          f"L = {L}: ASS + EOSER ({S} steps) minus the best other fixed-step decoder with at most {L // 32 + S} calls "
          f"(threshold and entropy-bound decoders, whose calls vary by problem, are not among them), and "
          f"minus the best {L // 2}-step decoder; holds if first >= 0 with its interval above -2 pts and the "
          f"second's interval above -10 pts", tail(parts), judged(vs), "per task, majority")
    if pk:
        ar, full = pk["AR order"], pk["full diffusion (low confidence)"]
        kmax = ar["ks"][-1]
        d_hi = bootstrap_diff(ar["per_problem"][-1], full["per_problem"][-1])
        d_lo = bootstrap_diff(ar["per_problem"][0], full["per_problem"][0])
        order = " > ".join(f"{n} {100 * v['pass_at_k'][-1]:.1f}%" for n, v in sorted(pk.items(), key=lambda kv: -kv[1]["pass_at_k"][-1]))
        claim("F1", "AR order reaches a higher pass@k than arbitrary (low-confidence) order as k grows; smaller blocks raise pass@k",
              f"{c.passk_task}, {c.passk_problems} problems x {c.passk_samples} samples, T = 1, one slot per step: "
              f"pass@{kmax} of AR minus full diffusion (bootstrap over problems)",
              f"pass@{kmax}: {fmt_ci(*d_hi)} pts; pass@1: {fmt_ci(*d_lo)} pts; pass@{kmax} by order: {order}",
              verdict(d_hi[1], d_hi[2]), "")
        per_problem = lambda v: np.asarray(v["entropy"]).reshape(-1, c.passk_samples).mean(1)
        d = bootstrap_diff(per_problem(ar), per_problem(full))
        cls = full["classes"]
        late = sorted(cls, key=lambda k: -cls[k]["commit_step"])
        claim("F2", "arbitrary order bypasses high-uncertainty tokens: lower entropy at the moment of decoding",
              "mean entropy (nats) of each content token's distribution when it is decoded, AR minus full diffusion "
              "(each problem's mean over its samples, bootstrap over problems); the token classes full diffusion decodes last",
              f"{fmt_ci(*d, pct=False)} nats (AR {ar['mean_entropy']:.3f}, full diffusion {full['mean_entropy']:.3f}); "
              "deferred last: " + ", ".join(f"{k} (mean commit at {100 * cls[k]['commit_step']:.0f}% of L)" for k in late),
              verdict(d[1], d[2]), "")
    if rl:
        rl_claims(rl["runs"], ev, c, claim)
        rerun_check(rl["runs"], ev, c, claims)
    return claims


def rerun_check(runs, ev, c, claims):
    """A verdict must survive a rerun with other seeds: with at least 2 x MIN_SEEDS seeds, each half
    of them is judged on its own, and a holds / does not hold that either half does not repeat
    becomes inconclusive."""
    seeds = sorted({r["seed"] for r in runs})
    if len(seeds) < 2 * MIN_SEEDS:
        return
    halves = [seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]]
    again = []
    for half in halves:
        got = {}
        rl_claims([r for r in runs if r["seed"] in half], ev, c, lambda cid, *rest: got.__setitem__(cid, rest[3]))
        again.append(got)
    for cl in claims:
        if cl["id"] not in again[0]:
            continue
        cl["rerun"] = {",".join(map(str, h)): g[cl["id"]] for h, g in zip(halves, again)}
        cl["all_seeds"] = cl["verdict"]
        if cl["verdict"] in ("holds", "does not hold") and any(v != cl["verdict"] for v in cl["rerun"].values()):
            cl["verdict"] = "inconclusive"


def combine(vs):
    """Several comparisons of one claim: the majority verdict, inconclusive without a majority."""
    for v in ("holds", "does not hold"):
        if vs.count(v) * 2 > len(vs):
            return v
    return "inconclusive"


def rl_claims(runs, ev, c, claim):
    """C4, C5, F3, F4, F5 from the RL runs, judged on the RL tasks where the model starts competent
    (some decoder solves --competent of the task at the RL length; below that nearly every group has
    one reward, so no algorithm gets a signal). A comparison uses the seeds both arms finished; with
    fewer than MIN_SEEDS of them the verdict is "not measured" (its numbers are still shown)."""
    L = c.rl_gen_length
    cj, semi, diffu, just, top = list(rl_arms(L))
    start = rl_start(ev, c)
    tasks = [t for t in RL_TASKS if start[t] >= c.competent]
    left_out = "".join(f"; {t} not judged (best decoder {100 * a:.1f}% < {100 * c.competent:.0f}% before RL)"
                       for t, a in start.items() if t not in tasks)

    def result(task, arm, seed):
        return next((r for r in runs if r["task"] == task and r["arm"] == arm and r["seed"] == seed), None)

    def seeds(task, *arms):
        return sorted(set.intersection(*({r["seed"] for r in runs if r["task"] == task and r["arm"] == a} for a in arms)))

    def compare(task, a, b, decoder_a, decoder_b=None):
        """(by-seed interval, pooled bootstrap, mean a, mean b, seeds) of accuracy a minus b, or None."""
        common = seeds(task, a, b)
        if not common:
            return None
        sa = [result(task, a, s)["scores"][decoder_a] for s in common]
        sb = [result(task, b, s)["scores"][decoder_b or decoder_a] for s in common]
        by_seed = seed_interval([x["accuracy"] - y["accuracy"] for x, y in zip(sa, sb)])
        pooled = bootstrap_diff(np.concatenate([correct_vec(x) for x in sa]), np.concatenate([correct_vec(y) for y in sb]))
        return by_seed, pooled, np.mean([x["accuracy"] for x in sa]), np.mean([y["accuracy"] for y in sb]), common

    def judged(cmp, margin=0.0):
        if cmp is None:
            return "not measured"
        if len(cmp[4]) < MIN_SEEDS:
            return f"not measured ({len(cmp[4])} of {MIN_SEEDS} seeds)"
        return verdict(cmp[0][1], cmp[0][2], margin)

    def show(cmp, what):
        if cmp is None:
            return f"{what}: no finished runs"
        s, p, a, b, common = cmp
        return (f"{what}: {100 * a:.1f}% vs {100 * b:.1f}%, by seed {fmt_ci(*s)}, pooled {fmt_ci(*p)} "
                f"(seeds {','.join(map(str, common))})")

    def agree(vs):
        if not vs:
            return "not measured (no RL task where the model starts competent)"
        return vs[0] if len(set(vs)) == 1 else next((v for v in vs if v.startswith("not measured")), "inconclusive")

    budget = f"{c.rl_steps} steps x {c.rl_prompts} prompts x G {c.rl_group} rollouts, lr {c.rl_lr}"
    cmps = {t: compare(t, cj, diffu, "ASS + EOSER") for t in RL_TASKS}
    claim("C4", "CJ-GRPO beats the one-step diffu-GRPO at equal rollout budgets",
          f"test accuracy with ASS + EOSER decoding, cj_grpo (ASS + EOSER rollouts) minus diffu_grpo; {budget}; "
          "seed-paired t interval (verdict) and problems pooled over seeds (bootstrap)",
          "; ".join(show(v, t) for t, v in cmps.items()) + left_out, agree([judged(cmps[t]) for t in tasks]),
          "the judged tasks must agree")
    halves = {"sudoku": compare("sudoku", cj, semi, "own"), "arithmetic": compare("arithmetic", semi, cj, "own")}
    vs = {t: judged(v) if t in tasks else "not measured (model not competent)" for t, v in halves.items()}
    c5 = ("does not hold" if "does not hold" in vs.values() else "holds" if set(vs.values()) == {"holds"}
          else agree(list(vs.values())))  # one half failing fails the claim
    claim("C5", "planning favours parallel decoding (CJ-GRPO + ASS + EOSER best on Sudoku), math favours sequential "
          "(CJ-GRPO + semi-AR best on math)", f"test accuracy, each run decoded as it was trained; {budget}",
          show(halves["sudoku"], "sudoku, ASS+EOSER minus semi-AR") + "; " +
          show(halves["arithmetic"], "arithmetic, semi-AR minus ASS+EOSER"), c5,
          f"sudoku {vs['sudoku']}, arithmetic {vs['arithmetic']}; both halves must hold")
    others = {(t, o): compare(t, just, o, "semi-AR block 32") for t in RL_TASKS for o in (cj, diffu)}
    claim("F3", "JustGRPO improves reasoning more than the trajectory (CJ-GRPO) and one-step (diffu-GRPO) methods at equal budgets",
          f"test accuracy, all decoded with semi-AR blocks of 32 at L/4 steps, just_grpo minus each; {budget}",
          "; ".join(show(v, f"{t} vs {o}") for (t, o), v in others.items()) + left_out,
          agree([judged(v) for (t, _), v in others.items() if t in tasks]), "every judged comparison must agree")
    parts, vs = [], []
    for t in RL_TASKS:
        done = [r for r in runs if r["task"] == t and r["arm"] == just]
        if not done:
            parts.append(f"{t}: no finished just_grpo run")
            vs += ["not measured"] if t in tasks else []
            continue
        gains = []
        for _, label, _ in PARALLEL:
            before = find(ev["rows"], task=t, L=L, schedule=label)
            # the RL runs score the first rl_n_test of the n_test problems (generate's draws are a prefix)
            on_same = lambda r: correct_vec(before)[:r["scores"][label]["n"]].mean()
            by_seed = seed_interval([r["scores"][label]["accuracy"] - on_same(r) for r in done])
            tps = np.mean([r["scores"][label]["tokens_per_step"] for r in done])
            gains.append((tps, by_seed))
            parts.append(f"{t} {label}: {before['tokens_per_step']:.1f} -> {tps:.1f} tokens/step, {fmt_ci(*by_seed)}")
        most = max(gains, key=lambda g: g[0])[1]
        if t in tasks:
            vs.append(verdict(most[1], most[2]) if len(done) >= MIN_SEEDS else f"not measured ({len(done)} of {MIN_SEEDS} seeds)")
    claim("F4", "JustGRPO keeps parallel decoding: the gain holds, even grows, with more tokens per step",
          "test accuracy after JustGRPO minus before (seed t interval), along threshold and entropy-bounded "
          "decoders; verdict on the most parallel one", "; ".join(parts) + left_out, agree(vs), "the judged tasks must agree")
    parts, vs = [], []
    for t in RL_TASKS:
        f5 = compare(t, top, just, "own")
        minutes = {a: [r["minutes"] for r in runs if r["task"] == t and r["arm"] == a] for a in (top, just)}
        faster = all(minutes.values()) and np.mean(minutes[top]) < np.mean(minutes[just])
        parts.append(show(f5, f"{t}, top 25% minus all") + (f", {np.mean(minutes[top]):.1f} vs {np.mean(minutes[just]):.1f} "
                                                              "minutes per run" if all(minutes.values()) else ""))
        v = judged(f5, -0.03)
        if t in tasks:
            vs.append(v if v.startswith("not measured") or faster else "does not hold")
    claim("F5", "training only the top 25% highest-entropy positions converges as well and faster",
          "test accuracy (AR decoding) top-25% minus all positions, seed t interval; holds if the interval is "
          "above -3 pts (as well) and the run is faster", "; ".join(parts) + left_out, agree(vs), "the judged tasks must agree")

# -----------------------------------------------------------------------------
# report


def write_report(c, st, claims, times):
    res = Path(c.results_dir)
    res.mkdir(parents=True, exist_ok=True)
    ran = ", ".join(f"{k} {v['minutes']:.1f} min" + (f" ({v['note']})" if v.get("note") else "") for k, v in times.items())
    devices = " / ".join(sorted({v["device"] for v in times.values()})) or "(no stage ran)"
    lines = ["# The papers' claims at small scale", "",
             f"`python experiments/claims.py{' --quick' if c.quick else ''}` on {devices}; stages: {ran}. "
             f"Testbed: {describe_model(c)}. Test problems: {c.n_test} per task.", "",
             "| claim | what the paper reports | our measure | our number [95% interval] | verdict |", "|---|---|---|---|---|"]
    for cl in claims:
        rerun = "; ".join(([f"all seeds: {cl['all_seeds']}"] if "all_seeds" in cl else []) +
                          [f"seeds {k}: {v}" for k, v in cl.get("rerun", {}).items()])
        lines.append(f"| {cl['id']} | {cl['paper']} | {cl['measure']} | {cl['number']} | **{cl['verdict']}**"
                     f"{f' ({rerun})' if rerun else ''} |")
    lines += ["", "Verdict rule: a difference holds when its 95% interval lies on the claimed side (of the stated "
              "margin), does not hold when it lies on the other side, and is inconclusive otherwise. "
              f"Claims over several tasks take the majority of the tasks where some decoder reaches "
              f"{100 * c.competent:.0f}% (below that every decoder ties near zero). An RL comparison needs {MIN_SEEDS} "
              f"seeds of both arms, else it is not measured; with {2 * MIN_SEEDS} or more seeds each half of them "
              "is also judged on its own (a rerun with other seeds), and a verdict that either half does not repeat "
              "is inconclusive."]
    if st.get("rl", {}).get("partial"):
        planned = sum(len(RL_TASKS[t]) for t, a in rl_start(st["eval"], c).items() if a >= c.competent)
        lines.append(f"The rl stage did not finish: {len(st['rl']['runs'])} runs of "
                     f"{len(c.seeds.split(',')) * planned} are reported.")
    lines.append("")
    if "eval" in st:
        lines += ["## Every decoder on the test problems", "", "| task | L | schedule | accuracy [95%] | EOS trap | model calls | tokens/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in st["eval"]["rows"]:
            lines.append(f"| {r['task']} | {r['L']} | {r['schedule']} | {100 * r['accuracy']:.1f} [{100 * r['ci'][0]:.1f}, "
                         f"{100 * r['ci'][1]:.1f}] | {100 * r['eos_trap']:.1f}% | {r['model_calls']:.1f} | "
                         f"{r['n'] * r['L'] / r['seconds']:,.0f} |")
    if "rl" in st:
        lines += ["", "## RL runs (test accuracy, %)", "", "| task | arm | seed | own decoding | ASS + EOSER | semi-AR 32 | minutes |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(st["rl"]["runs"], key=lambda r: (r["task"], r["arm"], r["seed"])):
            s = r["scores"]
            lines.append(f"| {r['task']} | {r['arm']} | {r['seed']} | {100 * s['own']['accuracy']:.1f} | "
                         f"{100 * s['ASS + EOSER']['accuracy']:.1f} | {100 * s['semi-AR block 32']['accuracy']:.1f} | {r['minutes']:.1f} |")
    plots = make_plots(c, st)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (res / "claims.md").write_text("\n".join(lines) + "\n")
    slim = {k: v for k, v in st.items() if k != "passk"}
    if "passk" in st:
        slim["passk"] = {k: {kk: vv for kk, vv in v.items() if kk not in ("per_problem", "entropy")} for k, v in st["passk"].items()}
    report = dict(config=vars(c), stage_times=times, claims=claims, stages=slim)
    (res / "claims.json").write_text(json.dumps(finite(report), allow_nan=False, indent=1))
    print("\n".join(lines[:len(claims) + 6]))
    print(f"\nwrote {res / 'claims.md'}, {res / 'claims.json'} and {len(plots)} plots")


def finite(x):
    """Strict JSON: non-finite numbers (an interval of one seed, a NaN metric) become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def describe_model(c):
    cfg = json.loads((model_path(c) / "config.json").read_text())
    return f"LLaDA-shaped, d_model {cfg['d_model']}, {cfg['n_layers']} layers, byte tokenizer ({c.model})"


def make_plots(c, st):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plots")
        return []
    res, made = Path(c.results_dir), []

    def save(fig, name, top=1.0):
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.savefig(res / name, dpi=110)
        plt.close(fig)
        made.append(res / name)

    if "eval" in st:
        rows = st["eval"]["rows"]
        Ls = sorted({r["L"] for r in rows})
        tasks = ["sudoku", "countdown", "arithmetic"]
        families = list(dict.fromkeys(r["family"] for r in rows))
        fig, axes = plt.subplots(len(Ls), 3, figsize=(15, 4.2 * len(Ls)), squeeze=False)
        for i, L in enumerate(Ls):
            for j, t in enumerate(tasks):
                ax = axes[i][j]
                for k, fam in enumerate(families):  # one colour per family in every panel
                    pts = sorted((r["model_calls"], r["accuracy"]) for r in rows if r["task"] == t and r["L"] == L and r["family"] == fam)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", color=f"C{k}", label=fam)
                ax.set_xscale("log", base=2)
                ax.set(title=f"{t}, L = {L}", xlabel="model calls", ylabel="test accuracy")
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(families), fontsize=8)
        save(fig, "claims_accuracy_vs_calls.png", top=0.95)
        fig, axes = plt.subplots(1, len(Ls), figsize=(6 * len(Ls), 4), squeeze=False)
        for i, L in enumerate(Ls):
            ax = axes[0][i]
            for t in tasks:
                for fam, style in (("full diffusion", "-"), ("full diffusion + EOSER", "--"), ("semi-AR block 32", ":")):
                    pts = sorted((r["model_calls"], r["eos_trap"]) for r in rows if r["task"] == t and r["L"] == L and r["family"] == fam)
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", label=f"{t}, {fam}")
            ax.set_xscale("log", base=2)
            ax.set(title=f"answers cut by an early EOS, L = {L}", xlabel="decoding steps", ylabel="share")
        axes[0][0].legend(fontsize=7)
        save(fig, "claims_eos_trap.png")
    if "passk" in st:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
        for name, v in st["passk"].items():
            a1.plot(v["ks"], v["pass_at_k"], marker="o", label=name)
        a1.set_xscale("log", base=2)
        a1.set(title=f"pass@k, {c.passk_task}, T = 1", xlabel="k", ylabel="pass@k")
        a1.legend(fontsize=8)
        names = list(st["passk"])
        classes = sorted({k for v in st["passk"].values() for k in v["classes"]})
        w = 0.8 / len(names)
        for i, name in enumerate(names):
            cl = st["passk"][name]["classes"]
            a2.bar([x + i * w for x in range(len(classes))], [cl.get(k, {}).get("entropy", 0) for k in classes], w, label=name)
        a2.set_xticks([x + 0.4 - w / 2 for x in range(len(classes))], classes)
        a2.set(title="entropy when the token is decoded", ylabel="nats")
        a2.legend(fontsize=8)
        save(fig, "claims_passk_entropy.png")
    if "rl" in st:
        runs = st["rl"]["runs"]
        keys = sorted({(r["task"], r["arm"]) for r in runs})
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        for ax, task in zip(axes, ("arithmetic", "sudoku")):
            for t, arm in keys:
                if t != task:
                    continue
                curves = [[(row["step"] * c.rl_prompts * c.rl_group, row["eval_acc"]) for row in r["curve"] if "eval_acc" in row]
                          for r in runs if r["task"] == t and r["arm"] == arm]
                n = min(len(cv) for cv in curves)
                x = [p[0] for p in curves[0][:n]]
                y = np.array([[p[1] for p in cv[:n]] for cv in curves])
                ax.plot(x, y.mean(0), marker="o", label=arm)
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
            ax.set(title=f"RL on {task}: validation accuracy (band: seeds' range)", xlabel="rollouts", ylabel="accuracy")
            ax.legend(fontsize=7)
        save(fig, "claims_rl_curves.png")
        if "eval" in st:
            fig, axes = plt.subplots(1, len(RL_TASKS), figsize=(6 * len(RL_TASKS), 4), squeeze=False)
            for ax, task in zip(axes[0], RL_TASKS):
                before = [(r["tokens_per_step"], r["accuracy"]) for r in st["eval"]["rows"] if r["task"] == task and
                          r["L"] == c.rl_gen_length and r["family"] in ("threshold", "entropy bound")]
                just = [r for r in runs if r["task"] == task and r["arm"] == "just_grpo, AR rollout"]
                after = [(np.mean([r["scores"][lab]["tokens_per_step"] for r in just]),
                          np.mean([r["scores"][lab]["accuracy"] for r in just])) for _, lab, _ in PARALLEL] if just else []
                ax.plot(*zip(*sorted(before)), "o-", label="SFT model")
                if after:
                    ax.plot(*zip(*sorted(after)), "s-", label=f"after JustGRPO (mean of {len(just)} seeds)")
                ax.set(title=f"{task}: accuracy vs parallelism (threshold, entropy bound)", xlabel="tokens per step",
                       ylabel="test accuracy")
                ax.legend()
            save(fig, "claims_parallel.png")
    return made

# -----------------------------------------------------------------------------


def model_path(c):
    return ROOT / c.model  # an absolute --model stays as it is


def load_model(c, device):
    return LLaDA.from_pretrained(model_path(c), device=device).eval(), load_tokenizer(model_path(c))


STAGES = {"sft": stage_sft, "eval": stage_eval, "passk": stage_passk, "rl": stage_rl}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    job = [a for a in argv if a.startswith("--rl_job=")]
    c = config_from_args(ClaimsConfig, [a for a in argv if not a.startswith("--rl_job=")])
    if c.quick:
        c = quick_overrides(c)
    if job:  # a child process of the rl stage
        return rl_job(c, json.loads(job[0].split("=", 1)[1]))
    device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the CPU ({os.cpu_count()} cores)"
    work = Path(c.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stages = c.stages.split(",")
    unknown = [s for s in stages if s not in (*STAGES, "report")]
    if unknown:
        raise SystemExit(f"--stages: unknown {unknown}; expected a comma list of {', '.join([*STAGES, 'report'])}")
    st, timing = {}, work / "minutes.json"
    for name, fn in STAGES.items():
        path = work / f"{name}.json"
        if name in stages and not path.is_file():
            t0 = time.time()
            print(f"== stage {name}", flush=True)
            result = fn(c, device)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, path)
            minutes = (time.time() - t0) / 60
            times = json.loads(timing.read_text()) if timing.is_file() else {}  # read again: another process may have written
            times[name] = dict(minutes=minutes, device=device_name)
            tmp = timing.with_suffix(".tmp")
            tmp.write_text(json.dumps(times))
            os.replace(tmp, timing)
            print(f"== stage {name}: {minutes:.1f} minutes", flush=True)
        if path.is_file():
            st[name] = json.loads(path.read_text())
    times = json.loads(timing.read_text()) if timing.is_file() else {}
    finished = sorted((work / "rl").glob("*/result.json"))
    if "rl" not in st and finished:  # an rl stage cut short: report the runs it finished
        st["rl"] = dict(runs=[json.loads(f.read_text()) for f in finished], partial=True)
    if "report" in stages:
        if "eval" not in st:
            raise SystemExit(f"report: {work}/eval.json is missing: run the eval stage first")
        claims = verdicts(st["eval"], st.get("passk"), st.get("rl"), c)
        write_report(c, st, claims, times)


if __name__ == "__main__":
    main()
