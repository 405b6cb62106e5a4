"""
Every decoding schedule on held-out problems: accuracy, mean reward, model calls, tokens/s, and
the "EOS trap" (the share of generations whose first EOS comes before the answer is complete).

    python experiments/eval_schedules.py                                  # bundled small model, CPU
    python experiments/eval_schedules.py --device cuda --n 512 --out schedules.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch

from model import LLaDA, load_tokenizer
from sample import generate
from tasks import get_task
from train_rl import encode_prompts


def schedules(L):
    S = L.bit_length() - 1
    return {
        f"linear full diffusion, {L} steps": dict(schedule="linear", steps=L),
        f"linear full diffusion, {L // 2} steps": dict(schedule="linear", steps=L // 2),
        f"semi-AR block {L // 4}, {L // 2} steps": dict(schedule="linear", steps=L // 2, block_length=L // 4),
        f"AR order, {L} steps": dict(schedule="linear", steps=L, block_length=1),
        f"linear full diffusion, {S} steps": dict(schedule="linear", steps=S),
        f"linear + EOSER, {S} steps": dict(schedule="linear", steps=S, eoser=True),
        f"ASS, {S} steps": dict(schedule="ass", steps=S),
        f"ASS + EOSER, {S} steps": dict(schedule="ass", steps=S, eoser=True),
        "confidence threshold 0.9": dict(schedule="threshold", threshold=0.9),
    }


def eos_trap(tok, row, eos_id):
    """True when the first EOS comes before the answer's closing tag."""
    ids = row.tolist()
    head = ids[:ids.index(eos_id)] if eos_id in ids else ids
    return "</answer>" not in tok.decode(head)


@torch.no_grad()
def run(model, tok, task_names, n, L, device, batch_size):
    rows = []
    for name, kw in schedules(L).items():
        for task_name in task_names:
            task = get_task(task_name)
            examples = task.generate(n, seed=1)
            correct = reward = trapped = calls = 0.0
            t0 = time.time()
            for i in range(0, n, batch_size):
                chunk = examples[i:i + batch_size]
                prompts, attn = encode_prompts(tok, task, chunk, "compact", device)
                x, traj = generate(model, prompts, attention_mask=attn, gen_length=L, return_trajectory=True, **kw)
                calls += traj.num_calls
                for out, ex in zip(x[:, prompts.size(1):].cpu(), chunk):
                    text = tok.decode(out, skip_special=True)
                    correct += task.is_correct(text, ex)
                    reward += task.reward(text, ex)
                    trapped += eos_trap(tok, out, model.config.eos_token_id)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.time() - t0
            rows.append(dict(schedule=name, task=task_name, accuracy=correct / n, reward=reward / n, eos_trap=trapped / n,
                             model_calls=calls / -(-n // batch_size), tokens_per_s=n * L / seconds))
            print(json.dumps(rows[-1]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="checkpoints/llada-tiny")
    ap.add_argument("--tasks", default="sudoku,countdown")
    ap.add_argument("--n", type=int, default=256, help="held-out problems per task")
    ap.add_argument("--gen_length", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = LLaDA.from_pretrained(args.model, device=device).eval()
    tok = load_tokenizer(args.model)
    rows = run(model, tok, args.tasks.split(","), args.n, args.gen_length, device, args.batch_size)
    print(f"\n{args.n} held-out problems per task, L = {args.gen_length}, batch {args.batch_size}, {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, temperature 0")
    print("| schedule | task | accuracy | mean reward | EOS trap | model calls | tokens/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['schedule']} | {r['task']} | {r['accuracy']:.3f} | {r['reward']:.3f} | {r['eos_trap']:.3f} | "
              f"{r['model_calls']:.0f} | {r['tokens_per_s']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
