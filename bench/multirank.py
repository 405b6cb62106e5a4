"""
Several FSDP2 ranks against one plain process: the checks a multi-GPU run rests on.

    python bench/multirank.py --backend gloo --out multirank.json   # two ranks sharing one GPU
    python bench/multirank.py --nproc 8                             # N GPUs, one rank each, NCCL
    python bench/multirank.py --tiny                                # CPU, gloo, tiny sizes (seconds)

The script launches torchrun itself (and plain `python` for the one-process references), so each
part starts fresh processes, as a user's run does:
- same: for cj_grpo, just_grpo and diffu_grpo, the ranks take the same optimizer steps as one
  plain process on the same data: a few steps, each on a fresh greedy rollout of the model being
  trained (greedy, so that the ranks' halves and the plain process's whole batch are the same
  sequences), in float32 and (GPU) in the bf16 recipe (FSDP's bf16 parameters against autocast).
- width: LLaDA-8B's width (d_model 4096, 32 heads, MLP 12288, vocabulary 126464) with --layers
  layers: save and load wall time of a training checkpoint (train_common), the saved directory
  loaded by model.py in one plain process gives the sharded model's logits, and a run resumed from
  it ends where the uninterrupted run ends.
- fail: train_rl.py's main with one rank that raises in the middle of a step, then one that is
  killed (SIGKILL): the time the other ranks take to exit, the exit status, the message, the last
  checkpoint, and --resume from it against an uninterrupted run.
DIST_BACKEND (--backend) and DIST_TIMEOUT reach the workers through the environment.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict

import train_common
import train_rl as RL
from model import LLaDA, LLaDAConfig, byte_tokenizer_config
from sample import generate
from train_common import (back_to_training, gathered, load_training_state, name_the_failed_rank, prepare_model,
                          read_training_state, save_training_checkpoint, setup_distributed)

REPO = Path(__file__).resolve().parents[1]
ALGOS = ["cj_grpo", "just_grpo", "diffu_grpo"]


def full_state(model):
    """The whole model on rank 0's CPU, gathered from the ranks ({} elsewhere; every rank must call it)."""
    return gathered(get_model_state_dict(model), dist.get_rank() if dist.is_initialized() else 0)


# -----------------------------------------------------------------------------
# workers (run under torchrun, or as one plain process)


MIXED = train_common.MixedPrecisionPolicy


def float32_everywhere(on):
    """The float32 check: FSDP keeps float32 parameters for compute, and the plain process runs
    without autocast (both are bf16 on CUDA in the training recipe)."""
    train_common.MixedPrecisionPolicy = (lambda **kw: MIXED(**{**kw, "param_dtype": torch.float32})) if on else MIXED
    RL.autocast = (lambda device: torch.autocast(device.type, enabled=False)) if on else train_common.autocast


def worker_same(a):
    """A few optimizer steps per algorithm and precision, each on a greedy rollout of the current model."""
    rank, world, device = setup_distributed(a.device)
    result = {}
    for precision in a.precision.split(","):
        float32_everywhere(precision == "fp32")
        result[precision] = same_training(a, rank, world, device)
    if rank == 0:
        torch.save(result, a.result)


def same_training(a, rank, world, device):
    if a.tiny:
        mcfg = byte_tokenizer_config(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=48, max_sequence_length=128)
        n, P, L, steps = 2 * a.split, 6, 8, 2
    else:
        mcfg = byte_tokenizer_config(d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, mlp_hidden_size=1408)
        n, P, L, steps = 4 * a.split, 32, 32, 3
    mine = slice(rank * n // world, (rank + 1) * n // world)
    result = {}
    for algo in ALGOS:
        # the plain process's micro-batches are the ranks' shares: gradients are averaged over ranks
        # as over micro-batches. JustGRPO sums its groups on each rank and averages over ranks
        # (DEFINITIONS.md 3.3), so a ranks' step is 1/split of one process's over the same groups
        # (every group has the same count of nonzero advantages here): the plain process runs at lr / split.
        lr = 0.1 / a.split if algo == "just_grpo" and world == 1 else 0.1
        cfg = RL.RLConfig(algo=algo, num_iterations=1 if algo == "just_grpo" else 2, micro_batch=n // a.split,
                          temperature=0.0, clip_eps=0.2, gen_length=L, group_size=2, stack=16, lr=lr, grad_clip=math.inf)
        torch.manual_seed(0)
        with torch.device(device):
            model = LLaDA(mcfg)  # the same random weights on every rank and in the plain process
        model = prepare_model(model, world, device)
        init = {k: v.clone() for k, v in full_state(model).items()}  # one process: the parameters themselves
        # plain SGD, no clipping: AdamW and clipping normalise the gradient's scale, so a gradient
        # off by a constant factor (the count of ranks, say) would still pass
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(1)
        prompts = torch.randint(0, 256, (n, P), generator=g)
        attn = torch.ones(n, P, dtype=torch.bool)
        attn[::2, :P // 3] = False  # every other prompt left-padded
        rollouts = []
        for step in range(steps):
            adv = torch.randn(n, generator=g)  # a benchmark has no reward: random advantages
            model.eval()
            with torch.no_grad(), RL.autocast(device):
                x, traj = generate(model, prompts[mine].to(device), attention_mask=attn[mine].to(device), gen_length=L,
                                   temperature=0.0, return_trajectory=True, **RL.decode_kwargs(cfg, algo))
            back_to_training(model)
            batch = dict(x=x, step_of=traj.step_of, logp=traj.logp, P=P, L=L, num_steps=traj.num_steps, device=device,
                         attn=torch.cat([attn[mine], torch.ones(len(x), L, dtype=torch.bool)], 1).to(device),
                         adv=adv[mine].to(device))
            if algo == "diffu_grpo":  # the prompt masks of the whole batch, then this rank's rows
                masks = [RL.diffu_mask(attn, cfg.prompt_mask_p, 100 * step + j) for j in range(cfg.num_iterations)]
                batch["prompt_masks"] = torch.stack(masks, 1)[mine].to(device)
                with torch.no_grad():
                    batch["old_logp"] = torch.stack([RL.diffu_grpo_logp(model, batch, j, cfg) for j in range(cfg.num_iterations)], 1)
                back_to_training(model)
            RL.train_on_rollout(model, None, opt, batch, cfg, world)
            rollouts.append(RL.all_ranks(x).cpu())  # every rank's rows, in rank order
        result[algo] = dict(init=init, state=full_state(model), rollouts=rollouts)
    return result


def width_config(a):
    if a.tiny:
        return byte_tokenizer_config(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=96)
    return LLaDAConfig(n_layers=a.layers)  # LLaDA-8B's width, fewer layers


def width_batch(step, rank, device, vocab):
    """Random sequences for diffu-GRPO's loss (one forward on a masked completion), per (step, rank)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    B, P, L = 2, 16, 32
    x = torch.randint(0, min(vocab, 256), (B, P + L), generator=g)
    attn = torch.ones(B, P + L, dtype=torch.bool)
    masks = RL.diffu_mask(attn[:, :P], 0.15, 1000 * step + rank)[:, None]
    return dict(x=x.to(device), attn=attn.to(device), P=P, L=L, device=device, adv=torch.randn(B, generator=g).to(device),
                prompt_masks=masks.to(device))


def fingerprint(model):
    """Per tensor: whether it is bitwise what the other run has (its bytes) and a sample of values."""
    state = full_state(model)
    return {k: dict(bytes=hashlib.blake2b(v.numpy().tobytes()).hexdigest(), sample=v.flatten()[:65536].clone(),
                    shape=tuple(v.shape)) for k, v in state.items()}


def worker_width(a):
    """Train --steps steps on random batches; at --save_at write a checkpoint (timed) and the
    sharded model's logits; with --resume, start from that checkpoint instead (timed)."""
    rank, world, device = setup_distributed(a.device)
    cfg = RL.RLConfig(algo="diffu_grpo", num_iterations=1, micro_batch=2, lr=1e-4, out_dir=a.out_dir)
    out, timing, start = Path(a.out_dir), {}, 0
    t = time.time()
    if a.resume:
        model = LLaDA.from_pretrained(out / "latest")
    else:
        torch.manual_seed(0)
        with torch.device(device):
            model = LLaDA(width_config(a))
    model = prepare_model(model, world, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.1, fused=device.type == "cuda")
    if a.resume:
        start = load_training_state(read_training_state(out / "latest", cfg, (), a.steps), model, opt)
        if dist.is_initialized():
            dist.barrier()
        timing["load_s"] = time.time() - t
    probe = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(7)).to(device)
    for step in range(start, a.steps):
        RL.train_on_rollout(model, None, opt, width_batch(step, rank, device, model.config.vocab_size), cfg, world)
        if rank == 0:
            print(f"width: step {step + 1} done, {time.time() - t:.0f} s", flush=True)
        if step + 1 == a.save_at and not a.resume:
            t = time.time()
            save_training_checkpoint(out, model, opt, step + 1, cfg, rank)
            timing["save_s"] = time.time() - t
            if rank == 0:
                print(f"width: saved in {timing['save_s']:.0f} s", flush=True)
            with torch.no_grad():
                logits = model(probe, logits_slice=slice(40, 48)).float().cpu()
            back_to_training(model)
            if rank == 0:
                torch.save(logits, out / "sharded_logits.pt")
    if device.type == "cuda":  # this rank's; ranks sharing a GPU add up
        timing["peak_gib_per_rank"] = torch.cuda.max_memory_allocated() / 2**30
    prints = fingerprint(model)
    if rank == 0:
        parameters = sum(torch.Size(v["shape"]).numel() for v in prints.values())
        torch.save(dict(timing=timing, fingerprint=prints, parameters=parameters), a.result)


def worker_plain_logits(a):
    """One plain process: model.py loads the saved directory; its logits on the same probe."""
    device = torch.device(a.device)
    model = LLaDA.from_pretrained(Path(a.out_dir) / "latest", device=device).eval()
    probe = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(7)).to(device)
    with torch.no_grad(), train_common.autocast(device):
        torch.save(model(probe, logits_slice=slice(40, 48)).float().cpu(), a.result)


def worker_fail(a):
    """train_rl.py's main on the bundled model; with --fail, rank 1 raises (or is killed) in the
    middle of step 3, after that step's first optimizer update."""
    calls, original = [0], RL.cj_grpo_loss

    def failing(*args, **kw):
        calls[0] += 1
        if calls[0] == 2 * 2 + 2 and os.environ["RANK"] == "1":  # 2 calls per step (2 inner iterations)
            Path(a.out_dir, "failed_at").write_text(str(time.time()))
            if a.fail == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure in the middle of step 3")
        return original(*args, **kw)

    if a.fail != "none":
        RL.cj_grpo_loss = failing
    flags = ["--init", str(REPO / "checkpoints" / "llada-tiny"), "--task", "sudoku", "--n_train", "64",
             "--prompts_per_step", os.environ.get("WORLD_SIZE", "2"), "--group_size", "2", "--gen_length", "40",
             "--micro_batch", "2", "--eval_n", "2", "--eval_every", "100", "--num_iterations", "2", "--lr", "1e-3",
             "--save_every", "2", "--steps", "4", "--out_dir", a.out_dir, "--device", a.device] + ["--resume"] * a.resume
    with name_the_failed_rank():
        RL.main(RL.config_from_args(RL.RLConfig, flags))

# -----------------------------------------------------------------------------
# the driver: launches the workers, compares, prints the table


def launch(a, worker, nproc, timeout=600, **kw):
    """Run one worker (under torchrun when nproc > 0); returns (exit status, seconds, output)."""
    argv = [str(Path(__file__).resolve()), "--worker", worker, "--device", a.device, "--layers", str(a.layers)]
    argv += ["--tiny"] * a.tiny + [f"--{k}={v}" for k, v in kw.items()]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = (torchrun if nproc else [sys.executable]) + argv
    env = {**os.environ, **({"DIST_BACKEND": a.backend} if a.backend else {}), **({"OMP_NUM_THREADS": "1"} if a.tiny else {})}
    t = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:  # a hang is a result too: stop the whole process group
        os.killpg(p.pid, signal.SIGKILL)
        out = p.communicate()[0] + f"\n[multirank] timed out after {timeout} s"
    return p.returncode, time.time() - t, out


def must(a, worker, nproc, **kw):
    rc, seconds, out = launch(a, worker, nproc, **kw)
    if rc != 0:
        sys.exit(f"{worker} worker ({nproc or 'plain'}) failed with exit status {rc}:\n{out[-4000:]}")
    return seconds


def compare_states(a_state, b_state, init=None):
    """Largest weight difference, and the difference of the updates relative to the update."""
    diff = max((a_state[k] - b_state[k]).abs().max().item() for k in a_state)
    out = dict(max_abs_diff=diff)
    if init is not None:
        num = sum(((a_state[k] - b_state[k]) ** 2).sum().item() for k in a_state) ** 0.5
        den = sum(((b_state[k] - init[k]) ** 2).sum().item() for k in a_state) ** 0.5
        out["update_rel_diff"] = num / den
        out["update_rel_to_weights"] = den / sum((init[k] ** 2).sum().item() for k in a_state) ** 0.5
    return out


def part_same(a, work):
    precisions = ["fp32"] if a.tiny else ["fp32", "bf16"]
    paths = {name: work / f"same_{name}.pt" for name in ("ranks", "plain")}
    must(a, "same", a.nproc, precision=",".join(precisions), split=a.nproc, result=paths["ranks"])
    must(a, "same", 0, precision=",".join(precisions), split=a.nproc, result=paths["plain"])
    ranks, plain = (torch.load(p) for p in paths.values())
    rows = {}
    for precision in precisions:
        for algo in ALGOS:
            r, p = ranks[precision][algo], plain[precision][algo]
            row = compare_states(r["state"], p["state"], p["init"])
            row["rollout_tokens_equal"] = (torch.cat(r["rollouts"]) == torch.cat(p["rollouts"])).float().mean().item()
            if precision == "fp32":  # float32 sums in another order (over ranks instead of micro-batches)
                row["within_tolerance"] = all(torch.allclose(r["state"][k], p["state"][k], rtol=1e-5, atol=1e-6) for k in p["state"])
            rows[f"{algo} {precision}"] = row
    return rows


def part_width(a, work):
    first, resumed = work / "width_first.pt", work / "width_resumed.pt"
    out = work / "width"
    must(a, "width", a.nproc, out_dir=out, steps=3, save_at=2, result=first)
    must(a, "width", a.nproc, out_dir=out, steps=3, save_at=2, resume=1, result=resumed)
    must(a, "plain_logits", 0, out_dir=out, result=work / "plain_logits.pt")
    f, r = torch.load(first, weights_only=False), torch.load(resumed, weights_only=False)
    sharded, plain = torch.load(out / "sharded_logits.pt"), torch.load(work / "plain_logits.pt")
    ckpt_bytes = sum(p.stat().st_size for p in (out / "latest").iterdir())
    return dict(d_model=width_config(a).d_model, layers=width_config(a).n_layers, parameters=f["parameters"],
                checkpoint_gb=ckpt_bytes / 1e9, save_s=f["timing"]["save_s"], load_s=r["timing"]["load_s"],
                peak_gib_per_rank=f["timing"].get("peak_gib_per_rank", float("nan")),
                logits_max_abs_diff=(sharded - plain).abs().max().item(), logits_max_abs=sharded.abs().max().item(),
                resume_bitwise=all(f["fingerprint"][k]["bytes"] == r["fingerprint"][k]["bytes"] for k in f["fingerprint"]),
                resume_max_abs_diff=max((f["fingerprint"][k]["sample"] - r["fingerprint"][k]["sample"]).abs().max().item()
                                        for k in f["fingerprint"]))


def part_fail(a, work):
    reference = work / "fail_reference"
    must(a, "fail", a.nproc, out_dir=reference, fail="none")
    rows = {}
    for mode in ("raise", "kill"):
        out = work / f"fail_{mode}"
        out.mkdir()
        rc, _, log = launch(a, "fail", a.nproc, timeout=300, out_dir=out, fail=mode)
        ended = time.time()
        failed_at = float((out / "failed_at").read_text()) if (out / "failed_at").exists() else float("nan")
        ours = [line.split("]: ", 1)[-1] for line in log.splitlines() if ": stopping: " in line]
        root = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", log, re.S)
        saved = out / "latest" / "train_state.pt"
        row = dict(exit_status=rc, exit_s_after_failure=ended - failed_at, message=ours[0] if ours else "",
                   torchrun_root_cause_rank=int(root.group(1)) if root else None,
                   checkpoint_step=torch.load(saved, weights_only=False)["step"] if saved.exists() else None)
        must(a, "fail", a.nproc, out_dir=out, fail="none", resume=1)
        ref, res = (LLaDA.from_pretrained(d / "latest").state_dict() for d in (reference, out))
        row["resumed_step"] = torch.load(saved, weights_only=False)["step"]
        row["resumed_bitwise"] = all(torch.equal(ref[k], res[k]) for k in ref)
        row["resumed_max_abs_diff"] = max((ref[k] - res[k]).abs().max().item() for k in ref)
        rows[mode] = row
    return rows


def print_table(result):
    print(f"\n{result['ranks']} ranks ({result['backend']}) against one plain process, {result['device']}, torch {result['torch']}")
    print("| check | result |\n|---|---|")
    for name, r in result.get("same", {}).items():
        tol = "" if "within_tolerance" not in r else f", within rtol 1e-5 / atol 1e-6: {'yes' if r['within_tolerance'] else 'NO'}"
        print(f"| same training, {name} | rollout tokens equal {r['rollout_tokens_equal']:.1%}, largest weight difference "
              f"{r['max_abs_diff']:.1e}, update difference {r['update_rel_diff']:.1e} of the update{tol} |")
    if "width" in result:
        w = result["width"]
        print(f"| checkpoint, d_model {w['d_model']}, {w['layers']} layers ({w['parameters'] / 1e6:,.2f}M parameters, {w['checkpoint_gb']:.3f} GB) | "
              f"peak {w['peak_gib_per_rank']:.1f} GiB per rank; save {w['save_s']:.1f} s, load {w['load_s']:.1f} s; plain model.py logits vs sharded: largest difference "
              f"{w['logits_max_abs_diff']:.1e} (largest logit {w['logits_max_abs']:.1f}); resumed = uninterrupted: "
              f"{'bitwise' if w['resume_bitwise'] else 'largest difference %.1e' % w['resume_max_abs_diff']} |")
    for mode, r in result.get("fail", {}).items():
        print(f"| a rank that is {'killed' if mode == 'kill' else 'raising'} mid-step | exit status {r['exit_status']} "
              f"{r['exit_s_after_failure']:.1f} s after the failure; torchrun's root cause: rank {r['torchrun_root_cause_rank']}; "
              f"checkpoint at step {r['checkpoint_step']}; resumed to step {r['resumed_step']}: "
              f"{'bitwise' if r['resumed_bitwise'] else 'largest difference %.1e' % r['resumed_max_abs_diff']} "
              f"from the uninterrupted run |")
        print(f"|   message | {r['message'] or '(none)'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="ranks (torchrun --nproc_per_node)")
    ap.add_argument("--backend", default="", help="DIST_BACKEND for the ranks: gloo lets them share a GPU; default nccl on CUDA")
    ap.add_argument("--parts", default="same,width,fail")
    ap.add_argument("--layers", type=int, default=2, help="layers at LLaDA-8B width (part width)")
    ap.add_argument("--tiny", action="store_true", help="CPU, gloo, tiny sizes")
    ap.add_argument("--device", default="")
    ap.add_argument("--work", default="", help="scratch folder (checkpoints; deleted at the end); default a new temporary one")
    ap.add_argument("--out", default="multirank.json")
    # worker-only flags (the driver passes them)
    ap.add_argument("--worker", default="")
    for flag in ("precision", "result", "out_dir", "fail"):
        ap.add_argument(f"--{flag}", default="")
    for flag in ("split", "steps", "save_at", "resume"):
        ap.add_argument(f"--{flag}", type=int, default=0)
    a = ap.parse_args()
    a.device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    if a.worker:
        worker = dict(same=worker_same, width=worker_width, plain_logits=worker_plain_logits, fail=worker_fail)[a.worker]
        worker(a)
        if dist.is_initialized():
            dist.barrier()  # no rank closes its connections while another still writes its result
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        # the worker's results are on disk: skip the interpreter's teardown, in which gloo's threads
        # sometimes abort the process ("terminate called without an active exception", no Python
        # frame; about 1 run in 12 on a loaded 2-core machine)
        os._exit(0)
    parts = a.parts.split(",")
    work = Path(tempfile.mkdtemp(prefix="multirank-", dir=a.work or None))
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    result = dict(ranks=a.nproc, backend=a.backend or ("nccl" if a.device.startswith("cuda") else "gloo"), device=device,
                  torch=torch.__version__, args=vars(a))
    try:
        for name, part in (("same", part_same), ("width", part_width), ("fail", part_fail)):
            if name in parts:
                t = time.time()
                result[name] = part(a, work)
                result[f"{name}_wall_s"] = time.time() - t
                print(f"part {name}: {time.time() - t:.0f} s", flush=True)
                with open(a.out, "w") as f:  # after each part: a run cut short keeps the parts it finished
                    json.dump(result, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(result)


if __name__ == "__main__":
    main()
