"""
Masked-diffusion supervised fine-tuning: LLaDA's SFT objective, from scratch or from a checkpoint.

    python train_sft.py                          # the small bundled model: sudoku + countdown, any device
    torchrun --nproc_per_node=8 train_sft.py --init /path/LLaDA-8B-Instruct --tasks gsm8k \
        --data ../shared/data/gsm8k_train.jsonl --style d1 --gen_length 256 --lr 1e-5

The objective (LLaDA, Nie et al. 2025, SFT): the prompt is never masked; the response, padded
with EOS to gen_length, is masked token by token with probability t ~ U(eps, 1) drawn per
sequence, and
    loss = -(1/B) sum_b (1/L) sum_{i masked} log p(r_i | x_t) / t_b
Randomness is reseeded from (seed, step, rank) at every step, so resuming needs only the step.
"""
import json
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import LLaDA, byte_tokenizer_config, load_tokenizer, write_byte_tokenizer
from sample import generate, left_pad
from tasks import get_task
from train_common import (MetricsLog, autocast, back_to_training, config_from_args, load_training_state, lr_at,
                          name_the_failed_rank, prepare_model, read_training_state, run_folder, save_training_checkpoint,
                          setup_distributed)


@dataclass
class SFTConfig:
    """Masked-diffusion SFT (train_sft.py); every field is a --flag."""
    out_dir: str = "out/sft"          # checkpoints (LLaDA layout) and metrics.jsonl
    overwrite: bool = False           # start over in an --out_dir that holds a run (its metrics and checkpoint are replaced)
    init: str = ""                    # checkpoint to start from; "" = random init of the small config below
    tasks: str = "sudoku,countdown"   # comma list of tasks.py names
    task_weights: str = ""            # comma list, one per task: each task's share of a batch ("" = by row count)
    data: str = ""                    # data file for tasks without a generator (gsm8k)
    style: str = "compact"            # prompt style of tasks.py: compact (small models) or d1
    n_train: int = 50000              # generated training examples per task
    gen_length: int = 64              # response window: the answer padded with EOS
    d_model: int = 192                # small config: ~2.8M parameters, 5.5 MB in bf16
    n_layers: int = 6                 # small config: transformer blocks
    n_heads: int = 6                  # small config: attention heads (as many key/value heads)
    mlp_hidden_size: int = 512        # small config: SwiGLU hidden width
    max_sequence_length: int = 512    # small config: RoPE positions it covers (prompt + gen_length)
    batch_size: int = 128             # sequences per optimizer step, over all ranks
    lr: float = 1e-3                  # peak learning rate (after warm-up, constant)
    warmup: int = 100                 # steps of linear lr warm-up
    cooldown: float = 0.0             # final share of --max_steps over which lr decays linearly to 0 (0 = none)
    max_steps: int = 3000             # optimizer steps
    adam_beta1: float = 0.9           # AdamW beta1
    adam_beta2: float = 0.95          # AdamW beta2
    weight_decay: float = 0.1         # AdamW weight decay (decoupled)
    grad_clip: float = 1.0            # max global gradient norm
    max_skipped: int = 3              # stop (exit 1) after this many steps in a row without an update (non-finite gradients)
    eps: float = 1e-3                 # LLaDA's lower bound on the masking rate
    eval_every: int = 500             # steps between held-out evaluations (and one at the end)
    eval_n: int = 256                 # held-out examples per task (the validation split of generated tasks)
    save_every: int = 500             # steps between checkpoints (and one at the end)
    keep_every_save: bool = False     # keep step_N/ copies of every save (to pick a checkpoint later)
    seed: int = 0                     # initialisation, data order and masks
    resume: bool = False              # continue the run in --out_dir from its latest checkpoint
    device: str = ""                  # "" = cuda if available else cpu
    compile: bool = False             # torch.compile each block (first steps compile)


# what a --resume must share with the saved run (the model is read from the checkpoint: a shape
# flag that differs would be ignored without a word)
RESUME_SAME = ("tasks", "data", "style", "init", "gen_length", "d_model", "n_layers", "n_heads", "mlp_hidden_size")

# -----------------------------------------------------------------------------
# data and the SFT loss


def build_examples(cfg, tok, split, max_len):
    """Tokenised (prompt, response) pairs: prompts left-padded with a key mask, responses =
    reference completion + <|eot_id|>, padded with EOS to gen_length (as LLaDA's SFT data).
    Every prompt is checked to fit beside gen_length into max_len before training starts."""
    rows = []
    for name in cfg.tasks.split(","):
        task = get_task(name)
        if cfg.data:  # the file's last eval_n rows are held out, never trained on
            rows_in_file = task.load(cfg.data)
            if len(rows_in_file) <= cfg.eval_n:
                raise SystemExit(f"--data {cfg.data}: {len(rows_in_file)} rows, but --eval_n {cfg.eval_n} are held out "
                                 f"and at least one more is needed to train on")
            first = 0 if split == "train" else len(rows_in_file) - cfg.eval_n
            examples = rows_in_file[:-cfg.eval_n] if split == "train" else rows_in_file[-cfg.eval_n:]
            where = lambda i: f"--data {cfg.data} row {first + i + 1}"
        else:
            examples = task.generate(cfg.n_train if split == "train" else cfg.eval_n, seed=0 if split == "train" else 1,
                                     split=split)
            where = lambda i: f"{name} {split} problem {i} (generated)"
        for i, ex in enumerate(examples):
            prompt = tok.chat_prompt(task.prompt(ex, style=cfg.style))
            if len(prompt) + cfg.gen_length > max_len:
                raise SystemExit(f"{where(i)}: the prompt is {len(prompt)} tokens; with --gen_length {cfg.gen_length} "
                                 f"that exceeds the model's max_sequence_length {max_len}")
            rows.append((name, ex, prompt, tok.encode(task.reference(ex, style=cfg.style)) + [tok.eot_id]))
    too_long = [r for r in rows if len(r[3]) > cfg.gen_length]
    if too_long:
        raise ValueError(f"--gen_length {cfg.gen_length}: {len(too_long)} reference answers are longer "
                         f"(longest {max(len(r[3]) for r in too_long)} tokens)")
    prompts, prompt_mask = left_pad([r[2] for r in rows], tok.eos_id)
    responses = torch.tensor([r[3] + [tok.eos_id] * (cfg.gen_length - len(r[3])) for r in rows])
    return rows, prompts, prompt_mask, responses


def draw_masks(B, L, eps, generator):
    """t ~ U(eps, 1) per sequence; each response slot masked with probability t."""
    t = eps + (1 - eps) * torch.rand(B, generator=generator)
    masked = torch.rand(B, L, generator=generator) < t[:, None]
    return t, masked


def sft_loss(model, prompts, prompt_mask, responses, t, masked, mask_id):
    """LLaDA's SFT loss: -(1/B) sum_b (1/L) sum_{i masked} log p(r_i | x_t) / t_b."""
    B, L = responses.shape
    x = torch.cat([prompts, torch.where(masked, mask_id, responses)], 1)
    attn = torch.cat([prompt_mask, torch.ones_like(masked)], 1)
    logits = model(x, attention_mask=attn, logits_slice=slice(prompts.size(1), None)).float()
    ce = F.cross_entropy(logits.transpose(1, 2), responses, reduction="none")  # (B, L)
    return ((ce * masked) / t[:, None]).sum(1).div(L).mean()


@torch.no_grad()
def evaluate(model, tok, rows, prompts, prompt_mask, gen_length, device, batch_size=256):
    """Held-out accuracy per task with ASS + EOSER at log2(L) steps (the papers' fast decoding)."""
    model.eval()
    correct, total = {}, {}
    for i in range(0, len(rows), batch_size):
        with autocast(device):
            x = generate(model, prompts[i:i + batch_size].to(device), attention_mask=prompt_mask[i:i + batch_size].to(device),
                         gen_length=gen_length, steps=int(gen_length).bit_length() - 1, schedule="ass", eoser=True)
        for (name, ex, _, _), out in zip(rows[i:i + batch_size], x[:, prompts.size(1):].cpu()):
            text = tok.decode(out, skip_special=True)
            correct[name] = correct.get(name, 0) + get_task(name).is_correct(text, ex)
            total[name] = total.get(name, 0) + 1
    back_to_training(model)
    return {f"acc_{k}": correct[k] / total[k] for k in total}


def check_config(cfg):
    for flag in ("max_steps", "batch_size", "eval_n", "eval_every", "save_every", "max_skipped"):
        if getattr(cfg, flag) < 1:
            raise ValueError(f"--{flag} {getattr(cfg, flag)}: expected at least 1")
    if cfg.task_weights:
        weights = cfg.task_weights.split(",")
        if len(weights) != len(cfg.tasks.split(",")) or not all(w.replace(".", "", 1).isdigit() for w in weights) \
                or sum(map(float, weights)) <= 0:
            raise ValueError(f"--task_weights {cfg.task_weights}: expected one non-negative number per task of "
                             f"--tasks {cfg.tasks}, not all zero")
    if not 0 <= cfg.cooldown < 1:
        raise ValueError(f"--cooldown {cfg.cooldown}: expected a share of the steps in [0, 1)")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite: give one (continue the run, or start over in its folder)")


def main(cfg):
    check_config(cfg)
    rank, world, device = setup_distributed(cfg.device)
    with run_folder(cfg.out_dir, cfg.resume, cfg.overwrite, rank) as out:
        train(cfg, out, rank, world, device)
    if dist.is_initialized():
        dist.destroy_process_group()


def train(cfg, out, rank, world, device):
    resume_dir = out / "latest"
    saved = read_training_state(resume_dir, cfg, RESUME_SAME, cfg.max_steps) if cfg.resume else None
    if cfg.resume or cfg.init:
        model = LLaDA.from_pretrained(resume_dir if cfg.resume else cfg.init)
    else:
        torch.manual_seed(cfg.seed)
        model = LLaDA(byte_tokenizer_config(d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                            n_kv_heads=cfg.n_heads, mlp_hidden_size=cfg.mlp_hidden_size,
                                            max_sequence_length=cfg.max_sequence_length))
        model.source_dir = write_byte_tokenizer(out / ".tokenizer")
    tok = load_tokenizer(model.source_dir)
    model = prepare_model(model, world, device, cfg.compile)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")  # one kernel pass over the state, not several
    step = load_training_state(saved, model, optimizer) if cfg.resume else 0
    rows, prompts, prompt_mask, responses = build_examples(cfg, tok, "train", model.config.max_sequence_length)
    # checkpoints are chosen on the held-out rows: the validation split, never test
    held_out = build_examples(cfg, tok, "validation", model.config.max_sequence_length)
    if cfg.batch_size % world:
        raise ValueError(f"--batch_size {cfg.batch_size} must divide by the number of processes {world}")
    per_rank = cfg.batch_size // world
    row_weights = None
    if cfg.task_weights:  # each row drawn with its task's weight shared over the task's rows
        share = dict(zip(cfg.tasks.split(","), map(float, cfg.task_weights.split(","))))
        counts = {name: sum(r[0] == name for r in rows) for name in share}
        row_weights = torch.tensor([share[r[0]] / counts[r[0]] for r in rows], dtype=torch.float64)
    log = MetricsLog(out, rank, resumed_step=step)
    pbar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, disable=rank != 0)
    accs, no_update = {}, 0
    for step in pbar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        idx = (torch.randint(len(rows), (per_rank,), generator=g) if row_weights is None else
               torch.multinomial(row_weights, per_rank, replacement=True, generator=g))
        t, masked = draw_masks(per_rank, cfg.gen_length, cfg.eps, g)
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.max_steps, cfg.cooldown)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.time()
        with autocast(device):
            loss = sft_loss(model, prompts[idx].to(device), prompt_mask[idx].to(device), responses[idx].to(device),
                            t.to(device), masked.to(device), model.config.mask_token_id)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if torch.isfinite(grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        row = dict(step=step + 1, loss=loss.item(), grad_norm=grad_norm.item(), lr=lr,
                   step_time=time.time() - t0, skipped=not torch.isfinite(grad_norm).item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
            accs = evaluate(model, tok, *held_out[:3], cfg.gen_length, device)
            row.update(accs)
            if rank == 0:
                tqdm.write(json.dumps(row))
        log.write(**row)
        pbar.set_postfix(loss=f"{row['loss']:.3f}", **{k: f"{v:.3f}" for k, v in accs.items()})
        no_update = no_update + 1 if row["skipped"] else 0
        if no_update >= cfg.max_skipped:
            raise SystemExit(f"stopped at step {step + 1}: {no_update} steps in a row had non-finite gradients "
                             f"(--max_skipped {cfg.max_skipped}); the weights are not saved, {out / 'latest'} keeps the "
                             f"last checkpoint (if any). Try a lower --lr")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps:
            save_training_checkpoint(out, model, optimizer, step + 1, cfg, rank, cfg.keep_every_save)
    if rank == 0:
        print(f"checkpoint: {out / 'latest'}\nmetrics: {out / 'metrics.jsonl'} (plot: python experiments/plot_metrics.py "
              f"{out / 'metrics.jsonl'})")


if __name__ == "__main__":
    with name_the_failed_rank():  # under torchrun: one line naming a failed rank, not a hang or a traceback
        main(config_from_args(SFTConfig))
