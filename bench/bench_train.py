"""
The RL training phase at LLaDA-8B width on one GPU (random weights, fewer layers so that float32
master weights + AdamW fit): per algorithm, peak memory, rollout and training seconds, tokens/s
and model FLOP utilisation; CJ-GRPO memory against the number of decoding steps (step-by-step
backward vs building every step's graph first); the rollout's stored log-probs against a second
pass; JustGRPO's stacked positions against the one-forward-per-token loop.

    python bench/bench_train.py --out bench_train.json                 # one GPU: float32 weights + autocast
    python bench/bench_train.py --parts algorithms --compile           # compiled blocks (train_rl.py --compile)
    torchrun --nproc_per_node=1 bench/bench_train.py --parts algorithms   # the FSDP2 path of train_rl.py
    python bench/bench_train.py --tiny                                 # CPU smoke check of the script

MFU = 3 x forward FLOPs (bench_model.forward_flops: matmuls, attention and the LM head rows
actually computed; activation recomputation not counted) / training time (optimizer steps
included) / bf16 matmul rate measured in the same run.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch
import torch.distributed as dist

import train_rl as RL
from bench_model import forward_flops, matmul_tflops
from bench_sample import sync
from model import LLaDA, LLaDAConfig, byte_tokenizer_config
from sample import generate
from train_common import back_to_training, prepare_model, setup_distributed


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def local(t):
    """This process's part of a (possibly FSDP-sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def make_batch(model, cfg, n, P, device, seed=0):
    """A rollout on random prompts with the algorithm's decoding; advantages are random (a
    benchmark has no reward)."""
    torch.manual_seed(seed)
    prompts = torch.randint(0, 256, (n, P), device=device)  # byte-level ids exist in both vocabularies
    t = time.time()
    with torch.no_grad(), RL.autocast(device):
        x, traj = generate(model, prompts, gen_length=cfg.gen_length, temperature=1.0, return_trajectory=True,
                           record_entropy=True, **RL.decode_kwargs(cfg, cfg.algo))
    back_to_training(model)
    sync(device)
    batch = dict(x=x, step_of=traj.step_of, logp=traj.logp, entropy=traj.entropy, attn=torch.ones_like(x, dtype=torch.bool), P=P, L=cfg.gen_length,
                 num_steps=traj.num_steps, device=device, adv=torch.randn(n, device=device))
    rollout_s = time.time() - t
    if cfg.algo == "diffu_grpo":  # prompt masks and old log-probs, as train_rl.main adds them (not timed)
        RL.add_diffu_inputs(model, batch, cfg, seed=0)
    return batch, rollout_s


def training_flops(model_cfg, batch, cfg):
    """Forward FLOPs of the training phase, x3 for forward + backward."""
    n, T, S = len(batch["x"]), batch["x"].size(1), batch["num_steps"]
    if cfg.algo == "cj_grpo":
        committed = [int((batch["step_of"] == i).sum(1).max()) for i in range(S)]
        fwd = sum(forward_flops(model_cfg, n, T, k) for k in committed if k)
    elif cfg.algo == "just_grpo":
        fwd = forward_flops(model_cfg, n * cfg.gen_length, T, 1)
    else:
        fwd = forward_flops(model_cfg, n, T, cfg.gen_length)
    return 3 * fwd * cfg.num_iterations


def bench_algorithms(model, device, args):
    rows = []
    runs = {"cj_grpo": dict(algo="cj_grpo", num_iterations=2),
            "just_grpo": dict(algo="just_grpo", num_iterations=1, stack=args.stack, group_size=2),  # groups of 2: the warm-up's size
            "diffu_grpo": dict(algo="diffu_grpo", num_iterations=2)}
    for name, kw in runs.items():
        cfg = replace(RL.RLConfig(gen_length=args.gen_length, micro_batch=args.micro_batch), **kw)
        batch, rollout_s = make_batch(model, cfg, args.sequences, args.prompt_length, device)
        if args.compile:  # time a rollout with its graphs compiled
            batch, rollout_s = make_batch(model, cfg, args.sequences, args.prompt_length, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=device.type == "cuda")
        # JustGRPO runs gen_length forwards' worth per sequence: two sequences warm it up
        warmup = next(RL.micro_batches(batch, 2 if name == "just_grpo" else cfg.micro_batch))
        RL.train_on_rollout(model, None, optimizer, warmup, cfg, 1)  # optimizer state, kernels, allocator
        if args.profile:
            profile_training(model, optimizer, warmup, cfg, device, f"{args.profile}/{name}.txt")
        reset_peak(device)
        sync(device)
        t = time.time()
        RL.train_on_rollout(model, None, optimizer, batch, cfg, 1)
        sync(device)
        train_s = time.time() - t
        flops = training_flops(model.config, batch, cfg)
        rows.append(dict(algo=name, sequences=args.sequences, decode_steps=batch["num_steps"], rollout_s=rollout_s,
                         train_s=train_s, trained_tokens_per_s=batch["x"].numel() * cfg.num_iterations / train_s,
                         mfu=flops / train_s / (args.matmul_tflops * 1e12), peak_gib=peak_gib(device)))
        print(json.dumps(rows[-1]), flush=True)
        del optimizer
    return rows


def profile_training(model, optimizer, mb, cfg, device, path):
    """torch.profiler over one micro-batch's training: the kernels by GPU time, for finding what
    keeps the training phase from the matmul rate."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        RL.train_on_rollout(model, None, optimizer, mb, cfg, 1)
        sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))


def cj_all_graphs_backward(model, mb, cfg):
    """The reference's way: every step's graph is built, then one backward (memory grows with S)."""
    total = 0.0
    for i in range(mb["num_steps"]):
        committed = mb["step_of"] == i
        if committed.sum() == 0:
            continue
        state = torch.where(mb["step_of"] >= i, model.config.mask_token_id, mb["x"])
        with RL.autocast(mb["device"]):
            logp = RL.token_logp(model, state, mb["attn"], slice(mb["P"], None), mb["x"][:, mb["P"]:], cfg.temperature)
        obj, _ = RL.clipped_objective(logp, mb["logp"][:, mb["P"]:], mb["adv"][:, None], cfg.clip_eps)
        total = total - (obj * committed[:, mb["P"]:]).sum() / committed.sum() / mb["num_steps"]
    total.backward()


def bench_cj_memory(model, device, args):
    """Peak training memory at S = 8 (ASS + EOSER) and S = 128 (semi-AR, blocks of 128), both ways."""
    rows = []
    L = args.gen_length
    for label, kw in {f"ASS+EOSER S={L.bit_length() - 1}": dict(schedule="ass"),
                      f"semi-AR S={L // 2}": dict(schedule="linear", block_length=L // 2, diffusion_steps=L // 2, eoser=False)}.items():
        cfg = replace(RL.RLConfig(algo="cj_grpo", gen_length=L), **kw)
        mb, _ = make_batch(model, cfg, args.micro_batch, args.prompt_length, device)
        for way, fn in (("step by step", lambda: RL.cj_grpo_loss(model, None, mb, cfg, 1)),
                        ("all graphs, one backward", lambda: cj_all_graphs_backward(model, mb, cfg))):
            model.zero_grad(set_to_none=True)
            reset_peak(device)
            try:
                fn()
                peak = peak_gib(device)
            except torch.OutOfMemoryError:
                peak = float("inf")
            rows.append(dict(rollout=label, way=way, micro_batch=args.micro_batch, peak_gib=peak))
            print(json.dumps(rows[-1]), flush=True)
    model.zero_grad(set_to_none=True)
    return rows


def bench_logp_reuse(model, device, args):
    """CJ-GRPO's old log-probs: stored by the rollout, or recomputed with a second pass."""
    cfg = RL.RLConfig(algo="cj_grpo", gen_length=args.gen_length)
    mb, _ = make_batch(model, cfg, args.micro_batch, args.prompt_length, device)
    sync(device)
    t = time.time()
    diff = 0.0
    with torch.no_grad(), RL.autocast(device):
        for i in range(mb["num_steps"]):
            committed = mb["step_of"] == i
            state = torch.where(mb["step_of"] >= i, model.config.mask_token_id, mb["x"])
            lp = RL.token_logp(model, state, None, slice(mb["P"], None), mb["x"][:, mb["P"]:], cfg.temperature)
            diff = max(diff, (lp - mb["logp"][:, mb["P"]:]).abs()[committed[:, mb["P"]:]].max().item())
    sync(device)
    return dict(second_pass_s=time.time() - t, max_abs_logp_diff=diff, micro_batch=args.micro_batch)


def per_sequence_ceiling(model, device, args):
    """Seconds per sequence of a plain forward + backward (LM head at one position) over a batch of
    --stack sequences: the best a stacked JustGRPO row can cost."""
    T = args.prompt_length + args.gen_length
    x = torch.randint(0, 256, (args.stack, T), device=device)

    def step():
        with RL.autocast(device):
            model(x, logits_slice=slice(T - 1, T)).float().logsumexp(-1).sum().backward()
    step()
    sync(device)
    t = time.time()
    for _ in range(3):
        step()
    sync(device)
    model.zero_grad(set_to_none=True)
    return (time.time() - t) / 3 / args.stack


def published_loop(model, mb, n_nonzero, bf16=True):
    """JustGRPO as published: one forward + backward per token position over the micro-batch."""
    P, L = mb["P"], mb["L"]
    for s in range(L):
        state = torch.where(mb["step_of"] >= s, model.config.mask_token_id, mb["x"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and mb["device"].type == "cuda"):
            lp = RL.token_logp(model, state, None, slice(P + s, P + s + 1), mb["x"][:, P + s:P + s + 1], 1.0)
        (-(mb["adv"] * lp[:, 0]).sum() / (L * (n_nonzero + 1e-5))).backward()


def bench_just_stacking(model, device, args):
    """JustGRPO: stacked (sequence, position) rows per forward against one forward per token. The
    gradients differ by bf16 rounding only: the loop in float32 gives the size of that rounding."""
    rows = []
    ceiling_s = per_sequence_ceiling(model, device, args)
    for mb_size in (1, 8):
        cfg = RL.RLConfig(algo="just_grpo", gen_length=args.gen_length, num_iterations=1, stack=args.stack)
        mb, _ = make_batch(model, cfg, mb_size, args.prompt_length, device)
        n_nonzero = float((mb["adv"] != 0).sum())
        mb["scale"] = torch.full((len(mb["x"]),), 1 / (mb["L"] * (n_nonzero + 1e-5)), device=device)  # the loop's scale
        ways = {"loop": lambda: published_loop(model, mb, n_nonzero), "stacked": lambda: RL.just_grpo_loss(model, mb, cfg)}
        if mb_size == 1 and device.type == "cuda" and not dist.is_initialized():  # where the loop runs in bf16
            ways["loop, float32"] = lambda: published_loop(model, mb, n_nonzero, bf16=False)
            ways["stacked"]()  # warm-up: the masked attention kernels' first call (the loop is warm after one position)
        grads, times = {}, {}
        for way, fn in ways.items():
            model.zero_grad(set_to_none=True)
            sync(device)
            t = time.time()
            fn()
            sync(device)
            times[way] = time.time() - t
            # on the host: three float32 copies of the gradient do not fit next to the model on an 80 GB GPU
            grads[way] = torch.cat([local(p.grad).flatten().float().cpu() for p in model.parameters() if p.grad is not None])
        loop, stacked = grads["loop"], grads["stacked"]
        rows.append(dict(micro_batch=mb_size, loop_s=times["loop"], stacked_s=times["stacked"], speedup=times["loop"] / times["stacked"],
                         ceiling_speedup=times["loop"] / (mb_size * mb["L"] * ceiling_s),
                         max_grad_diff=(loop - stacked).abs().max().item(), grad_scale=loop.abs().max().item(),
                         relative_grad_diff=((loop - stacked).norm() / loop.norm()).item()))
        if "loop, float32" in grads:
            exact = grads["loop, float32"]
            rows[-1]["relative_grad_diff_bf16_loop_vs_float32"] = ((loop - exact).norm() / exact.norm()).item()
            rows[-1]["relative_grad_diff_stacked_vs_float32"] = ((stacked - exact).norm() / exact.norm()).item()
        print(json.dumps(rows[-1]), flush=True)
    model.zero_grad(set_to_none=True)
    return rows


def bench_position_options(device, n_prompts, group_size):
    """JustGRPO positions that need not be computed, on the bundled trained model (random weights
    emit no EOS): training time and the cosine similarity of the gradient to the full loss."""
    from model import load_tokenizer
    from tasks import get_task
    model = LLaDA.from_pretrained("checkpoints/llada-tiny", device=device)
    tok, task = load_tokenizer("checkpoints/llada-tiny"), get_task("sudoku")
    cfg = RL.RLConfig(algo="just_grpo", num_iterations=1, group_size=group_size, std_norm=True, stack=512, top_entropy=0.5)
    torch.manual_seed(0)
    batch = RL.rollout(model, tok, task, task.generate(n_prompts, seed=1), cfg, device)  # top_entropy < 1 records entropies
    batch["scale"] = RL.just_grpo_scale(batch["adv"], group_size, batch["L"], world=1)
    rows, full = [], None
    for label, kw in {"all positions": dict(top_entropy=1.0), "skip the EOS tail": dict(top_entropy=1.0, skip_eos_tail=True),
                      "top 50% entropy": dict(top_entropy=0.5), "top 25% entropy": dict(top_entropy=0.25)}.items():
        model.zero_grad(set_to_none=True)
        sync(device)
        t = time.time()
        stats = RL.just_grpo_loss(model, batch, replace(cfg, **kw))
        sync(device)
        seconds = time.time() - t
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]).double()  # float32 cosines overshoot 1
        full = grad if full is None else full
        rows.append(dict(positions=label, trained_positions=stats["tokens"], seconds=seconds,
                         speedup=rows[0]["seconds"] / seconds if rows else 1.0,
                         cosine_to_full=torch.nn.functional.cosine_similarity(grad, full, dim=0).item()))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def print_tables(result, args):
    if "algorithms" in result:
        print(f"\n| algo ({result['mode']}) | decode steps | rollout s | train s | tokens/s | MFU | peak GiB |\n|---|---|---|---|---|---|---|")
        for r in result["algorithms"]:
            print(f"| {r['algo']} | {r['decode_steps']} | {r['rollout_s']:.2f} | {r['train_s']:.2f} | "
                  f"{r['trained_tokens_per_s']:.0f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} |")
    if "cj_memory" in result:
        print("\n| CJ-GRPO rollout | backward | peak GiB |\n|---|---|---|")
        for r in result["cj_memory"]:
            print(f"| {r['rollout']} | {r['way']} | {r['peak_gib']:.1f} |")
    if "logp_reuse" in result:
        lr = result["logp_reuse"]
        print(f"\nCJ-GRPO second pass for old log-probs: {lr['second_pass_s']:.2f} s per micro-batch of {lr['micro_batch']} "
              f"(saved by reusing the rollout's); largest |stored - recomputed| = {lr['max_abs_logp_diff']:.2e}")
    if "just_stacking" in result:
        print(f"\n| JustGRPO micro-batch | loop s | stacked s | speed-up | ceiling ({args.stack} per forward) | "
              "max grad diff (of max grad) | relative norm of the difference |\n|---|---|---|---|---|---|---|")
        for r in result["just_stacking"]:
            print(f"| {r['micro_batch']} | {r['loop_s']:.2f} | {r['stacked_s']:.2f} | {r['speedup']:.2f}x | "
                  f"{r['ceiling_speedup']:.2f}x | {r['max_grad_diff']:.1e} ({r['grad_scale']:.1e}) | {r['relative_grad_diff']:.1e} |")
        for r in result["just_stacking"]:
            if "relative_grad_diff_bf16_loop_vs_float32" in r:
                print(f"micro-batch {r['micro_batch']}, the gradient's distance to the float32 loop's (relative norm): "
                      f"bf16 loop {r['relative_grad_diff_bf16_loop_vs_float32']:.1e}, "
                      f"bf16 stacked {r['relative_grad_diff_stacked_vs_float32']:.1e}")


PARTS = {"algorithms": bench_algorithms, "cj_memory": bench_cj_memory, "logp_reuse": bench_logp_reuse,
         "just_stacking": bench_just_stacking}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8, help="transformer blocks at the real width (32 do not fit one GPU with AdamW)")
    ap.add_argument("--sequences", type=int, default=16, help="rollout sequences per optimizer step")
    ap.add_argument("--micro_batch", type=int, default=16)
    ap.add_argument("--stack", type=int, default=32, help="JustGRPO (sequence, position) rows per forward")
    ap.add_argument("--prompt_length", type=int, default=128)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (as train_rl.py --compile)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU: checks the script runs")
    ap.add_argument("--positions_only", action="store_true", help="only the position options, on the bundled model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for --positions_only")
    ap.add_argument("--profile", default="", help="folder for a torch.profiler table per algorithm")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        ap.error(f"--parts: unknown {sorted(unknown)}; expected a subset of {list(PARTS)}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.positions_only:
        rows = bench_position_options(torch.device(args.device), 8, 4)
        print(f"\nJustGRPO on the bundled model, 8 Sudoku prompts x G = 4, L = 64, {args.device}")
        print("| positions | trained | seconds | speed-up | cosine to full gradient |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['positions']} | {r['trained_positions']} | {r['seconds']:.2f} | {r['speedup']:.2f}x | {r['cosine_to_full']:.3f} |")
        return
    # under torchrun the model is FSDP2-wrapped as train_rl.py wraps it (bf16 parameters, float32
    # reduction); a plain process uses float32 weights with autocast
    rank, world, device = setup_distributed("cpu" if args.tiny else "cuda")
    if world > 1:
        ap.error("bench_train.py measures one GPU: under torchrun use --nproc_per_node=1")
    if args.tiny:
        rate = 1.0
        cfg = byte_tokenizer_config(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128)
        args.prompt_length, args.gen_length, args.sequences, args.micro_batch, args.stack = 8, 16, 4, 2, 8
    else:
        rate = matmul_tflops()
        cfg = LLaDAConfig(n_layers=args.layers)
    args.matmul_tflops = rate
    torch.manual_seed(0)
    with torch.device(device):
        model = LLaDA(cfg)  # float32 master weights
    model = prepare_model(model, world, device, compile=args.compile)
    model.activation_checkpointing = device.type == "cuda"
    mode = (f"FSDP2, {world} process" if dist.is_initialized() else "autocast") + (", compiled" if args.compile else "")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{where}, torch {torch.__version__}, {mode}, {cfg.n_layers} layers at d_model {cfg.d_model}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, matmul {rate:.0f} TFLOP/s")
    result = dict(device=where, torch=torch.__version__, mode=mode, layers=cfg.n_layers, matmul_tflops=rate, args=vars(args))
    for part in parts:
        result[part] = PARTS[part](model, device, args)
    if rank == 0:
        print_tables(result, args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
