"""Pick the SFT checkpoint whose held-out Sudoku accuracy is closest to 50% (the bundled model
should be competent but leave room for RL) and export it in bf16.

    python experiments/pick_checkpoint.py out/sft checkpoints/llada-tiny
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

import torch

from model import LLaDA

run_dir, dest = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl") if "acc_sudoku" in line]
best = min(rows, key=lambda r: abs(r["acc_sudoku"] - 0.5))
print("picked", json.dumps(best))
LLaDA.from_pretrained(f"{run_dir}/step_{best['step']}").save_pretrained(dest, dtype=torch.bfloat16)
