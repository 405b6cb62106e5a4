"""
LoRA against full-parameter training on the bundled small model: CJ-GRPO with an ASS+EOSER
rollout, the same budget (steps x prompts x G rollouts) for every run, held-out Sudoku accuracy
before and after. LoRA adapts the references' four projections at alpha / r = 0.5 (their 64 / 128;
rank 16 here, as the model is 192 wide) and needs a larger learning rate than full training (the
update is scaled by alpha / r and starts at B = 0), so it runs at several.

    python experiments/compare_lora.py --device cuda --seeds 0,1 --out rl_lora.json
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
from compare_rl import held_out_scores
from tasks import get_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--full_lr", type=float, default=1e-4, help="compare_rl.py's learning rate for full parameters")
    ap.add_argument("--lora_lrs", default="3e-4,1e-3,3e-3", help="comma list of LoRA learning rates")
    ap.add_argument("--lora_rank", type=int, default=16)
    ap.add_argument("--lora_alpha", type=float, default=8.0)
    ap.add_argument("--eval_n", type=int, default=512)
    ap.add_argument("--prompts_per_step", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = RL.RLConfig(algo="cj_grpo", schedule="ass", eoser=True, steps=args.steps, eval_every=args.steps,
                       save_every=args.steps, eval_n=args.eval_n, device=args.device, prompts_per_step=args.prompts_per_step)
    runs = {f"full parameters, lr {args.full_lr:g}": dict(lr=args.full_lr)}
    for lr in map(float, args.lora_lrs.split(",")):
        runs[f"LoRA r {args.lora_rank} / alpha {args.lora_alpha:g}, lr {lr:g}"] = dict(
            lr=lr, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
    examples = get_task(base.task).generate(args.eval_n, seed=1)
    before = held_out_scores(base.init, base, device, examples)
    results = []
    for seed in map(int, args.seeds.split(",")):
        for i, (name, kw) in enumerate(runs.items()):
            cfg = replace(base, **kw, seed=seed, out_dir=f"out/compare_lora/run{i}_seed{seed}")
            t = time.time()
            RL.main(cfg)
            after = held_out_scores(f"{cfg.out_dir}/latest", cfg, device, examples)  # LoRA: the merged checkpoint
            results.append(dict(run=name, seed=seed, minutes=(time.time() - t) / 60, before=before, after=after))
            print(json.dumps(results[-1]), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    print(f"\nSudoku, {args.eval_n} held-out puzzles, greedy ASS+EOSER; cj_grpo, {base.steps} steps x "
          f"{base.prompts_per_step} prompts x G = {base.group_size} rollouts per run, mu {base.num_iterations}; {device}")
    print("| run | seed | accuracy: before -> after | minutes |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['seed']} | {r['before']['own_acc']:.3f} -> {r['after']['own_acc']:.3f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
