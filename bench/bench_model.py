"""
model.py at the real LLaDA-8B size (random weights, bf16, one GPU): forward time against the
time a plain bf16 matmul of the same FLOPs takes (the floor), eager and torch.compile'd blocks,
peak memory; then save_pretrained of the 8B model and from_pretrained in a fresh process
(wall time, peak host memory).

    python bench/bench_model.py --out bench_model.json            # on a CUDA machine
    python bench/bench_model.py --tiny                            # CPU smoke check of the script
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch

from model import LLaDA, LLaDAConfig


def cuda_time(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def matmul_tflops(n=8192):
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time(lambda: a @ b) / 1e9


def forward_flops(cfg, B, T, logits_positions=None):
    """2 x (matmul parameters) x tokens, attention scores and values, and the LM head."""
    d, L = cfg.d_model, cfg.n_layers
    kv = cfg.n_kv_heads * cfg.head_dim
    per_token = L * 2 * (2 * d * d + 2 * d * kv + 3 * d * cfg.mlp_hidden_size)
    attention = L * 4 * B * T * T * d
    head = 2 * d * cfg.embedding_size * B * (T if logits_positions is None else logits_positions)
    return per_token * B * T + attention + head


def load_in_fresh_process(path):
    """from_pretrained in a new interpreter so its peak host memory is its own."""
    code = (f"import time, resource, torch, json; from model import LLaDA; t = time.time(); "
            f"m = LLaDA.from_pretrained({str(path)!r}, device='cuda', dtype=torch.bfloat16); torch.cuda.synchronize(); "
            f"print(json.dumps(dict(load_s=time.time() - t, peak_host_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "
            f"gpu_gib=torch.cuda.max_memory_allocated() / 2**30)))")
    return json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small config on the CPU: checks the script runs")
    ap.add_argument("--skip_checkpoint", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.tiny:
        cfg = LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, vocab_size=300, embedding_size=300)
        model = LLaDA(cfg)
        print(model(torch.randint(0, 300, (2, 16))).shape)
        return
    torch.manual_seed(0)
    cfg = LLaDAConfig()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LLaDA(cfg).eval()
    torch.set_default_dtype(torch.float32)
    rate = matmul_tflops()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 matmul {rate:.0f} TFLOP/s")
    rows = []
    shapes = [(1, 512), (8, 512), (32, 384)]
    for compiled in (False, True):
        if compiled:
            model.compile_blocks()
        for B, T in shapes:
            ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                ms = cuda_time(lambda: model(ids))
            floor = forward_flops(cfg, B, T) / rate / 1e9
            rows.append(dict(mode="compiled" if compiled else "eager", B=B, T=T, ms=ms, floor_ms=floor, ratio=ms / floor,
                             peak_gib=torch.cuda.max_memory_allocated() / 2**30))
            print(rows[-1])
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, matmul_tflops=rate, forward=rows)
    if not args.skip_checkpoint:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            t = time.time()
            model.save_pretrained(f"{tmp}/llada-8b-random")
            result["save_s"] = time.time() - t
            del model
            torch.cuda.empty_cache()
            result.update(load_in_fresh_process(f"{tmp}/llada-8b-random"))
    print("\n| mode | B x T | forward ms | floor ms | ratio | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['B']} x {r['T']} | {r['ms']:.1f} | {r['floor_ms']:.1f} | {r['ratio']:.2f}x | {r['peak_gib']:.1f} |")
    if "load_s" in result:
        print(f"save_pretrained 8B: {result['save_s']:.1f} s; from_pretrained (fresh process): {result['load_s']:.1f} s, "
              f"peak host memory {result['peak_host_gib']:.1f} GiB, GPU {result['gpu_gib']:.1f} GiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
