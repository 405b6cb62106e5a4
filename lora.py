"""
LoRA (Hu et al. 2021) in plain torch: a chosen nn.Linear of model.py computes
    y = W x + (alpha / r) B A dropout(x),   A (r, in) random, B (out, r) zero,
so training starts from the base model exactly; only A and B are trained (float32) while W stays
frozen in its own dtype (bf16 on the GPU). The adapters are parameters of the Linear they adapt
(`...q_proj.lora_A`), so the base's parameter names, checkpoint loading and FSDP2's per-block
sharding are untouched; a forward hook adds the low-rank term.

    from lora import add_lora, adapters_off, merge_lora
    add_lora(model, rank=128, alpha=64, dropout=0.05, targets="q_proj,k_proj,v_proj,up_proj")
    with adapters_off(model):            # the base model: the KL reference, no second copy
        ref_logits = model(x)
    state, adapters = merge_lora(model.state_dict(), 64 / 128)   # W + (alpha / r) B A: the LLaDA layout

The CJ-GRPO and d1 references (peft LoraConfig r 128, alpha 64, dropout 0.05) list LLaMA's seven
projection names; of those only q_proj, k_proj, v_proj and up_proj exist in LLaDA (the others are
attn_out, ff_proj, ff_out), so those four are what they adapt and our default. The output head
and the embedding are never adapted.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

REFERENCE_TARGETS = "q_proj,k_proj,v_proj,up_proj"
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def parse_targets(targets):
    """'q_proj,up_proj' or 'all' (the seven linear layers of a block) -> a tuple of names."""
    names = BLOCK_LINEARS if targets == "all" else tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in names if t not in BLOCK_LINEARS]
    if unknown or not names:
        raise ValueError(f"--lora_targets {targets!r}: expected 'all' or a comma-separated subset of {', '.join(BLOCK_LINEARS)}")
    return names


def lora_hook(linear, inputs, out):
    """W x (the module's own output) + (alpha / r) B A dropout(x)."""
    if not linear.lora_on:
        return out
    x = F.dropout(inputs[0], linear.lora_dropout, linear.training)
    return out + (x @ linear.lora_A.to(x.dtype).t() @ linear.lora_B.to(x.dtype).t()) * linear.lora_scale


def add_lora(model, rank, alpha, dropout, targets):
    """Freeze every parameter of the model and give each targeted Linear of each block float32
    adapters: A as nn.Linear's own init (Kaiming-uniform, as peft), B = 0."""
    names = parse_targets(targets)
    model.requires_grad_(False)
    for block in model.transformer.blocks:
        for name in names:
            linear = getattr(block, name)
            w = linear.weight
            linear.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=w.device, dtype=torch.float32))
            nn.init.kaiming_uniform_(linear.lora_A, a=math.sqrt(5))
            linear.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=w.device, dtype=torch.float32))
            linear.lora_scale, linear.lora_dropout, linear.lora_on = alpha / rank, dropout, True
            linear.register_forward_hook(lora_hook)
    return model


@contextmanager
def adapters_off(model):
    """The base model for the duration (the references' KL reference: peft's disable_adapter).
    A model without adapters (or None) passes through unchanged."""
    adapted = [m for m in model.modules() if hasattr(m, "lora_on")] if model is not None else []
    for m in adapted:
        m.lora_on = False
    try:
        yield model
    finally:
        for m in adapted:
            m.lora_on = True


def merge_lora(state, scale):
    """A full state dict with adapters -> (the model in the LLaDA layout with W + scale B A folded
    in, all float32 like a full-parameter checkpoint: in bf16 the small update would mostly round
    away; the adapters alone). A state dict without adapters comes back as it is."""
    adapters = {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}
    if not adapters:
        return state, adapters
    merged = {k: v.float() for k, v in state.items() if k not in adapters}
    for key in adapters:
        if key.endswith(".lora_A"):
            layer = key[:-len(".lora_A")]
            # not in place: a float32 tensor of the state dict may be the live parameter itself
            merged[layer + ".weight"] = merged[layer + ".weight"] + scale * (adapters[layer + ".lora_B"].float() @ adapters[key].float())
    return merged, adapters
