"""
RL on LLaDA-8B's full shape on one GPU with LoRA (train_rl.py --lora_rank 128): all 32 layers,
random weights built on the GPU in bf16 (frozen base, 16 GB), float32 rank-128 adapters on the
references' targets (q_proj, k_proj, v_proj, up_proj) with AdamW, activation checkpointing per
block. One CJ-GRPO step (ASS + EOSER rollout, mu 2, KL to the adapters-off base at beta 0.04)
and one JustGRPO step (AR rollout; the top 25% entropy positions trained, so that the step takes
about a minute): peak memory, rollout and training seconds, the training phase's MFU.

    python bench/bench_lora.py --out bench_lora.json       # one H100: about 3 minutes, model build included
    python bench/bench_lora.py --tiny                      # CPU smoke check of the script

MFU counts the FLOPs the LoRA training phase actually does, over training seconds (optimizer
step included) and the bf16 matmul rate measured in the same run:
    2 x frozen matmuls (forward + input gradient: no weight gradient for a frozen layer; the LM head
      rows actually computed included) + 3 x attention (forward, and a backward of twice the
      forward) + 3 x adapter matmuls (forward, input and weight gradients) + 1 x the KL
      reference's forward (frozen matmuls + attention, no adapters),
per training forward; activation recomputation is not counted (as bench_train.py).
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch

import train_rl as RL
from bench_model import forward_flops, matmul_tflops
from bench_sample import sync
from bench_train import make_batch, peak_gib, reset_peak
from lora import REFERENCE_TARGETS, add_lora, parse_targets
from model import LLaDA, LLaDAConfig, byte_tokenizer_config
from train_common import prepare_model


def forward_shapes(batch, cfg, trained_rows):
    """(B, T, LM-head positions) of each training forward, as train_rl's loss functions run them."""
    n, T = len(batch["x"]), batch["x"].size(1)
    if cfg.algo == "cj_grpo":
        committed = [int((batch["step_of"] == i).sum(1).max()) for i in range(batch["num_steps"])]
        return [(n, T, k) for k in committed if k] * cfg.num_iterations
    return [(trained_rows, T, 1)]  # just_grpo: one row per trained (sequence, position) pair


def lora_training_flops(model_cfg, shapes, rank, targets, with_ref):
    """The docstring's formula: FLOPs a LoRA training phase does for these forwards."""
    d, hidden, kv = model_cfg.d_model, model_cfg.mlp_hidden_size, model_cfg.n_kv_heads * model_cfg.head_dim
    in_out = dict(q_proj=(d, d), k_proj=(d, kv), v_proj=(d, kv), attn_out=(d, d), ff_proj=(d, hidden),
                  up_proj=(d, hidden), ff_out=(hidden, d))
    adapter_per_token = model_cfg.n_layers * sum(2 * rank * sum(in_out[t]) for t in parse_targets(targets))
    total = 0
    for B, T, K in shapes:
        attention = model_cfg.n_layers * 4 * B * T * T * d
        frozen = forward_flops(model_cfg, B, T, K) - attention
        total += 2 * frozen + 3 * attention + 3 * adapter_per_token * B * T + (frozen + attention if with_ref else 0)
    return total


def build(model_cfg, device, rank, alpha, targets):
    """Random bf16 weights made where they live (never a float32 8B), then float32 adapters."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LLaDA(model_cfg)
    torch.set_default_dtype(torch.float32)
    add_lora(model, rank, alpha, 0.05, targets)
    model = prepare_model(model, 1, device, keep_dtype=True)
    model.activation_checkpointing = device.type == "cuda"  # as train_rl.py --lora_rank on one GPU
    return model


def bench_step(model, device, args, name, cfg):
    """One optimizer step's rollout + training phase, after a warm-up on a slice of the rollout."""
    ref = model if cfg.beta > 0 else None  # train_rl.main's KL reference under LoRA
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    reset_peak(device)
    batch, rollout_s = make_batch(model, cfg, args.sequences, args.prompt_length, device)
    warmup = next(RL.micro_batches(batch, 1 if cfg.algo == "just_grpo" else 2))  # kernels, Adam's state, allocator
    RL.train_on_rollout(model, ref, optimizer, warmup, cfg, 1)
    sync(device)
    t = time.time()
    stats = RL.train_on_rollout(model, ref, optimizer, batch, cfg, 1)
    sync(device)
    train_s = time.time() - t
    trained_rows = stats["tokens"] if cfg.algo == "just_grpo" else 0
    flops = lora_training_flops(model.config, forward_shapes(batch, cfg, trained_rows), args.rank, args.targets, ref is not None)
    row = dict(algo=name, sequences=args.sequences, decode_steps=batch["num_steps"], trained_rows=trained_rows or None,
               rollout_s=rollout_s, train_s=train_s, train_tflop=flops / 1e12,
               mfu=flops / train_s / (args.matmul_tflops * 1e12), peak_gib=peak_gib(device))
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=64.0)
    ap.add_argument("--targets", default=REFERENCE_TARGETS, help="--lora_targets of train_rl.py")
    ap.add_argument("--sequences", type=int, default=16, help="rollout sequences per optimizer step")
    ap.add_argument("--micro_batch", type=int, default=16)
    ap.add_argument("--prompt_length", type=int, default=128)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--top_entropy", type=float, default=0.25, help="JustGRPO: fraction of positions trained")
    ap.add_argument("--stack", type=int, default=64, help="JustGRPO (sequence, position) rows per forward")
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU: checks the script runs")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.tiny:
        device, args.matmul_tflops = torch.device("cpu"), 1.0
        model_cfg = byte_tokenizer_config(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128)
        args.rank, args.prompt_length, args.gen_length, args.sequences, args.micro_batch, args.stack = 8, 8, 16, 4, 2, 8
    else:
        device, args.matmul_tflops = torch.device("cuda"), matmul_tflops()
        model_cfg = LLaDAConfig()  # LLaDA-8B-Instruct: 32 layers
    t = time.time()
    model = build(model_cfg, device, args.rank, args.alpha, args.targets)
    sync(device)
    build_s = time.time() - t
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{where}, torch {torch.__version__}, {model_cfg.n_layers} layers, {base / 1e9:.2f}B frozen + "
          f"{adapters / 1e6:.1f}M adapter parameters (rank {args.rank}, {args.targets}), built in {build_s:.1f} s, "
          f"after build {peak_gib(device):.1f} GiB, matmul {args.matmul_tflops:.0f} TFLOP/s", flush=True)
    common = RL.RLConfig(gen_length=args.gen_length, micro_batch=args.micro_batch, lora_rank=args.rank,
                         lora_alpha=args.alpha, lora_targets=args.targets)
    runs = {"cj_grpo": replace(common, algo="cj_grpo", num_iterations=2, beta=0.04),
            "just_grpo": replace(common, algo="just_grpo", num_iterations=1, top_entropy=args.top_entropy, stack=args.stack,
                                 group_size=1)}  # groups of 1: the warm-up's size (the advantages are random anyway)
    rows = [bench_step(model, device, args, name, cfg) for name, cfg in runs.items()]
    result = dict(device=where, torch=torch.__version__, layers=model_cfg.n_layers, frozen_params=base,
                  adapter_params=adapters, build_s=build_s, matmul_tflops=args.matmul_tflops, args=vars(args), steps=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\nLoRA rank {args.rank} / alpha {args.alpha:g} on {args.targets}, {model_cfg.n_layers} layers, {where}; "
          f"{args.sequences} sequences, prompt {args.prompt_length} + L {args.gen_length}")
    print("| algorithm | rollout | decode steps | rollout s | train s | MFU (FLOPs done) | peak GiB |\n|---|---|---|---|---|---|---|")
    for r, (name, cfg) in zip(rows, runs.items()):
        what = (f"mu {cfg.num_iterations}, beta {cfg.beta}" if name == "cj_grpo"
                else f"top {cfg.top_entropy:.0%} entropy: {r['trained_rows']} positions")
        print(f"| {name} ({what}) | {'ASS + EOSER' if name == 'cj_grpo' else 'AR order'} | {r['decode_steps']} | "
              f"{r['rollout_s']:.2f} | {r['train_s']:.2f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
