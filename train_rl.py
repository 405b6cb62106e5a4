"""
GRPO for masked diffusion LMs: CJ-GRPO, JustGRPO and the one-step diffu-GRPO baseline.

    python train_rl.py --algo cj_grpo                      # the bundled small model on Sudoku, any device
    torchrun --nproc_per_node=8 train_rl.py --algo just_grpo --init /path/LLaDA-8B-Instruct \
        --task gsm8k --data ../shared/data/gsm8k_train.jsonl --style just --gen_length 256 --lr 5e-6

Every step: roll out G completions per prompt with sample.py's generate (keeping the
trajectory), score them, turn rewards into group advantages, then num_iterations updates on
those rollouts. The three algorithms differ only in which log-probabilities they train
(DEFINITIONS.md section 3):
- cj_grpo (consistency trajectory): at each decoding step i, log p(token | state x_i) of the
  slots committed at step i: exactly the decisions the rollout made.
- just_grpo: roll out left to right (one slot per step); log p(o_t | prompt, o_<t, masks).
- diffu_grpo (d1): one forward on a fully masked completion (prompt masked at p = 0.15).
Full-parameter training by default; --lora_rank 128 trains LoRA adapters on a frozen bf16 base
instead, as the CJ-GRPO and d1 references do (lora.py), which fits LLaDA-8B on one 80 GB GPU:
    python train_rl.py --algo cj_grpo --init /path/LLaDA-8B-Instruct --task gsm8k \
        --data ../shared/data/gsm8k_train.jsonl --style d1 --gen_length 256 --lr 3e-6 --lora_rank 128
Simplifications: no reward model, groups never span processes. Randomness is reseeded from
(seed, step, rank) every step, so --resume continues a killed run exactly.
"""
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from lora import REFERENCE_TARGETS, adapters_off, add_lora, parse_targets
from model import LLaDA, load_tokenizer
from sample import banned_ids, generate, left_pad
from tasks import get_task
from train_common import (MetricsLog, autocast, config_from_args, back_to_training, load_training_state, lr_at,
                          name_the_failed_rank, prepare_model, read_training_state, run_folder, save_training_checkpoint,
                          setup_distributed)


@dataclass
class RLConfig:
    """GRPO for masked diffusion LMs (train_rl.py); every field is a --flag."""
    algo: str = "cj_grpo"             # cj_grpo | just_grpo | diffu_grpo (some defaults follow the algorithm: see below)
    init: str = "checkpoints/llada-tiny"  # the starting checkpoint (LLaDA layout)
    task: str = "sudoku"              # sudoku | countdown | arithmetic | gsm8k | math500 | mbpp | humaneval
    data: str = ""                    # training data file (gsm8k, math500, mbpp); generated for countdown/sudoku/arithmetic
    n_train: int = 20000              # generated training problems (countdown, sudoku)
    style: str = "compact"            # prompt style: compact (small models), d1 (cj/diffu on 8B), just
    out_dir: str = ""                 # checkpoints and metrics.jsonl; "" = out/rl/<algo>-<task>
    overwrite: bool = False           # start over in an --out_dir that holds a run (its metrics and checkpoint are replaced)
    steps: int = 20                   # optimizer steps (the bundled model's job: ~3 min on a 2-core CPU; --steps 60 for the full run)
    prompts_per_step: int = 8         # prompts per optimizer step, over all ranks
    group_size: int = 6               # G completions per prompt
    micro_batch: int = 48             # sequences per forward in the training phase
    num_iterations: int = 2           # mu: updates per rollout batch (PPO clip applies from the 2nd)
    lr: float = 1e-4                  # learning rate, for the ~3M-parameter bundled model; the papers use 3e-6 (CJ) and 5e-6 (Just) at 8B
    warmup: int = 5                   # steps of linear lr warm-up, then constant
    adam_beta1: float = 0.9           # AdamW beta1
    adam_beta2: float = 0.99          # AdamW beta2
    weight_decay: float = 0.1         # AdamW weight decay (decoupled)
    grad_clip: float = 0.2            # max global gradient norm
    max_skipped: int = 3              # stop (exit 1) after this many steps in a row without an update (non-finite gradients)
    clip_eps: float = 0.5             # CJ-GRPO's eps; JustGRPO publishes 0.2 (inert there, see just_grpo_loss)
    beta: float = 0.0                 # KL weight to a frozen copy of the starting weights (LoRA: the base, adapters off)
    std_norm: bool = False            # divide advantages by the group std (JustGRPO) or not (d1, CJ-GRPO)
    gen_length: int = 64              # completion window L (tokens)
    schedule: str = "ass"             # rollout schedule for cj_grpo / diffu_grpo: ass | linear
    diffusion_steps: int = 0          # 0 = log2(gen_length) for ass, gen_length / 2 for linear
    block_length: int = 0             # 0 = gen_length (full diffusion); e.g. 32 for semi-AR
    block_num: int = 1                # ass: number of blocks the window is cut into
    eoser: bool = True                # EOS early rejection in the rollout (cj_grpo / diffu_grpo)
    eos_min_gamma: float = 0.01       # EOSER's smallest EOS confidence scale (first step)
    temperature: float = 1.0          # rollout sampling temperature (0 = greedy)
    prompt_mask_p: float = 0.15       # diffu_grpo: prompt tokens masked per iteration
    top_entropy: float = 1.0          # just_grpo: train only this fraction of highest-entropy positions
    skip_eos_tail: bool = False       # just_grpo: skip positions after the first EOS
    stack: int = 64                   # just_grpo: (sequence, position) pairs per forward
    eval_every: int = 20              # steps between held-out evaluations (and one before training, one at the end)
    eval_n: int = 256                 # held-out problems (with --data: the file's last eval_n rows)
    save_every: int = 20              # steps between checkpoints (and one at the end)
    seed: int = 0                     # data order and sampling; a run is reproducible from it
    resume: bool = False              # continue the run in --out_dir from its latest checkpoint
    device: str = ""                  # "" = cuda if available, else cpu
    compile: bool = False             # torch.compile each block (fuses the elementwise work; first steps compile)
    lora_rank: int = 0                # 0 = train all parameters; r > 0 = LoRA adapters of rank r on a frozen base (references: 128)
    lora_alpha: float = 64.0          # LoRA update scaled by alpha / r (references: 64)
    lora_dropout: float = 0.05        # dropout on the adapters' input while training (references: 0.05)
    lora_targets: str = REFERENCE_TARGETS  # block linears to adapt, or "all" (the references' effective four)


# Where the reference trainers differ, each --algo starts from its own reference's settings (a flag
# given on the command line wins). JustGRPO's grpo.py: AdamW betas (0.9, 0.999), eps 1e-8, weight
# decay 0, constant lr without warm-up, gradient clip 1.0, std-normalised advantages, one update per
# rollout. CJ-GRPO and d1 (TRL's GRPOTrainer): the dataclass defaults above.
ALGO_DEFAULTS = {
    # the bundled model's 3-minute job: one update per rollout, no warm-up (EOSER-ASS-RL: mu 2, 5 steps) and
    # lr 3e-5 (at 1e-4 the held-out accuracy moved +3.6 / -10.9 / -2.7 points over 3 seeds, README)
    "cj_grpo": dict(num_iterations=1, warmup=0, lr=3e-5),
    "diffu_grpo": {},
    "just_grpo": dict(num_iterations=1, adam_beta2=0.999, weight_decay=0.0, warmup=0, grad_clip=1.0, std_norm=True,
                      clip_eps=0.2),
}
# what a --resume must share with the saved run
RESUME_SAME = ("algo", "task", "data", "style", "init")

# -----------------------------------------------------------------------------
# the GRPO pieces, one rule each


def group_advantages(rewards, group_size, std_norm):
    """A_j = r_j - mean(group); JustGRPO also divides by the unbiased group std + 1e-4."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if std_norm:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.flatten()


def clipped_objective(logp, old_logp, adv, eps):
    """PPO's clipped surrogate per token: min(rho A, clip(rho, 1-eps, 1+eps) A), rho = exp(logp - old)."""
    rho = torch.exp(logp - old_logp)
    obj = torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv)
    clipped = ((rho < 1 - eps) & (adv < 0)) | ((rho > 1 + eps) & (adv > 0))
    return obj, clipped


def k3_kl(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def token_logp(model, x, attn, positions, tokens, temperature):
    """log p(tokens) at `positions` (a slice, or (B, K) per row) of input x under the sampling
    distribution of sample.py; the LM head runs for those positions only."""
    logits = model(x, attention_mask=attn, logits_slice=positions)
    return sampling_logp(logits, tokens, model.config, temperature)


def sampling_logp(logits, tokens, config, temperature):
    """log_softmax(logits / T)[token] in float32 (float64 for a float64 model) with the ids
    sample.py never draws excluded (T = 0 means greedy: the untempered distribution, as the
    trajectory stores)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).masked_fill(banned_ids(config, logits.device), -math.inf)
    return torch.log_softmax(logits / (temperature or 1.0), -1).gather(-1, tokens[..., None])[..., 0]


def cj_grpo_loss(model, ref, mb, cfg, n_micro):
    """CJ-GRPO (consistency trajectory GRPO), one micro-batch, backward step by step:
        loss = (1/S) sum_i  -mean_{slots j committed at step i} [ min(rho A, clip(rho) A) - beta KL ]
    with rho = exp(log p(x_j | state x_i) - the log-prob stored by the rollout at step i).
    Every step weighs 1/S whatever its size; backward runs per step, so memory is that of one
    step (the reference builds all S graphs first, so its memory grows with S)."""
    S = mb["num_steps"]
    stats = dict(loss=0.0, clipped=0.0, kl=0.0, tokens=0)
    for i in range(S):
        committed = mb["step_of"] == i  # prompt slots hold -1
        n = committed.sum()
        if n == 0:
            continue
        # the LM head only for the slots committed at step i (rows with fewer get unused slots, weight 0)
        pos = committed.float().topk(int(committed.sum(1).max()), dim=1).indices
        committed, tokens = committed.gather(1, pos), mb["x"].gather(1, pos)
        state = torch.where(mb["step_of"] >= i, model.config.mask_token_id, mb["x"])
        with autocast(mb["device"]):
            logp = token_logp(model, state, mb["attn"], pos, tokens, cfg.temperature)
        obj, clipped = clipped_objective(logp, mb["logp"].gather(1, pos), mb["adv"][:, None], cfg.clip_eps)
        if ref is not None:
            with torch.no_grad(), autocast(mb["device"]), adapters_off(ref):
                ref_logp = token_logp(ref, state, mb["attn"], pos, tokens, cfg.temperature)
            kl = k3_kl(logp, ref_logp)
            obj = obj - cfg.beta * kl
            stats["kl"] += (kl * committed).sum().item() / n.item() / S
        loss = -(obj * committed).sum() / n / S
        (loss / n_micro).backward()
        stats["loss"] += loss.item()
        stats["clipped"] += (clipped & committed).sum().item() / n.item() / S
        stats["tokens"] += n.item()
    return stats


def just_grpo_scale(adv, group_size, L, world):
    """JustGRPO's normalisation, one prompt group at a time (its micro-step is one prompt x G
    completions per rank): every token loss of group g is scaled by 1 / (L (n_g + 1e-5)),
    n_g = completions of g with A != 0, averaged over ranks at the same group index (every rank
    holds as many groups, and a group never spans processes). Per sequence, so that no split into
    micro-batches or stacked forwards changes the gradient."""
    n = (adv.view(-1, group_size) != 0).sum(1).to(adv.dtype)
    if dist.is_initialized():
        dist.all_reduce(n)
        n /= world
    return (1.0 / (L * (n + 1e-5))).repeat_interleave(group_size)


def just_grpo_loss(model, mb, cfg):
    """JustGRPO, one micro-batch. Token t of completion o_j is scored on the input the AR rollout
    saw (prompt + o_<t + masks):
        loss = -sum_groups g sum_{j in g} sum_t A_j log p(o_jt | ...) / (L (n_g + 1e-5))
    (mb["scale"], see just_grpo_scale), summed over micro-batches. As published the ratio is
    exp(logp - logp.detach()) == 1, so the clip never acts and this is REINFORCE with the group
    baseline: we write it that way. Positions share forwards: each (sequence, position) pair is
    one row of a stacked batch."""
    P, L = mb["P"], mb["L"]
    train = (mb["step_of"][:, P:] >= 0) & (mb["adv"] != 0)[:, None]  # A = 0 rows have no gradient
    if cfg.skip_eos_tail:  # after the first EOS a trained model is near certain: little gradient
        eos = mb["x"][:, P:] == model.config.eos_token_id
        first = torch.where(eos.any(1), eos.float().argmax(1), L)
        train &= torch.arange(L, device=eos.device)[None] <= first[:, None]
    if cfg.top_entropy < 1.0:  # train only the rollout's highest-entropy positions (per sequence)
        k = max(1, math.ceil(cfg.top_entropy * L))
        top = mb["entropy"][:, P:].topk(k, dim=1).indices
        train &= torch.zeros_like(train).scatter_(1, top, True)
    rows, slots = train.nonzero(as_tuple=True)
    total = 0.0
    n_chunks = torch.tensor(-(-len(rows) // cfg.stack), device=rows.device)
    if dist.is_initialized():  # FSDP: every rank must run as many forwards as the busiest one
        dist.all_reduce(n_chunks, op=dist.ReduceOp.MAX)
    for c in range(0, int(n_chunks) * cfg.stack, cfg.stack):
        r, s = rows[c:c + cfg.stack], slots[c:c + cfg.stack]
        weight = 1.0
        if len(r) == 0:  # this rank is out of positions: a zero-weight forward keeps the collectives in step
            r, s, weight = rows.new_zeros(1), slots.new_zeros(1), 0.0
        step = mb["step_of"][r, P + s]
        state = torch.where(mb["step_of"][r] >= step[:, None], model.config.mask_token_id, mb["x"][r])
        with autocast(mb["device"]):
            logits = model(state, attention_mask=mb["attn"][r], logits_slice=(P + s)[:, None])
        logp = sampling_logp(logits[:, 0], mb["x"][r, P + s], model.config, cfg.temperature)
        loss = -(mb["adv"][r] * mb["scale"][r] * logp).sum() * weight
        loss.backward()  # summed, not averaged, over micro-batches (as published)
        total += loss.item()
    return dict(loss=total, clipped=0.0, kl=0.0, tokens=len(rows))


def diffu_mask(prompt_attn, p, seed):
    """d1's random prompt masking: each real prompt token masked with probability p; the same
    mask (from `seed`) serves logp_old, logp_ref and logp of one inner iteration."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(prompt_attn.shape, generator=g) < p).to(prompt_attn.device) & prompt_attn


def diffu_grpo_logp(model, mb, iteration, cfg):
    P, L = mb["P"], mb["L"]
    x = mb["x"].clone()
    x[:, P:] = model.config.mask_token_id
    x[:, :P] = torch.where(mb["prompt_masks"][:, iteration], model.config.mask_token_id, x[:, :P])
    with autocast(mb["device"]):
        return token_logp(model, x, mb["attn"], slice(P, P + L), mb["x"][:, P:], cfg.temperature)


def add_diffu_inputs(model, batch, cfg, seed):
    """diffu-GRPO's prompt mask per inner iteration (seeds seed, seed + 1, ...) and, when there is
    more than one iteration, the rollout policy's log-probs under each (the ratio's denominator)."""
    prompt_attn = batch["attn"][:, :batch["P"]].cpu()
    masks = [diffu_mask(prompt_attn, cfg.prompt_mask_p, seed + j) for j in range(cfg.num_iterations)]
    batch["prompt_masks"] = torch.stack(masks, 1).to(batch["device"])
    if cfg.num_iterations > 1:
        with torch.no_grad():
            batch["old_logp"] = torch.stack([diffu_grpo_logp(model, batch, j, cfg) for j in range(cfg.num_iterations)], 1)
        back_to_training(model)


def diffu_grpo_loss(model, ref, mb, iteration, cfg, n_micro):
    """diffu-GRPO (d1): one forward on a fully masked completion; per-token clipped objective
    averaged over the completion tokens up to and including the first EOS."""
    P = mb["P"]
    logp = diffu_grpo_logp(model, mb, iteration, cfg)
    old = mb["old_logp"][:, iteration] if "old_logp" in mb else logp.detach()
    obj, clipped = clipped_objective(logp, old, mb["adv"][:, None], cfg.clip_eps)
    eos = mb["x"][:, P:] == model.config.eos_token_id
    keep = (eos.cumsum(1) - eos.long()) == 0  # up to and including the first EOS
    kl_mean = 0.0
    if ref is not None:
        with torch.no_grad(), adapters_off(ref):
            ref_logp = diffu_grpo_logp(ref, mb, iteration, cfg)
        kl = k3_kl(logp, ref_logp)  # the gradient flows through logp, as in cj_grpo_loss
        obj = obj - cfg.beta * kl
        kl_mean = ((kl * keep).sum() / keep.sum()).item()
    loss = -(obj * keep).sum() / keep.sum()
    (loss / n_micro).backward()
    return dict(loss=loss.item(), clipped=((clipped & keep).sum() / keep.sum()).item(), kl=kl_mean, tokens=keep.sum().item())

# -----------------------------------------------------------------------------
# rollouts, evaluation, the loop


def decode_kwargs(cfg, algo):
    """The rollout's decoding: AR order for JustGRPO, else the configured schedule."""
    L = cfg.gen_length
    if algo == "just_grpo":
        return dict(schedule="linear", steps=L, block_length=1)
    if cfg.schedule == "ass":
        return dict(schedule="ass", steps=cfg.diffusion_steps or L.bit_length() - 1, block_num=cfg.block_num,
                    eoser=cfg.eoser, eos_min_gamma=cfg.eos_min_gamma)
    return dict(schedule="linear", steps=cfg.diffusion_steps or L // 2, block_length=cfg.block_length or L,
                eoser=cfg.eoser, eos_min_gamma=cfg.eos_min_gamma)


def encode_prompts(tok, task, examples, style, device):
    """Chat-templated prompts, left-padded, with their key mask."""
    return left_pad([tok.chat_prompt(task.prompt(ex, style=style)) for ex in examples], tok.eos_id, device)


def score(tok, task, x, P, examples, algo):
    """(rewards, correct) of each completion."""
    texts = [tok.decode(row, skip_special=True) for row in x[:, P:].cpu()]
    graded = task.grade(texts, examples)  # code tasks: the programs run in parallel
    correct = torch.tensor([float(ok) for ok, _ in graded])
    if algo == "just_grpo":  # JustGRPO: +1 correct / -1 wrong, no format terms
        return 2 * correct - 1, correct
    return torch.tensor([float(reward) for _, reward in graded]), correct


@torch.no_grad()
def evaluate(model, tok, task, examples, cfg, decoding, device, rank, world, batch_size=128):
    """Held-out accuracy and mean reward at temperature 0; each rank takes a share."""
    model.eval()
    examples = examples[:len(examples) - len(examples) % world]  # FSDP: every rank runs as many forwards
    mine = examples[rank::world]
    correct = reward = 0.0
    for i in range(0, len(mine), batch_size):
        chunk = mine[i:i + batch_size]
        prompts, attn = encode_prompts(tok, task, chunk, cfg.style, device)
        with autocast(device):
            x = generate(model, prompts, attention_mask=attn, gen_length=cfg.gen_length, **decoding)
        texts = [tok.decode(row, skip_special=True) for row in x[:, prompts.size(1):].cpu()]
        for c, r in task.grade(texts, chunk):
            correct, reward = correct + c, reward + r
    totals = torch.tensor([correct, reward], device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    back_to_training(model)
    return (totals / len(examples)).tolist()


def rollout(model, tok, task, examples, cfg, device):
    """G completions per prompt with the trajectory; returns the training batch as tensors."""
    group = [ex for ex in examples for _ in range(cfg.group_size)]
    prompts, attn = encode_prompts(tok, task, group, cfg.style, device)
    model.eval()
    with torch.no_grad(), autocast(device):
        x, traj = generate(model, prompts, attention_mask=attn, gen_length=cfg.gen_length, temperature=cfg.temperature,
                           return_trajectory=True, record_entropy=cfg.algo == "just_grpo" and cfg.top_entropy < 1,
                           **decode_kwargs(cfg, cfg.algo))
    back_to_training(model)
    P = prompts.size(1)
    rewards, correct = score(tok, task, x, P, group, cfg.algo)
    full_attn = torch.cat([attn, torch.ones(len(group), cfg.gen_length, dtype=torch.bool, device=device)], 1)
    batch = dict(x=x, step_of=traj.step_of, logp=traj.logp, attn=full_attn, P=P, L=cfg.gen_length,
                 num_steps=traj.num_steps, rewards=rewards.to(device), correct=correct.to(device), device=device,
                 adv=group_advantages(rewards, cfg.group_size, cfg.std_norm).to(device))
    if traj.entropy is not None:
        batch["entropy"] = traj.entropy
    return batch


def all_ranks(t):
    """A tensor from every rank, concatenated along its first dimension in rank order (rank 0 logs
    statistics of the whole batch)."""
    if not dist.is_initialized():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def micro_batches(batch, size):
    """Slices of every per-sequence tensor (first dimension = sequences) of the rollout batch."""
    keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == len(batch["x"])]
    for i in range(0, len(batch["x"]), size):
        yield {**batch, **{k: batch[k][i:i + size] for k in keys}}


def train_on_rollout(model, ref, optimizer, batch, cfg, world):
    """num_iterations updates on one rollout batch; returns averaged stats."""
    stats = dict(loss=0.0, clipped=0.0, kl=0.0, tokens=0, skipped=0)
    n_micro = math.ceil(len(batch["x"]) / cfg.micro_batch)
    if cfg.algo == "just_grpo":
        batch["scale"] = just_grpo_scale(batch["adv"], cfg.group_size, batch["L"], world)
    for it in range(cfg.num_iterations):
        for mb in micro_batches(batch, cfg.micro_batch):
            if cfg.algo == "cj_grpo":
                s = cj_grpo_loss(model, ref, mb, cfg, n_micro)
            elif cfg.algo == "diffu_grpo":
                s = diffu_grpo_loss(model, ref, mb, it, cfg, n_micro)
            else:
                s = just_grpo_loss(model, mb, cfg)
            for k in ("loss", "clipped", "kl"):  # JustGRPO's loss is a sum over micro-batches, the others a mean
                stats[k] += s[k] / ((1 if cfg.algo == "just_grpo" else n_micro) * cfg.num_iterations)
            stats["tokens"] += s["tokens"]
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if torch.isfinite(grad_norm):  # a non-finite gradient never reaches the weights
            optimizer.step()
        else:
            stats["skipped"] += 1
            tqdm.write(f"step skipped: non-finite gradient (norm {grad_norm.item()})")
        optimizer.zero_grad(set_to_none=True)
    return stats


def check_config(cfg):
    if cfg.algo not in ("cj_grpo", "just_grpo", "diffu_grpo"):
        raise ValueError(f"--algo {cfg.algo!r}: expected cj_grpo, just_grpo or diffu_grpo")
    if cfg.algo == "just_grpo" and cfg.beta > 0:
        raise ValueError("--beta must be 0 for just_grpo: JustGRPO trains without a KL term")
    if cfg.algo == "just_grpo" and cfg.num_iterations != 1:
        raise ValueError("--num_iterations must be 1 for just_grpo: it has no importance ratio (see just_grpo_loss)")
    if cfg.group_size < 2:
        raise ValueError(f"--group_size {cfg.group_size}: a group needs at least 2 completions")
    if not 0 < cfg.top_entropy <= 1:
        raise ValueError(f"--top_entropy {cfg.top_entropy}: expected a fraction in (0, 1]")
    if cfg.schedule not in ("ass", "linear"):
        raise ValueError(f"--schedule {cfg.schedule!r}: expected ass or linear")
    for flag in ("steps", "eval_n", "prompts_per_step", "micro_batch", "num_iterations", "eval_every", "save_every",
                 "max_skipped", "stack"):
        if getattr(cfg, flag) < 1:
            raise ValueError(f"--{flag} {getattr(cfg, flag)}: expected at least 1")
    if not cfg.data and cfg.n_train < cfg.prompts_per_step:
        raise ValueError(f"--n_train {cfg.n_train}: expected at least --prompts_per_step {cfg.prompts_per_step}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite: give one (continue the run, or start over in its folder)")
    if cfg.lora_rank < 0 or not 0 <= cfg.lora_dropout < 1:
        raise ValueError(f"--lora_rank {cfg.lora_rank} / --lora_dropout {cfg.lora_dropout}: expected a rank >= 0 "
                         f"(0 = full parameters) and a dropout in [0, 1)")
    parse_targets(cfg.lora_targets)


def reward_scale(algo):
    """What reward_mean means: JustGRPO's reward is the correctness sign, the others the task's reward."""
    return "+1 correct / -1 wrong" if algo == "just_grpo" else "the task's reward (format terms + correctness)"


def check_prompts(tok, task, examples, cfg, max_len, where):
    """Every prompt fits beside gen_length into the model's window: checked before training, not
    at the step that first samples the long one."""
    for i, ex in enumerate(examples):
        n = len(tok.chat_prompt(task.prompt(ex, style=cfg.style)))
        if n + cfg.gen_length > max_len:
            raise SystemExit(f"{where(i)}: the prompt is {n} tokens; with --gen_length {cfg.gen_length} that exceeds "
                             f"the model's max_sequence_length {max_len}")


def main(cfg):
    check_config(cfg)
    rank, world, device = setup_distributed(cfg.device)
    if cfg.prompts_per_step % world:
        raise ValueError(f"--prompts_per_step {cfg.prompts_per_step} must divide by the number of processes {world}")
    cfg.out_dir = cfg.out_dir or f"out/rl/{cfg.algo}-{cfg.task}"  # runs of different algorithms never share a folder
    with run_folder(cfg.out_dir, cfg.resume, cfg.overwrite, rank) as out:
        train(cfg, out, rank, world, device)
    if dist.is_initialized():
        dist.destroy_process_group()


def train(cfg, out, rank, world, device):
    t_start = time.time()
    start = out / "latest" if cfg.resume else Path(cfg.init)
    saved = read_training_state(start, cfg, RESUME_SAME, cfg.steps) if cfg.resume else None
    if cfg.lora_rank:  # the base always comes from --init (a resumed run's adapters from its train_state.pt);
        # frozen in bf16 on the GPU, float32 on the CPU (whose bf16 matmuls are slow)
        model = LLaDA.from_pretrained(cfg.init, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
        torch.manual_seed(cfg.seed)  # A's random init: the same in every process (FSDP shards it) and every run
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    else:
        model = LLaDA.from_pretrained(start)
    tok = load_tokenizer(model.source_dir)
    ref = None
    if cfg.beta > 0 and not cfg.lora_rank:
        ref = prepare_model(LLaDA.from_pretrained(cfg.init), world, device, frozen=True).eval().requires_grad_(False)
    model = prepare_model(model, world, device, cfg.compile, keep_dtype=cfg.lora_rank > 0)
    if cfg.lora_rank and device.type == "cuda":  # 8B on one GPU: recompute each block's activations in backward
        model.activation_checkpointing = True
    if cfg.beta > 0 and cfg.lora_rank:  # the references' KL reference: the same model with the adapters off
        ref = model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")  # one kernel pass over the state, not several
    step = start_step = load_training_state(saved, model, optimizer) if cfg.resume else 0
    task = get_task(cfg.task)
    if cfg.data and cfg.task == "mbpp":  # MBPP's own split by task_id: train 601-974, held out from 511-600
        train_set, held_out = task.load(cfg.data, "train"), task.load(cfg.data, "validation")[:cfg.eval_n]
    elif cfg.data:  # the file's last eval_n rows are held out, never trained on
        rows = task.load(cfg.data)
        if len(rows) < cfg.eval_n + cfg.prompts_per_step:
            raise SystemExit(f"--data {cfg.data}: {len(rows)} rows, but --eval_n {cfg.eval_n} held out + "
                             f"--prompts_per_step {cfg.prompts_per_step} to train on need {cfg.eval_n + cfg.prompts_per_step}")
        train_set, held_out = rows[:-cfg.eval_n], rows[-cfg.eval_n:]
        where = lambda i: f"--data {cfg.data} row {i + 1}"
    else:
        # held out: the validation split (checkpoints and hyperparameters are chosen on it), never test
        train_set, held_out = task.generate(cfg.n_train, seed=0), task.generate(cfg.eval_n, seed=1, split="validation")
        where = lambda i: (f"{cfg.task} training problem {i}" if i < len(train_set) else
                           f"{cfg.task} held-out problem {i - len(train_set)}") + " (generated)"
    check_prompts(tok, task, train_set + held_out, cfg, model.config.max_sequence_length, where)
    log = MetricsLog(out, rank, resumed_step=step)
    per_rank = cfg.prompts_per_step // world
    if rank == 0:
        tqdm.write(f"{cfg.algo} on {cfg.task}: reward = {reward_scale(cfg.algo)}; acc = share of rollouts correct "
                   f"(eval = held-out, greedy)")
    before = None  # the starting model's held-out (accuracy, reward), for the closing summary
    if step == 0:
        before = evaluate(model, tok, task, held_out, cfg, decode_kwargs(cfg, cfg.algo), device, rank, world)
        if rank == 0:
            tqdm.write(f"before training: held-out accuracy {before[0]:.3f}, reward {before[1]:.3f}")
        log.write(step=0, eval_acc=before[0], eval_reward=before[1])  # the curves start where training starts
    pbar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=rank != 0)
    eval_acc, no_update, first_reward = None, 0, None
    for step in pbar:
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        epoch, pos = divmod(step * cfg.prompts_per_step, len(train_set) - len(train_set) % cfg.prompts_per_step)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 7 + epoch))
        examples = [train_set[i] for i in order[pos + rank * per_rank:pos + (rank + 1) * per_rank]]
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup)
        t0 = time.time()
        try:
            batch = rollout(model, tok, task, examples, cfg, device)
            if cfg.algo == "diffu_grpo":
                add_diffu_inputs(model, batch, cfg, seed=cfg.seed * 7919 + (step * world + rank) * 131)
            t1 = time.time()
            stats = train_on_rollout(model, ref, optimizer, batch, cfg, world)
        except torch.OutOfMemoryError:
            raise SystemExit(f"out of memory at step {step + 1} (algo {cfg.algo}, {per_rank * cfg.group_size} sequences per rank, "
                             f"micro_batch {cfg.micro_batch}, gen_length {cfg.gen_length}, stack {cfg.stack}): try a smaller "
                             f"--micro_batch, --stack (just_grpo) or --prompts_per_step, or more processes under torchrun "
                             f"(FSDP shards the weights and turns on activation checkpointing)") from None
        t2 = time.time()
        eos = batch["x"][:, batch["P"]:] == model.config.eos_token_id
        length = torch.where(eos.any(1), eos.float().argmax(1), cfg.gen_length).float()
        r = all_ranks(batch["rewards"]).view(-1, cfg.group_size)
        correct = all_ranks(batch["correct"])
        losses = all_ranks(torch.tensor([stats["loss"], stats["clipped"], stats["kl"]], device=device)).view(-1, 3).mean(0)
        row = dict(step=step + 1, reward_mean=r.mean().item(), reward_std=r.std(1).mean().item(), acc=correct.mean().item(),
                   zero_spread=(r.std(1) == 0).float().mean().item(), completion_length=all_ranks(length).mean().item(),
                   loss=losses[0].item(), clipped=losses[1].item(), kl=losses[2].item(), skipped=stats["skipped"],
                   rollout_time=t1 - t0, train_time=t2 - t1, lr=lr_at(step, cfg.lr, cfg.warmup),
                   # rollout tokens (prompt + completion) trained on per second, over all ranks
                   trained_tokens_per_s=batch["x"].numel() * world * cfg.num_iterations / (t2 - t1))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["eval_acc"], row["eval_reward"] = evaluate(model, tok, task, held_out, cfg, decode_kwargs(cfg, cfg.algo),
                                                           device, rank, world)
            eval_acc = row["eval_acc"]
            if rank == 0:
                tqdm.write(json.dumps(row))
        log.write(**row)
        first_reward = row["reward_mean"] if first_reward is None else first_reward
        pbar.set_postfix(reward=f"{row['reward_mean']:.3f}", acc=f"{row['acc']:.3f}", loss=f"{row['loss']:.4f}",
                         **({} if eval_acc is None else dict(eval_acc=f"{eval_acc:.3f}")))
        no_update = no_update + 1 if stats["skipped"] == cfg.num_iterations else 0
        if no_update >= cfg.max_skipped:
            raise SystemExit(f"stopped at step {step + 1}: {no_update} steps in a row had non-finite gradients "
                             f"(--max_skipped {cfg.max_skipped}); the weights are not saved, {out / 'latest'} keeps the "
                             f"last checkpoint (if any). Try a lower --lr or --grad_clip")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_training_checkpoint(out, model, optimizer, step + 1, cfg, rank)
    if rank == 0:
        was = ("", "") if before is None else (f"{before[0]:.3f} -> ", f"{before[1]:.3f} -> ")
        print(f"{cfg.steps - start_step} steps in {(time.time() - t_start) / 60:.1f} min. Held-out ({len(held_out)} "
              f"problems, greedy; one standard error is at most {0.5 / len(held_out) ** 0.5:.3f}): accuracy "
              f"{was[0]}{row['eval_acc']:.3f}, reward {was[1]}{row['eval_reward']:.3f}. Training reward, first -> last "
              f"step: {first_reward:.3f} -> {row['reward_mean']:.3f}")
        print(f"checkpoint: {out / 'latest'}\nmetrics: {out / 'metrics.jsonl'} (plot: python experiments/plot_metrics.py "
              f"{out / 'metrics.jsonl'})")


if __name__ == "__main__":
    with name_the_failed_rank():  # under torchrun: one line naming a failed rank, not a hang or a traceback
        main(config_from_args(RLConfig, defaults_by=("algo", ALGO_DEFAULTS)))
