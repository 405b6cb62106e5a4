"""
What both trainers share: flags from a dataclass, the distributed setup (FSDP2 under torchrun),
bf16 autocast, training checkpoints that a killed run resumes from, the learning-rate warmup
and the metrics log.

    from train_common import config_from_args, setup_distributed, prepare_model
    rank, world, device = setup_distributed()          # one process, or torchrun's environment
"""
import argparse
import json
import os
from dataclasses import asdict, fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lora import merge_lora
from model import save_checkpoint



def config_from_args(cls, argv=None):
    """Command-line flags from a dataclass's fields, defaults included."""
    parser = argparse.ArgumentParser(description=cls.__doc__)
    for f in fields(cls):
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"),
                                nargs="?", const=True, default=f.default)
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return cls(**vars(parser.parse_args(argv)))


def setup_distributed(device=""):
    """torchrun's environment -> (rank, world_size, device). Without torchrun: one process."""
    if "RANK" in os.environ:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        # a rank that dies leaves the others in a collective: fail after 30 minutes, not never
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, torch.device(device)


def prepare_model(model, world, device, compile=False, frozen=False, keep_dtype=False):
    """Activation checkpointing per block, then FSDP2 per block and on the root (torchtitan's
    recipe). Parameters stay float32 (master weights: at lr 3e-6 a bf16 weight cannot take
    the update); on the GPU compute runs in bf16 with float32 gradient reduction. keep_dtype: a
    LoRA model, whose frozen base stays as loaded (bf16 on the GPU) beside float32 adapters."""
    model.to(device=device, dtype=None if keep_dtype else torch.float32)
    if compile:
        model.compile_blocks()
    if world > 1 or dist.is_initialized():
        model.activation_checkpointing = device.type == "cuda"
        # cast_forward_inputs off: RoPE's cos/sin stay float32 (rope_full_precision), and a
        # checkpointed block recomputes on the very inputs it saw (the cast is skipped on CUDA
        # when FSDP re-enters a block for recomputation, which checkpointing rejects)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
        for block in model.transformer.blocks:
            fully_shard(block, mp_policy=mp)
        # FSDP2 keeps the root's parameters gathered from forward to backward; a frozen reference
        # model has no backward, so it reshards right after each forward instead
        fully_shard(model, mp_policy=mp, reshard_after_forward=True if frozen else None)
    return model


def back_to_training(model):
    """After no-grad forwards (generation, old log-probs). FSDP2 leaves the root module's own
    parameters (embedding, final norm, LM head) unsharded after a forward without a backward, and
    while they are, model.parameters() yields the unsharded tensors, not the sharded ones the
    optimizer holds: a model.zero_grad() or a gradient clip there would miss the real gradients
    (bench_train.py did). Resharding keeps "outside a forward, parameters are sharded" true."""
    if hasattr(model, "reshard"):
        model.reshard()
    model.train()


def autocast(device):
    """bf16 compute for an unsharded model on the GPU (FSDP does the cast itself)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and not dist.is_initialized())


def save_training_checkpoint(out_dir, model, optimizer, step, cfg, rank, keep_copy=False):
    """out_dir/latest: the model in the LLaDA layout plus train_state.pt (optimizer, step,
    config), gathered from all ranks and written by rank 0, complete or not at all. With LoRA
    the model files hold the merged weights and train_state.pt the adapters (--resume reads
    those on top of --init)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=opts)
    train_state = {"optimizer": get_optimizer_state_dict(model, optimizer, options=opts), "step": step, "config": asdict(cfg)}
    if getattr(cfg, "lora_rank", 0):
        state, train_state["lora"] = merge_lora(state, cfg.lora_alpha / cfg.lora_rank)
    if rank == 0:
        for name in ["latest"] + ([f"step_{step}"] if keep_copy else []):
            save_checkpoint(Path(out_dir) / name, state, model.config, files_from=model.source_dir, train_state=train_state)
    if dist.is_initialized():  # nobody runs ahead into a collective while rank 0 writes
        dist.barrier()


def load_training_state(ckpt_dir, model, optimizer):
    """Restore the optimizer (and LoRA adapters) from ckpt_dir/train_state.pt; returns the step to
    continue from."""
    path = Path(ckpt_dir) / "train_state.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = {k: tuple(v.shape) for k, v in state.get("lora", {}).items()}
    mine = {k: tuple(p.shape) for k, p in model.named_parameters() if k.endswith((".lora_A", ".lora_B"))}
    if saved != mine:
        rank = lambda shapes: next((s[0] for k, s in shapes.items() if k.endswith(".lora_A")), 0)
        raise ValueError(f"{path}: its LoRA adapters ({len(saved)} tensors, rank {rank(saved)}) do not match this run's "
                         f"({len(mine)}, rank {rank(mine)}): resume with the --lora_rank and --lora_targets it was started with")
    if saved:
        set_model_state_dict(model, state["lora"], options=StateDictOptions(full_state_dict=True, strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    return state["step"]


def lr_at(step, lr, warmup):
    return lr * min(1.0, (step + 1) / max(1, warmup))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, written by rank 0. A resumed run first drops the
    rows a killed run logged after its last checkpoint, so every step appears once."""

    def __init__(self, out_dir, rank, resumed_step=0):
        self.path = Path(out_dir) / "metrics.jsonl" if rank == 0 else None
        if self.path and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in rows))

    def write(self, **row):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
