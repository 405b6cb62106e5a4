"""
Decode from a LLaDA masked diffusion LM with every schedule the RL papers use (DEFINITIONS.md section 2).

Every generation slot starts as [MASK]. One step runs the model, takes a candidate token and a
confidence for each masked slot of the current block, and commits the k most confident; committed
tokens never change. Schedules differ only in k and in the block a step works on, so each one is a
small pure function giving those numbers, and one step function serves them all:
  linear  (LLaDA)    full diffusion, semi-autoregressive blocks (block_length), AR order (block_length 1)
  ass     (CJ-GRPO)  ascending step size: 2^i slots at step i, in block_num blocks
  eoser   (CJ-GRPO)  EOS early rejection on either: EOS confidences scaled by a rising gamma
  threshold, entropy_bound   beyond the papers: adaptive parallel decoding, fewer model calls
Deviations from the reference code (marked (ours) in DEFINITIONS.md): float64 Gumbel noise only for the slots
being sampled; the mask token is never a candidate; left-padded batches use a key-padding mask;
invalid arguments raise where LLaDA asserts or d1 silently drops steps. No KV cache (model.py says why).

    python sample.py --schedule ass --eoser                    # bundled small model, CPU, seconds
    python sample.py --random_model --prompt "hi"              # random weights: noise, but no checkpoint needed
    python sample.py --model DIR --device cuda --prompt "What is 7*8?" --block_length 32
    python sample.py --task sudoku --eval 200 --batch_size 50 --schedule ass --eoser
    python sample.py --model DIR --device cuda --task humaneval --data HumanEval.jsonl --eval 164 \
        --block_length 32 --samples 10 --temperature 0.8        # pass@1 .. pass@10 (unbiased estimator)
"""
import argparse
import functools
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "ass", "threshold", "entropy_bound")
REMASKING = ("low_confidence", "random")

# -----------------------------------------------------------------------------
# schedules: how many slots each step commits, in which block (pure functions of ints)


def linear_counts(n, steps):
    """LLaDA (get_num_transfer_tokens): n slots over s steps, k_i = n // s, the first n % s steps one more."""
    return [n // steps + (i < n % steps) for i in range(steps)]


def ass_counts(gen_length, steps):
    """ASS (CJ-GRPO): step i commits 2^i slots, the last step all the rest. L=256, S=8: 1,2,4,...,64,129."""
    return [2 ** i for i in range(steps - 1)] + [gen_length - 2 ** (steps - 1) + 1]


def linear_blocks(gen_length, steps, block_length):
    """Semi-AR layout: L / block_length blocks, steps split evenly over them, linear counts inside each."""
    n = gen_length // block_length
    return n * [linear_counts(block_length, steps // n)]


def ass_blocks(gen_length, steps, block_num):
    """ASS in block_num blocks cut from the right end: each of the last block_num - 1 steps is a block
    alone, the first block takes all remaining steps. L=256, S=8: 2 -> [127 | 129], 3 -> [63 | 64 | 129]."""
    counts, first = ass_counts(gen_length, steps), steps - block_num + 1
    return [counts[:first]] + [[k] for k in counts[first:]]


def block_plan(blocks):
    """Per step (lo, hi, left, k): the block [lo, hi) of the window, its masked slots before the
    step, and the slots to commit. A block spans exactly the slots its steps commit."""
    plan, lo = [], 0
    for counts in blocks:
        plan += [(lo, lo + sum(counts), sum(counts[j:]), k) for j, k in enumerate(counts)]
        lo += sum(counts)
    return plan


def eoser_gamma_linear(i, steps, lo, hi):
    """EOSER with linear schedules: gamma_i = min + (max - min) * i / (N - 1), i the global step."""
    return hi if steps == 1 else lo + (hi - lo) * i / (steps - 1)


def eoser_gamma_ass(i, steps, lo, hi):
    """EOSER with ASS: gamma_i = min + (max - min) * (2^(i+1) - 1) / 2^S, the share decoded after step i."""
    return lo + (hi - lo) * (2 ** (i + 1) - 1) / 2 ** steps

# -----------------------------------------------------------------------------
# one step: candidates, confidences, commit


def sample_slots(logits, banned, temperature, want_entropy):
    """Rows of logits (n, V) -> candidate x0, confidence softmax(logits)[x0] (untempered), the log-prob
    log_softmax(logits / T)[x0] of the policy that drew it (T = 0: untempered), and, if asked, the
    entropy of softmax(logits / T) (T = 0: of softmax(logits))."""
    logits = logits.float().masked_fill(banned, -math.inf)
    t = temperature or 1.0
    if temperature == 0:
        x0 = logits.argmax(-1)
    else:  # Gumbel-max, float64 noise: float32 noise caps near 16.6 and never draws tokens below ~1e-7
        g = torch.rand(logits.shape, dtype=torch.float64, device=logits.device).log_().neg_().log_().neg_()
        x0 = g.add_(logits, alpha=1 / t).argmax(-1)
    l0 = logits.gather(-1, x0[:, None])[:, 0]
    lp = l0 - logits.logsumexp(-1)
    conf, logp = lp.exp(), (lp if t == 1 else l0 / t - (logits / t).logsumexp(-1))
    ent = torch.special.entr((logits / t).softmax(-1)).sum(-1) if want_entropy else None
    return x0, conf, logp, ent


def banned_ids(config, device=None):
    """(V,) bool: the ids decoding never draws, the mask token and the unused embedding rows (ours)."""
    ids = torch.arange(config.embedding_size, device=device)
    return (ids >= config.vocab_size) | (ids == config.mask_token_id)


@functools.cache
def compiled_sample_slots():
    # fused noise + argmax + reductions: no (n, V) float64 temporaries (PERF_NOTES: 35 -> 9 ms at B=32)
    return torch.compile(sample_slots, dynamic=True)


@dataclass(frozen=True)
class Decoding:
    """What a step needs besides the state; fixed for one generate() call."""
    schedule: str
    remasking: str
    temperature: float
    cfg_scale: float
    threshold: float
    entropy_bound: float
    prompt_len: int
    mask_id: int
    eos_id: int
    banned: torch.Tensor  # (V,) bool: ids that are never candidates
    sampler: object       # sample_slots, or its compiled version
    want_entropy: bool    # the entropy-bound rule, or a trajectory that records it (JustGRPO's top-k% option)


def model_logits(model, x, attn, pos, d):
    """Logits (B, K, V) at the positions pos (B, K) only. Classifier-free guidance: the unconditional
    input has the prompt masked, logits = u + (cfg + 1)(c - u)."""
    if d.cfg_scale == 0:
        return model(x, attention_mask=attn, logits_slice=pos)
    un = x.clone()
    un[:, :d.prompt_len] = d.mask_id
    both = model(torch.cat([x, un]), attention_mask=None if attn is None else torch.cat([attn, attn]),
                 logits_slice=torch.cat([pos, pos]))
    c, u = both.float().chunk(2)
    return u + (d.cfg_scale + 1) * (c - u)


def top_k(conf, k):
    """Fixed schedules: commit the k most confident slots (conf is -inf where committing is not allowed)."""
    return torch.zeros_like(conf, dtype=torch.bool).scatter_(1, conf.topk(k, dim=1).indices, True)


def above_threshold(conf, masked, tau):
    """Confidence threshold (Fast-dLLM): every masked slot with c >= tau, and always the most confident one."""
    return masked & ((conf >= tau) | top_k(conf, 1))


def entropy_bounded(ent, masked, bound):
    """EB sampler (Ben-Hamu et al. 2025): masked slots sorted by entropy H ascending; commit the first m,
    m the largest with sum_{l<m} H_(l) <= bound, and at least 1."""
    h, order = ent.masked_fill(~masked, math.inf).sort(dim=1)
    take = h.cumsum(1) <= bound
    take[:, 0] = True
    return torch.zeros_like(masked).scatter_(1, order, take & h.isfinite())


def denoise_step(model, x, attn, pos, k, gamma, d):
    """One step on the slots pos (B, K) of the current block, k slots to commit (None: the adaptive
    rule decides). Writes the committed candidates into x; returns commit (B, K), the candidates'
    log-probs and (if d.want_entropy) the entropies of their sampling distributions."""
    cur = x.gather(1, pos)
    masked = cur == d.mask_id
    logits = model_logits(model, x, attn, pos, d)
    B, K, V = logits.shape
    outs = [d.sampler(rows, d.banned, d.temperature, d.want_entropy)  # in chunks of rows: eager
            for rows in logits.view(B * K, V).split(max(1, 2 ** 27 // V))]  # float64 noise stays near 1 GiB
    x0, conf, logp, ent = [None if o[0] is None else torch.cat(o).view(B, K) for o in zip(*outs)]
    if d.remasking == "random":
        conf = torch.rand_like(conf)
    conf = torch.where(x0 == d.eos_id, conf * gamma, conf).masked_fill(~masked, -math.inf)  # EOSER: gamma < 1
    if d.schedule == "threshold":
        commit = above_threshold(conf, masked, d.threshold)
    elif d.schedule == "entropy_bound":
        commit = entropy_bounded(ent, masked, d.entropy_bound)
    else:
        commit = top_k(conf, k)
    x.scatter_(1, pos, torch.where(commit, x0, cur))
    return commit, logp, ent

# -----------------------------------------------------------------------------
# the trajectory and generate()


@dataclass
class Trajectory:
    """A rollout, stored compactly (DEFINITIONS.md 2.3, the trajectory): state x_i is the final x with every slot
    committed at step >= i masked. step_of counts a row's own steps: with the adaptive schedules rows take
    different numbers of steps (step_of.amax(1) + 1), and a row's states after its last are all final."""
    x: torch.Tensor        # (B, P+L) final tokens
    step_of: torch.Tensor  # (B, P+L) long: step at which each generation slot was committed; -1 prompt/pad
    logp: torch.Tensor     # (B, P+L) float32: log_softmax(logits / T)[token] at commit, 0 elsewhere (see sample_slots)
    num_steps: int         # S (the most steps of any row)
    mask_id: int
    num_calls: int         # model forward calls (a CFG call runs 2B rows)
    entropy: torch.Tensor = None  # (B, P+L) entropy of softmax(logits / T) at commit, if record_entropy

    def state(self, i):
        return self.x.masked_fill(self.step_of >= i, self.mask_id)

    @property
    def states(self):
        return [self.state(i) for i in range(self.num_steps + 1)]

    @property
    def committed(self):
        return [self.step_of == i for i in range(self.num_steps)]

    @property
    def logps(self):
        return [self.logp.masked_fill(self.step_of != i, 0.0) for i in range(self.num_steps)]


class BadArgument(ValueError):
    """A generate() argument outside its allowed values ("name: why"); the command line reports it as --name."""


def check_args(cfg, B, P, L, steps, schedule, block_length, block_num, eoser, eos_min_gamma,
               eos_max_gamma, remasking, temperature, cfg_scale, threshold, entropy_bound, attention_mask):
    def need(ok, name, why):
        if not ok:
            raise BadArgument(f"{name}: {why}")
    need(schedule in SCHEDULES, "schedule", f"{schedule!r} is not one of {SCHEDULES}")
    need(remasking in REMASKING, "remasking", f"{remasking!r} is not one of {REMASKING}")
    need(isinstance(L, int) and L >= 1, "gen_length", f"must be a positive int, got {L!r}")
    need(P + L <= cfg.max_sequence_length, "gen_length", f"prompt {P} + {L} > max_sequence_length {cfg.max_sequence_length}")
    adaptive = schedule in ("threshold", "entropy_bound")
    need(steps is None or not adaptive, "steps", f"schedule {schedule!r} chooses its own steps; leave steps=None")
    need(steps is None or (isinstance(steps, int) and steps >= 1), "steps", f"must be a positive int, got {steps!r}")
    need(block_length is None or schedule != "ass", "block_length", "ASS splits blocks by block_num")
    need(block_num == 1 or schedule == "ass", "block_num", "only ASS uses block_num; linear uses block_length")
    bl = L if block_length is None else block_length
    need(isinstance(bl, int) and bl >= 1 and L % bl == 0, "block_length", f"gen_length {L} is not divisible by {bl!r}")
    if schedule == "linear":
        need(steps % (L // bl) == 0, "steps", f"{steps} steps do not split evenly over {L // bl} blocks")
    if schedule == "ass":
        need(L >= 2 ** steps, "steps", f"ASS needs gen_length >= 2^steps, got {L} < 2^{steps}")
        need(isinstance(block_num, int) and 1 <= block_num <= steps, "block_num", f"must be in 1..steps={steps}, got {block_num!r}")
    need(not eoser or schedule in ("linear", "ass"), "eoser", "EOSER works with the linear and ass schedules")
    need(not eoser or remasking == "low_confidence", "eoser", "EOSER rescales confidences: needs remasking='low_confidence'")
    need(not adaptive or remasking == "low_confidence", "remasking", f"schedule {schedule!r} needs 'low_confidence'")
    need(0 <= eos_min_gamma <= eos_max_gamma, "eos_min_gamma", f"need 0 <= {eos_min_gamma} <= eos_max_gamma {eos_max_gamma}")
    for name, v in (("temperature", temperature), ("cfg_scale", cfg_scale), ("entropy_bound", entropy_bound)):
        need(v >= 0, name, f"must be >= 0, got {v}")
    need(0 < threshold <= 1, "threshold", f"must be in (0, 1], got {threshold}")
    need(attention_mask is None or attention_mask.shape == (B, P), "attention_mask", f"need prompt_ids' shape {(B, P)}")


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length=256, steps=None, schedule="linear", block_length=None,
             block_num=1, eoser=False, eos_min_gamma=0.01, eos_max_gamma=1.0, remasking="low_confidence",
             temperature=0.0, cfg_scale=0.0, threshold=0.9, entropy_bound=0.1, attention_mask=None,
             return_trajectory=False, record_entropy=False, compile=False, callback=None):
    """
    prompt_ids (B, P) long, left-padded when lengths differ (attention_mask (B, P), 1 = real token).
    Returns x (B, P+L), or (x, Trajectory) with return_trajectory. steps=None: gen_length for linear,
    floor(log2 gen_length) for ass; threshold / entropy_bound pick their own. block_length=None: the
    whole window. threshold: tau of schedule 'threshold'; entropy_bound: the bound of 'entropy_bound'.
    compile: torch.compile the sampling (needs a compiler). callback(num_calls, x) after each step.
    record_entropy: the trajectory also keeps each committed slot's entropy (one more softmax per slot).
    """
    cfg, L = model.config, gen_length
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids: need a (B, P) tensor, got shape {tuple(prompt_ids.shape)}")
    B, P = prompt_ids.shape
    if steps is None and schedule in ("linear", "ass") and isinstance(L, int) and L >= 1:
        steps = L if schedule == "linear" else L.bit_length() - 1
    check_args(cfg, B, P, L, steps, schedule, block_length, block_num, eoser, eos_min_gamma, eos_max_gamma,
               remasking, temperature, cfg_scale, threshold, entropy_bound, attention_mask)
    dev, mask_id = prompt_ids.device, cfg.mask_token_id
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: let SDPA take its unmasked (flash) kernel
    attn = None if attention_mask is None else torch.cat([attention_mask.bool(), attention_mask.new_ones(B, L, dtype=torch.bool)], 1)
    d = Decoding(schedule, remasking, temperature, cfg_scale, threshold, entropy_bound, P, mask_id, cfg.eos_token_id,
                 banned_ids(cfg, dev), compiled_sample_slots() if compile else sample_slots,
                 schedule == "entropy_bound" or record_entropy)
    x = torch.cat([prompt_ids.long(), torch.full((B, L), mask_id, dtype=torch.long, device=dev)], 1)
    step_of = torch.full_like(x, -1)
    logp = torch.zeros(x.shape, device=dev)
    entropy = torch.zeros(x.shape, device=dev) if record_entropy else None
    row_step = torch.zeros(B, 1, dtype=torch.long, device=dev)
    calls = 0

    def run(lo, hi, K, k, gamma):  # one step on the K first masked slots of block [lo, hi)
        nonlocal calls
        done = (x[:, P + lo:P + hi] != mask_id).to(torch.int8)
        pos = P + lo + done.argsort(dim=1, stable=True)[:, :K]  # masked slots first, in order
        commit, lp, ent = denoise_step(model, x, attn, pos, k, gamma, d)
        step_of.scatter_(1, pos, torch.where(commit, row_step, step_of.gather(1, pos)))
        logp.scatter_(1, pos, torch.where(commit, lp, logp.gather(1, pos)))
        if record_entropy:
            entropy.scatter_(1, pos, torch.where(commit, ent, entropy.gather(1, pos)))
        calls += 1
        if callback is not None:
            callback(calls, x)
        return commit

    if schedule in ("linear", "ass"):
        blocks = linear_blocks(L, steps, block_length or L) if schedule == "linear" else ass_blocks(L, steps, block_num)
        gamma = eoser_gamma_linear if schedule == "linear" else eoser_gamma_ass
        for i, (lo, hi, left, k) in enumerate(block_plan(blocks)):
            if k:  # a linear block with more steps than slots has empty steps: skip their model call
                run(lo, hi, left, k, gamma(i, steps, eos_min_gamma, eos_max_gamma) if eoser else 1.0)
            row_step += 1
        num_steps = steps
    else:
        bl = block_length or L
        for lo in range(0, L, bl):
            for _ in range(bl):  # each step commits >= 1 slot of every row with one left
                # the one host sync per step: stopping when the block is full is what these schedules are for
                if not bool((x[:, P + lo:P + lo + bl] == mask_id).any()):
                    break
                row_step += run(lo, lo + bl, bl, None, 1.0).any(1, keepdim=True)
        num_steps = int(row_step.max())
    return (x, Trajectory(x, step_of, logp, num_steps, mask_id, calls, entropy)) if return_trajectory else x


def left_pad(seqs, pad_id, device=None):
    """Token lists -> left-padded prompt_ids (B, P) and attention_mask (B, P) for generate()."""
    P = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (P - len(s)) + list(s) for s in seqs], device=device)
    return ids, torch.tensor([[0] * (P - len(s)) + [1] * len(s) for s in seqs], device=device).bool()

# -----------------------------------------------------------------------------
# command line: watch the denoising, or evaluate a task


def load(path, device, dtype):
    from model import LLaDA, load_tokenizer
    return LLaDA.from_pretrained(path, device=device, dtype=dtype).eval(), load_tokenizer(path)


def random_model(device, dtype):
    """The explicit --random_model demo: tiny random weights and a byte-level tokenizer, so output is noise."""
    from model import LLaDA, byte_tokenizer, byte_tokenizer_config
    torch.manual_seed(0)
    cfg = byte_tokenizer_config(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, max_sequence_length=512)
    return LLaDA(cfg).to(device=device, dtype=dtype).eval(), byte_tokenizer()


def split_at_end(tok, row):
    """A generation ends at its first <|eot_id|> or <|endoftext|> (DEFINITIONS.md 2.4): the text before it
    and the text after it, special tokens removed. Rewards read both, joined (the references decode
    the whole window)."""
    end = next((j for j, t in enumerate(row) if t in (tok.eot_id, tok.eos_id)), len(row))
    return tok.decode(row[:end], skip_special=True), tok.decode(row[end:], skip_special=True)


def live_display(tok, P, mask_id):
    """generate() callback: row 0's window ('·' masked, '_' end of text), redrawn in place on a terminal."""
    tty, lines = sys.stdout.isatty(), 0

    def draw(step, x):
        nonlocal lines
        show = lambda t: "·" if t == mask_id else "_" if t in (tok.eos_id, tok.eot_id) else tok.decode([t])
        text = f"step {step:3d} | " + "".join(map(show, x[0, P:].tolist())).replace("\n", "⏎")
        if tty and lines:
            sys.stdout.write(f"\x1b[{lines}F\x1b[J")  # back to where the last drawing began, clear below
        print(text, flush=True)
        lines = -(-len(text) // shutil.get_terminal_size().columns)
    return draw


def number(kind, low):
    """argparse type: a number of `kind` >= low, else an error naming the allowed values."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not v >= low:  # `not >=`: NaN fails too
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} >= {low}, got {text!r}")
        return v
    return parse


def true_false(text):
    """argparse type of the boolean flags: `--eoser` alone means true; a value must be true or false."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false (or no value, meaning true), got {text!r}")
    return text.lower() == "true"


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in --help; a flag whose default is decided at run time says how in its help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv=None):
    from tasks import TASKS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=Help)
    p.add_argument("--model", default="checkpoints/llada-tiny", help="LLaDA checkpoint directory (config.json, safetensors, tokenizer.json)")
    p.add_argument("--random_model", type=true_false, nargs="?", const=True, default=False, metavar="true|false",
                   help="instead of --model: a tiny random-weight model with a byte tokenizer (its output is noise)")
    p.add_argument("--prompt", default=None, help="user text (chat template applied); default: a --task example")
    p.add_argument("--task", default="sudoku", choices=list(TASKS), help="task of the example or of --eval")
    p.add_argument("--style", default=None, choices=("d1", "d1_eval", "just", "compact"),
                   help="prompt style (tasks.py); default: d1 for LLaDA-8B (just for humaneval / mbpp), compact for small models")
    p.add_argument("--data", default=None, help="task data file (JSONL / CSV); default: generated examples")
    p.add_argument("--eval", type=number(int, 0), default=0, metavar="N", help="evaluate N held-out task examples (0: show one generation)")
    p.add_argument("--batch_size", type=number(int, 1), default=16, help="prompts per generate() call in --eval")
    p.add_argument("--samples", type=number(int, 1), default=1, help="completions per example in --eval: reports pass@k for k up to it")
    p.add_argument("--gen_length", type=number(int, 1), default=None, help="generation window L; default: 256 for LLaDA-8B, 64 (their training window) for small models")
    p.add_argument("--steps", type=number(int, 1), default=None, help="decoding steps; default: gen_length (linear), floor(log2 gen_length) (ass)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="slots committed per step (DEFINITIONS.md 2.2)")
    p.add_argument("--block_length", type=number(int, 1), default=None, help="block of linear / threshold / entropy_bound; default: the whole window")
    p.add_argument("--block_num", type=number(int, 1), default=1, help="number of ASS blocks")
    p.add_argument("--eoser", type=true_false, nargs="?", const=True, default=False, metavar="true|false", help="EOS early rejection (needs low_confidence remasking)")
    p.add_argument("--eos_min_gamma", type=float, default=0.01, help="EOSER's gamma at the first step")
    p.add_argument("--eos_max_gamma", type=float, default=1.0, help="EOSER's gamma approached at the last step")
    p.add_argument("--remasking", default="low_confidence", choices=REMASKING, help="confidence of a slot")
    p.add_argument("--temperature", type=number(float, 0), default=0.0, help="0: greedy; else Gumbel-max sampling at this temperature")
    p.add_argument("--cfg_scale", type=number(float, 0), default=0.0, help="classifier-free guidance (0: off)")
    p.add_argument("--threshold", type=float, default=0.9, help="tau of --schedule threshold, in (0, 1]")
    p.add_argument("--entropy_bound", type=number(float, 0), default=0.1, help="bound of --schedule entropy_bound")
    p.add_argument("--compile", type=true_false, nargs="?", const=True, default=False, metavar="true|false", help="torch.compile the sampling")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="model dtype; default: bfloat16 on cuda, float32 elsewhere")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype or ("bfloat16" if "cuda" in a.device else "float32"))
    if a.random_model:
        print("notice: --random_model: a tiny RANDOM model with a byte-level tokenizer, so the output is noise",
              file=sys.stderr)
        model, tok = random_model(a.device, dtype)
    elif not os.path.isdir(a.model):
        p.error(f"--model {a.model}: no such directory (expected a LLaDA checkpoint directory; the bundled one is "
                f"checkpoints/llada-tiny, from the repository root; --random_model for a random-weight demo)")
    else:
        try:
            model, tok = load(a.model, a.device, dtype)
        except (OSError, ValueError) as e:  # model.py's loading errors name the file and what was expected
            p.error(f"--model {a.model}: {e}")
    torch.manual_seed(a.seed)
    style = a.style or ("compact" if model.config.vocab_size < 100_000 else  # small models: compact; LLaDA-8B:
                        "just" if a.task in ("humaneval", "mbpp") else "d1")  # d1 prompts (d1 has none for code)
    task, n = None, max(a.eval, 1)
    if a.prompt is None or a.eval:
        from tasks import get_task
        task = get_task(a.task)  # seed 1: the held-out set train_rl.py reports (tasks.py: seed 0 is train)
        if a.data:  # MBPP: its test split (task_ids 11-510)
            examples = (task.load(a.data, "test") if a.task == "mbpp" else task.load(a.data))[:n]
        else:
            examples = task.generate(n, seed=1)[:n]
        texts = [task.prompt(ex, style=style) for ex in examples]
    else:
        texts = [a.prompt]
    prompts = [tok.chat_prompt(t) for t in texts]
    kw = {k: getattr(a, k) for k in ("steps", "schedule", "block_length", "block_num", "eoser", "eos_min_gamma",
          "eos_max_gamma", "remasking", "temperature", "cfg_scale", "threshold", "entropy_bound", "compile")}
    kw.update(gen_length=(256 if style == "d1" else 64) if a.gen_length is None else a.gen_length, return_trajectory=True)
    try:
        if a.eval:
            return evaluate(model, tok, task, examples, prompts, a, kw)
        show_one(model, tok, task, examples[0] if task else None, texts[0], prompts[0], a.device, kw)
    except BadArgument as e:  # raised before any model call
        p.error(f"--{e}")


def show_one(model, tok, task, example, text, prompt, device, kw):
    """Live denoising of one prompt, then the answer up to the end of the generation and its reward."""
    ids = torch.tensor([prompt], device=device)
    print(text, "\n")
    x, traj = generate(model, ids, callback=live_display(tok, ids.shape[1], model.config.mask_token_id), **kw)
    row = x[0, ids.shape[1]:].tolist()
    answer, after = split_at_end(tok, row)
    print(f"\n{answer}")
    if after:
        print(f"(after the end of the generation, and read by the reward too: {after!r})")
    print(f"\n({traj.num_calls} model calls for {kw['gen_length']} slots)")
    if task is not None:
        full = tok.decode(row, skip_special=True)  # what the reward reads (train_rl.py decodes the same way)
        print(f"reward {task.reward(full, example):.3f}  correct {task.is_correct(full, example)}")


def evaluate(model, tok, task, examples, prompts, a, kw):
    """Accuracy, mean reward, model calls and tokens/s (generation window slots, EOS padding included);
    with --samples n, pass@k for k = 1, 2, 4, ... n by the unbiased estimator over n completions each."""
    from tqdm import tqdm
    from tasks import pass_at_k
    examples = [ex for ex in examples for _ in range(a.samples)]  # the samples of an example are adjacent
    prompts = [p for p in prompts for _ in range(a.samples)]
    passed, reward, calls = [], 0.0, 0
    start = time.time()
    for i in (bar := tqdm(range(0, len(examples), a.batch_size), unit="batch")):
        ids, attn = left_pad(prompts[i:i + a.batch_size], tok.eos_id, a.device)
        x, traj = generate(model, ids, attention_mask=attn, **kw)
        answers = [tok.decode(row, skip_special=True) for row in x[:, ids.shape[1]:].tolist()]
        for c, r in task.grade(answers, examples[i:i + a.batch_size]):
            passed.append(c)
            reward += r
        calls += traj.num_calls
        bar.set_postfix(acc=f"{sum(passed) / len(passed):.3f}")
    n, dt = len(examples), time.time() - start
    print(f"{a.task} ({n // a.samples} examples x {a.samples}, {a.schedule}{' + eoser' if a.eoser else ''}): accuracy "
          f"{sum(passed) / n:.4f}  mean reward {reward / n:.4f}  model calls {calls} ({calls / -(-n // a.batch_size):.1f} "
          f"per batch)  {n * kw['gen_length'] / dt:.1f} tokens/s")
    counts = [sum(passed[j:j + a.samples]) for j in range(0, n, a.samples)]
    ks = [2 ** j for j in range(a.samples.bit_length()) if 2 ** j < a.samples] + [a.samples]
    print("  ".join(f"pass@{k} {sum(pass_at_k(a.samples, c, k) for c in counts) / len(counts):.4f}" for k in ks))


if __name__ == "__main__":
    main()
