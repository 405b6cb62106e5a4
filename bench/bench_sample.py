"""
sample.py's decoding step against the plain reference procedure, on a random-weight model of the real
LLaDA-8B shape in bf16 (one GPU), prompt 128 + gen_length 256 tokens, for each batch size B:
  (a) ours: one step of sample.generate (logits only for the window's masked slots, float64 Gumbel
      only for those slots, in row chunks, no per-sample loop, no host sync),
  (b) reference: one step of LLaDA's generate.py as published (logits for the whole sequence,
      float64 exp(logits) / (-log u)^T and float64 softmax over the whole vocabulary, top-k in a
      Python loop over the batch with a host sync per row),
  (c) the bare model forward on the same input, logits for the generation window,
  (d) the floor: a bf16 matmul of (c)'s FLOPs at the matmul rate measured in the same run;
then tokens/s of whole generate() calls (linear 256 steps, semi-AR blocks of 32 with 256 steps,
ASS + EOSER 8 steps) and the peak memory of each. Steps are timed at temperature 1 (RL rollouts),
all 256 slots masked, committing all of them (the same top-k work in (a) and (b)).

    python bench/bench_sample.py --out bench_sample.json           # CUDA (an H100); B = 1 8 32
    python bench/bench_sample.py --batch 32 --compile              # torch.compile the blocks and the sampler
    python bench/bench_sample.py --tiny                            # CPU smoke check of the script
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch
import torch.nn.functional as F

from bench_model import forward_flops
from model import LLaDA, LLaDAConfig, byte_tokenizer_config
from sample import generate, linear_counts


def add_gumbel_noise(logits, temperature):
    """LLaDA's generate.py: exp(logits) / (-log u)^T, float64, over every position and the whole vocabulary."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return logits.exp() / (-torch.log(noise)) ** temperature


def reference_step(model, x, mask_id, block_end, k, temperature):
    """One step of LLaDA's generate.py (low_confidence remasking), as published. k: (B,) tensor."""
    mask_index = x == mask_id
    logits = model(x)
    x0 = torch.argmax(add_gumbel_noise(logits, temperature), dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
    x0_p[:, block_end:] = -float("inf")
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -float("inf"))
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):  # a host sync per row: k[j] is a tensor
        _, select = torch.topk(confidence[j], k=int(k[j]))
        transfer[j, select] = True
    x[transfer] = x0[transfer]
    return x


def reference_generate(model, prompt, gen_length, steps, block_length, temperature, mask_id):
    """LLaDA's generate.py loop: blocks, linear counts inside each block, reference_step."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, device=prompt.device)], 1)
    n_blocks = gen_length // block_length
    for b in range(n_blocks):
        for k in linear_counts(block_length, steps // n_blocks):
            reference_step(model, x, mask_id, P + (b + 1) * block_length, torch.full((B,), k, device=x.device), temperature)
    return x


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, reps, warmup=True):
    """Median wall time (ms) of fn() over reps runs (after a warm-up run), and the peak memory (GiB) of a run."""
    if warmup:
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def guarded(fn, device, reps, warmup=True):
    """measure(), or (nan, nan) when the run does not fit in memory (the reference at B=32 may not)."""
    try:
        return measure(fn, device, reps, warmup)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan"), float("nan")


def matmul_tflops(device, dtype, n):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms, _ = measure(lambda: a @ b, device, reps=10)
    return 2 * n**3 / ms / 1e9


def main():
    ap = argparse.ArgumentParser(description="decoding step: ours vs the reference vs the forward vs the floor")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt_length", type=int, default=128)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per step measurement (median)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block and the sampling")
    ap.add_argument("--no_tokens", action="store_true", help="skip the whole-generation tokens/s runs")
    ap.add_argument("--reference_tokens", action="store_true", help="also time whole reference generations")
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU: checks the script runs")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        cfg = byte_tokenizer_config(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, max_sequence_length=512)
        a.batch, a.prompt_length, a.gen_length, a.reps = [1, 4], 16, 32, 2
    else:
        device, dtype, cfg = torch.device("cuda"), torch.bfloat16, LLaDAConfig()  # LLaDA-8B's shape
    torch.set_default_dtype(dtype)
    with device:  # built in place, in its dtype: no float32 copy of 8B parameters
        model = LLaDA(cfg).eval()
    torch.set_default_dtype(torch.float32)
    if a.compile:
        model.compile_blocks()
    rate = matmul_tflops(device, dtype, 256 if a.tiny else 8192)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {dtype} matmul {rate:.1f} TFLOP/s, compile={a.compile}")
    P, L, T, mask_id = a.prompt_length, a.gen_length, a.temperature, cfg.mask_token_id
    schedules = {"linear-%d" % L: dict(steps=L),
                 "semi-AR-%d" % min(32, L): dict(steps=L, block_length=min(32, L)),
                 "ASS+EOSER-%d" % (L.bit_length() - 1): dict(schedule="ass", eoser=True)}
    rows = []
    for B in a.batch:
        prompt = torch.randint(0, cfg.vocab_size, (B, P), device=device)
        x = torch.cat([prompt, torch.full((B, L), mask_id, device=device)], 1)
        k = torch.full((B,), L, device=device)  # on the device, as LLaDA's num_transfer_tokens
        with torch.no_grad():
            ours = guarded(lambda: generate(model, prompt, gen_length=L, steps=1, temperature=T, compile=a.compile), device, a.reps)
            ref = guarded(lambda: reference_step(model, x.clone(), mask_id, P + L, k, T), device, a.reps)
            fwd = guarded(lambda: model(x, logits_slice=slice(P, P + L)), device, a.reps)
            row = dict(B=B, ours_ms=ours[0], reference_ms=ref[0], forward_ms=fwd[0],
                       floor_ms=forward_flops(cfg, B, P + L, logits_positions=L) / rate / 1e9,
                       ours_peak_gib=ours[1], reference_peak_gib=ref[1], forward_peak_gib=fwd[1], tokens_per_s={})
            for label, kw in ({} if a.no_tokens else schedules).items():  # one run each, kernels warm from above
                ms, peak = guarded(lambda: generate(model, prompt, gen_length=L, temperature=T, compile=a.compile, **kw),
                                   device, 1, warmup=False)
                row["tokens_per_s"][label] = dict(ours=B * L / ms * 1000, peak_gib=peak)
                if a.reference_tokens and "schedule" not in kw:
                    ms, _ = guarded(lambda: reference_generate(model, prompt, L, kw["steps"], kw.get("block_length", L), T, mask_id),
                                    device, 1, warmup=False)
                    row["tokens_per_s"][label]["reference"] = B * L / ms * 1000
        rows.append(row)
        print(json.dumps(row))
    print(f"\nms per step, prompt {P} + {L} slots, temperature {T}, {name}{', compiled' if a.compile else ''}\n"
          "| B | (a) ours | (b) reference | (c) forward | (d) floor | a/c | c/d | b/a | peak a / b / c GiB | a/b memory |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['B']} | {r['ours_ms']:.1f} | {r['reference_ms']:.1f} | {r['forward_ms']:.1f} | {r['floor_ms']:.1f} | "
              f"{r['ours_ms'] / r['forward_ms']:.3f} | {r['forward_ms'] / r['floor_ms']:.2f} | {r['reference_ms'] / r['ours_ms']:.2f} | "
              f"{r['ours_peak_gib']:.1f} / {r['reference_peak_gib']:.1f} / {r['forward_peak_gib']:.1f} | "
              f"{r['ours_peak_gib'] / r['reference_peak_gib']:.0%} |")
    if not a.no_tokens:
        print("\ntokens/s (ours" + (", reference" if a.reference_tokens else "") + "), whole generate() calls\n| B | "
              + " | ".join(schedules) + " |\n|---|" + "---|" * len(schedules))
        for r in rows:
            cells = [f"{v['ours']:.0f}" + (f" ({v['reference']:.0f})" if "reference" in v else "") + f", {v['peak_gib']:.1f} GiB"
                     for v in r["tokens_per_s"].values()]
            print(f"| {r['B']} | " + " | ".join(cells) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, compile=a.compile, matmul_tflops=rate, prompt_length=P,
                           gen_length=L, temperature=T, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
