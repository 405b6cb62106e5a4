"""
Executions per second of execute.py's contained runs: a small HumanEval-style program with three
asserts, run n times with one worker and with one per usable core; prints what is contained.

    python bench/bench_execute.py                      # 200 programs, 1 and all cores
    python bench/bench_execute.py --n 500 --out results/execute_bench.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the components live one folder up

from execute import containment, run_batch

BENCH_PROGRAM = '''
def has_close_elements(numbers, threshold):
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
'''
BENCH_TESTS = '''
assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3)
assert not has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05)
assert has_close_elements([1.0, 2.0, 5.9, 4.0, 5.0], 0.95)
'''


def bench(n, workers, out):
    box = containment()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for w in sorted({1, workers or cores}):
        run_batch([(BENCH_PROGRAM, BENCH_TESTS)] * min(n, 4 * w), workers=w)  # warm the page cache
        t = time.monotonic()
        results = run_batch([(BENCH_PROGRAM, BENCH_TESTS)] * n, workers=w)
        dt = time.monotonic() - t
        assert all(r.passed for r in results), [r for r in results if not r.passed][:1]
        rows.append({"workers": w, "executions": n, "seconds": round(dt, 3), "executions_per_s": round(n / dt, 1),
                     "mean_latency_ms": round(1000 * sum(r.seconds for r in results) / n, 1)})
    report = {"host_cores": cores, "python": sys.version.split()[0],
              "containment": {k: v for k, v in box.items() if k != "prefix"}, "runs": rows}
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report["containment"]))
    print(f"{'workers':>8} {'executions':>11} {'seconds':>8} {'exec/s':>8} {'latency ms':>11}")
    for r in rows:
        print(f"{r['workers']:>8} {r['executions']:>11} {r['seconds']:>8} {r['executions_per_s']:>8} {r['mean_latency_ms']:>11}")



if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Executions per second of execute.py's contained runs.")
    p.add_argument("--n", type=int, default=200, help="programs per measurement")
    p.add_argument("--workers", type=int, default=0, help="parallel runs (default: the usable CPU cores)")
    p.add_argument("--out", default="", help="write the measurements as JSON here")
    a = p.parse_args()
    bench(a.n, a.workers, a.out)
