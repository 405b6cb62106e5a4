"""
The RL comparison on the bundled small model: cj_grpo with an ASS+EOSER rollout, cj_grpo with a
semi-AR rollout, just_grpo and diffu_grpo, each with the same budget (steps x prompts x G
rollouts), evaluated on held-out problems with its own rollout decoding and with ASS+EOSER at
log2(L) steps, before and after, over several seeds.

    python experiments/compare_rl.py --device cuda --seeds 0,1 --out rl_compare.json
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
from model import LLaDA, load_tokenizer
from tasks import get_task

RUNS = {
    "cj_grpo (ASS+EOSER rollout)": dict(algo="cj_grpo", schedule="ass", eoser=True),
    "cj_grpo (semi-AR rollout)": dict(algo="cj_grpo", schedule="linear", block_length=32, diffusion_steps=32, eoser=False),
    "just_grpo (AR rollout)": dict(algo="just_grpo", num_iterations=1, std_norm=True, clip_eps=0.2),
    "diffu_grpo (semi-AR rollout)": dict(algo="diffu_grpo", schedule="linear", block_length=32, diffusion_steps=32, eoser=False),
}
ASS_EOSER = RL.RLConfig(algo="cj_grpo", schedule="ass", eoser=True)


def held_out_scores(path, cfg, device, examples):
    model = LLaDA.from_pretrained(path, device=device)
    tok, task = load_tokenizer(path), get_task(cfg.task)
    own = RL.evaluate(model, tok, task, examples, cfg, RL.decode_kwargs(cfg, cfg.algo), device, 0, 1)
    fast = RL.evaluate(model, tok, task, examples, cfg, RL.decode_kwargs(ASS_EOSER, "cj_grpo"), device, 0, 1)
    return dict(own_acc=own[0], own_reward=own[1], ass_acc=fast[0], ass_reward=fast[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval_n", type=int, default=512)
    ap.add_argument("--prompts_per_step", type=int, default=16)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma list of run names (see RUNS)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = RL.RLConfig(steps=args.steps, lr=args.lr, eval_every=args.steps, save_every=args.steps,
                       eval_n=args.eval_n, device=args.device, stack=1024,
                       prompts_per_step=args.prompts_per_step, overwrite=True)  # a rerun replaces its own out/compare runs
    examples = get_task(base.task).generate(args.eval_n, seed=1)
    results, before = [], {}
    for seed in map(int, args.seeds.split(",")):  # seed-major, so a cut-short run still covers every algorithm
        for name in args.runs.split(","):
            cfg = replace(base, **RUNS[name], seed=seed)
            cfg = replace(cfg, out_dir=f"out/compare/{cfg.algo}_{cfg.schedule}_{seed}")
            if name not in before:
                before[name] = held_out_scores(base.init, cfg, device, examples)
            t = time.time()
            RL.main(cfg)
            after = held_out_scores(f"{cfg.out_dir}/latest", cfg, device, examples)
            results.append(dict(run=name, seed=seed, minutes=(time.time() - t) / 60, before=before[name], after=after))
            print(json.dumps(results[-1]), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    rollouts = base.steps * base.prompts_per_step * base.group_size
    print(f"\nSudoku, {args.eval_n} held-out puzzles, greedy; {base.steps} steps x {base.prompts_per_step} prompts x "
          f"G = {base.group_size} = {rollouts} rollouts per run; lr {args.lr}; {device}")
    print("| run | seed | acc own decoding: before -> after | acc ASS+EOSER (6 steps): before -> after | minutes |")
    print("|---|---|---|---|---|")
    for r in results:
        b, a = r["before"], r["after"]
        print(f"| {r['run']} | {r['seed']} | {b['own_acc']:.3f} -> {a['own_acc']:.3f} | "
              f"{b['ass_acc']:.3f} -> {a['ass_acc']:.3f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
