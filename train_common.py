"""
What both trainers share: flags from a dataclass (its field comments are the --help), the
distributed setup (FSDP2 under torchrun), bf16 autocast, the run folder (locked; never silently
overwritten), training checkpoints that a killed run resumes from, the learning-rate warmup and
the metrics log.

    from train_common import config_from_args, setup_distributed, prepare_model
    rank, world, device = setup_distributed()          # one process, or torchrun's environment
"""
import argparse
import fcntl
import inspect
import json
import math
import os
import re
from contextlib import contextmanager, suppress
from dataclasses import asdict, fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from lora import merge_lora
from model import recover_checkpoint, save_checkpoint



def field_help(cls):
    """{field: its comment in the dataclass source}: the comments are the flags' help texts."""
    source = inspect.getsource(cls)
    return dict(re.findall(r"^\s+(\w+): [\w\[\], ]+ = [^#\n]*#\s*(.*)$", source, re.M))


def parse_bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (or 1/0, yes/no), got {s!r}")


def config_from_args(cls, argv=None, defaults_by=None):
    """Command-line flags from a dataclass's fields: defaults, and the field comments as help.
    defaults_by = (flag, {value: {field: default}}): defaults that depend on another flag's value
    (train_rl.py's per-algorithm ones); a flag given on the command line always wins."""
    helps = field_help(cls)
    parser = argparse.ArgumentParser(description=cls.__doc__)
    for f in fields(cls):
        other = "".join(f"; {v}: {d[f.name]}" for v, d in (defaults_by[1] if defaults_by else {}).items() if f.name in d)
        shown = "%(default)r" if isinstance(f.default, str) else "%(default)s"
        help = helps.get(f.name, "").replace("%", "%%") + f" (default: {shown}{other})"
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, default=f.default,
                                metavar="{true,false}", help=help)
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=help)
    if defaults_by:
        flag, table = defaults_by
        parser.set_defaults(**table.get(getattr(parser.parse_known_args(argv)[0], flag), {}))
    return cls(**vars(parser.parse_args(argv)))


def setup_distributed(device=""):
    """torchrun's environment -> (rank, world_size, device). Without torchrun: one process.
    DIST_BACKEND=nccl|gloo picks the backend (default nccl on CUDA, gloo on the CPU); gloo lets
    ranks share a GPU, which NCCL refuses. DIST_TIMEOUT: seconds a rank waits in a collective for
    a stuck peer before it fails (default 600)."""
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ:
        if device == "cuda":
            torch.cuda.set_device(0)
            device = "cuda:0"
        return 0, 1, torch.device(device)
    backend = os.environ.get("DIST_BACKEND", "nccl" if device.startswith("cuda") else "gloo")
    if backend not in ("nccl", "gloo") or (backend == "nccl" and not device.startswith("cuda")):
        raise SystemExit(f"DIST_BACKEND={backend!r} with device {device!r}: expected gloo, or nccl on CUDA")
    try:  # 10 minutes (torch's default is 30): an 8B checkpoint (~100 GB with the optimizer state)
        # written by rank 0 at ~1 GB/s while the others wait fits; a stuck rank is not taken for a slow step
        timeout = float(os.environ.get("DIST_TIMEOUT", "600"))
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise SystemExit(f"DIST_TIMEOUT={os.environ['DIST_TIMEOUT']!r}: expected a positive number of seconds")
    if device == "cuda":
        local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", local + 1))  # torchrun sets it; other launchers may not
        if ranks_here > gpus and backend == "nccl":
            raise SystemExit(f"{ranks_here} ranks on this machine but {gpus} GPU(s): NCCL needs a GPU per rank. Use "
                             f"--nproc_per_node={gpus}, or DIST_BACKEND=gloo to let ranks share a GPU (slow; for testing)")
        if ranks_here > gpus and local == 0:
            print(f"{ranks_here} ranks share {gpus} GPU(s) over gloo: local rank r runs on cuda:(r % {gpus})", flush=True)
        device = f"cuda:{local % gpus}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size(), torch.device(device)


def in_a_collective(e):
    """Did `e` come out of a collective (gloo raises a plain RuntimeError from the wait)?"""
    tb = e.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    return isinstance(e, dist.DistError) or tb.tb_frame.f_code.co_filename.endswith("distributed_c10d.py")


@contextmanager
def name_the_failed_rank():
    """Under torchrun, one rank's failure leaves the others waiting in a collective until they fail
    too (gloo: at once, when the failed process closes its sockets; NCCL: at the timeout, unless
    torchrun stops them first). The failing rank leaves its rank and error in the process group's
    store before it exits; a rank whose collective then fails exits with one line naming it,
    not with a traceback from inside torch.distributed."""
    try:
        yield
    except (Exception, SystemExit) as e:
        if not dist.is_initialized() or (isinstance(e, SystemExit) and not e.code):
            raise
        rank, store = dist.get_rank(), dist.distributed_c10d._get_default_store()
        if isinstance(e, SystemExit) or not in_a_collective(e):
            with suppress(Exception):  # the store may be gone with its host
                store.set("failed", f"rank {rank} failed: {e.code if isinstance(e, SystemExit) else f'{type(e).__name__}: {e}'}")
                if dist.get_backend() == "gloo":  # peers learn now, not after this interpreter's shutdown (seconds)
                    dist.destroy_process_group()
            raise
        cause = None
        with suppress(Exception):
            store.set_timeout(timedelta(seconds=5))
            cause = store.get("failed").decode() if store.check(["failed"]) else None
        detail = re.sub(r"^\[[^]]*\] *", "", str(e)).split(". ")[0]  # gloo's message, less its source line
        why = cause or (f"another rank stopped without a message (killed? torchrun's 'Root Cause' names it), or a "
                        f"collective waited longer than DIST_TIMEOUT={os.environ.get('DIST_TIMEOUT', '600')} s "
                        f"({detail})")
        raise SystemExit(f"rank {rank}: stopping: {why}. The last complete checkpoint is untouched: continue with --resume") from None


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


def broadcast(obj):
    """Rank 0's value on every rank (a decision only rank 0 can make, such as a file check)."""
    if dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


@contextmanager
def run_folder(out_dir, resume, overwrite, rank):
    """The run's output folder, held for the run's lifetime: created; locked, so that a second run
    into it stops at once (the kernel drops the lock of a process that dies, so no stale lock
    survives a kill); a checkpoint save a kill interrupted is finished or undone; a folder that
    holds a run is only continued (--resume) or replaced (--overwrite) when the user says so."""
    out, error, lock = Path(out_dir), "", None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            recover_checkpoint(out / "latest")
            if resume and not (out / "latest" / "train_state.pt").is_file():
                error = f"--resume: {out}/latest/train_state.pt not found"
            elif not resume and not overwrite and ((out / "metrics.jsonl").exists() or (out / "latest").exists()):
                error = (f"--out_dir {out} holds a run: give --resume to continue it, --overwrite to start over "
                         f"in it (its metrics and checkpoint are replaced), or another --out_dir")
        except BlockingIOError:
            lock.seek(0)
            error = f"--out_dir {out} is in use by another run (pid {lock.read().strip()}): wait for it or choose another --out_dir"
    error = broadcast(error)
    try:
        if error:
            raise SystemExit(error)
        yield out
    finally:
        if lock:
            lock.close()


def whole(t, keep=True):
    """All of a tensor that FSDP2 shards by rows, on the CPU; a collective that every rank calls,
    and a rank with keep=False only takes part (None).
    Our own gather rather than torch's full state dict: gloo crashes gathering CUDA tensors into
    one buffer (pytorch#152645), so under gloo the shards travel through the CPU; each is padded to
    one size, as the gather needs equal pieces and gloo fails on empty ones."""
    if not isinstance(t, DTensor):
        return t.detach().cpu() if keep else None
    if tuple(t.placements) != (Shard(0),):
        raise ValueError(f"a tensor sharded as {t.placements}: expected FSDP2's Shard(0) on one mesh dimension")
    local, world = t.to_local().detach(), t.device_mesh.size()
    on = "cpu" if dist.get_backend() == "gloo" else local.device
    piece = torch.zeros((-(-t.shape[0] // world), *t.shape[1:]), dtype=local.dtype, device=on)
    piece[:len(local)] = local
    pieces = [torch.empty_like(piece) for _ in range(world)]
    dist.all_gather(pieces, piece, group=t.device_mesh.get_group())
    return torch.cat(pieces)[:t.shape[0]].cpu() if keep else None


def gathered(state, rank):
    """A model or optimizer state dict (nested dicts of tensors) whole on rank 0's CPU, {} on the
    other ranks (they take part in the gathers but keep nothing: 8 copies of an 8B state would not fit)."""
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        return whole(x, keep=rank == 0) if torch.is_tensor(x) else x
    out = walk(state)
    return out if rank == 0 else {}


def sharded_like(full, like):
    """A whole tensor cut as `like` is (an FSDP2 parameter, or a plain one): each rank keeps its own
    rows of the copy it read from disk, so no collective runs (src_data_rank None)."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return full.to(like.device)


def save_training_checkpoint(out_dir, model, optimizer, step, cfg, rank, keep_copy=False):
    """out_dir/latest: the model in the LLaDA layout plus train_state.pt (optimizer, step,
    config), gathered from all ranks and written by rank 0, complete or not at all. Weights with a
    non-finite value are never written: the run stops and the last good checkpoint stays. With
    LoRA the model files hold the merged weights and train_state.pt the adapters (--resume reads
    those on top of --init)."""
    state = gathered(get_model_state_dict(model), rank)
    bad = broadcast(next((k for k, t in state.items() if not torch.isfinite(t).all()), "") if rank == 0 else "")
    if bad:
        raise SystemExit(f"step {step}: the weights hold non-finite values ({bad}); not saved, "
                         f"{Path(out_dir) / 'latest'} keeps the last good checkpoint (if any); try a lower --lr")
    train_state = {"optimizer": gathered(get_optimizer_state_dict(model, optimizer), rank), "step": step, "config": asdict(cfg)}
    if getattr(cfg, "lora_rank", 0):
        state, train_state["lora"] = merge_lora(state, cfg.lora_alpha / cfg.lora_rank)
    error = ""
    if rank == 0:
        try:
            for name in ["latest"] + ([f"step_{step}"] if keep_copy else []):
                save_checkpoint(Path(out_dir) / name, state, model.config, files_from=model.source_dir, train_state=train_state)
        except OSError as e:  # save_checkpoint's one-line message (a full disk), on every rank
            error = str(e)
    error = broadcast(error)  # also: nobody runs ahead into a collective while rank 0 writes
    if error:
        raise SystemExit(error)


def read_training_state(ckpt_dir, cfg, same, steps):
    """ckpt_dir/train_state.pt, read before anything is built. The flags in `same` must equal the
    saved run's: a resume continues that run, it cannot become another algorithm, task or model."""
    path = Path(ckpt_dir) / "train_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = state["config"]
    except Exception as e:  # a truncated or foreign file: torch's message alone does not say which file
        raise SystemExit(f"--resume: cannot read {path} ({type(e).__name__}: {e}); it is damaged or not "
                         f"written by this project's trainers") from None
    differ = [k for k in same if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise SystemExit(f"--resume: the run in {Path(ckpt_dir).parent} has " +
                         ", ".join(f"--{k} {saved[k]!r}" for k in differ) + " but this command gives " +
                         ", ".join(f"--{k} {getattr(cfg, k)!r}" for k in differ) +
                         ": give the saved values, or start a new run in another --out_dir")
    if state["step"] >= steps:
        raise SystemExit(f"--resume: the run in {Path(ckpt_dir).parent} is already at step {state['step']} of "
                         f"{steps}: ask for more steps to continue it")
    return state


def load_training_state(state, model, optimizer):
    """Restore the optimizer (and LoRA adapters) from a read_training_state; returns the step to
    continue from."""
    saved = {k: tuple(v.shape) for k, v in state.get("lora", {}).items()}
    mine = {k: tuple(p.shape) for k, p in model.named_parameters() if k.endswith((".lora_A", ".lora_B"))}
    if saved != mine:
        rank = lambda shapes: next((s[0] for k, s in shapes.items() if k.endswith(".lora_A")), 0)
        raise ValueError(f"--resume: the saved LoRA adapters ({len(saved)} tensors, rank {rank(saved)}) do not match this "
                         f"run's ({len(mine)}, rank {rank(mine)}): resume with the --lora_rank and --lora_targets it was started with")
    like = get_model_state_dict(model)  # name -> this rank's shard (FSDP2) or the tensor itself
    if saved:
        set_model_state_dict(model, {k: sharded_like(v, like[k]) for k, v in state["lora"].items()},
                             options=StateDictOptions(strict=False))
    optim = state["optimizer"]
    moments = {k: {n: sharded_like(v, like[k]) if v.dim() else v for n, v in s.items()} for k, s in optim["state"].items()}
    set_optimizer_state_dict(model, optimizer, {**optim, "state": moments})
    return state["step"]


def lr_at(step, lr, warmup, max_steps=0, cooldown=0.0):
    """Linear warm-up, constant, then (cooldown > 0) a linear decay to zero over that share of
    max_steps: the warmup-stable-decay schedule, whose last steps settle the weights."""
    decay_start = max_steps * (1 - cooldown)
    tail = 1.0 if cooldown <= 0 or step < decay_start else (max_steps - step) / (max_steps - decay_start)
    return lr * min(1.0, (step + 1) / max(1, warmup)) * tail


class MetricsLog:
    """metrics.jsonl: one strict JSON object per line (non-finite numbers written as null), by
    rank 0. A resumed run first drops the rows a killed run logged after its last checkpoint, so
    every step appears once, and a torn last line that a kill mid-write can leave."""

    def __init__(self, out_dir, rank, resumed_step=0):
        self.path = Path(out_dir) / "metrics.jsonl" if rank == 0 else None
        if self.path and not resumed_step:  # a new run (--overwrite) starts an empty log
            self.path.unlink(missing_ok=True)
        elif self.path and self.path.exists():
            lines, rows = self.path.read_text(errors="replace").splitlines(), []
            for i, line in enumerate(lines, 1):
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError) as e:
                    if i == len(lines):
                        break
                    raise SystemExit(f"{self.path}:{i}: not a metrics row ({type(e).__name__}: {e})") from None
                if step <= resumed_step:
                    rows.append(line)
            self.path.write_text("".join(line + "\n" for line in rows))

    def write(self, **row):
        if self.path:
            row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
            with open(self.path, "a") as f:
                f.write(json.dumps(row, allow_nan=False) + "\n")
