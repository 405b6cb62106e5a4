# -----------------------------------------------------------------------------
# train_rl.py: each loss and gradient against a naive version; FSDP; resume

import train_rl as RL
from sample import banned_ids, generate


def rl_config(**kw):
    return RL.RLConfig(**{**dict(temperature=1.0, clip_eps=0.2, beta=0.0), **kw})


def fixed_rollout(model, algo, n=4, P=5, L=8, seed=0, **decode):
    """A rollout on random prompts (the first two left-padded) with random advantages."""
    torch.manual_seed(seed)
    prompts = torch.randint(0, 256, (n, P))
    attn = torch.ones(n, P, dtype=torch.bool)
    attn[:2, :2] = False
    kw = dict(schedule="linear", steps=L, block_length=1) if algo == "just_grpo" else dict(schedule="ass", steps=3, eoser=True)
    x, traj = generate(model, prompts, attention_mask=attn, gen_length=L, temperature=1.0, return_trajectory=True, **{**kw, **decode})
    full = torch.cat([attn, torch.ones(n, L, dtype=torch.bool)], 1)
    adv = torch.randn(n)
    adv[0] = 0.0
    return dict(x=x, step_of=traj.step_of, logp=traj.logp, attn=full, P=P, L=L, num_steps=traj.num_steps,
                adv=adv, device=torch.device("cpu"), entropy=getattr(traj, "entropy", None))


def naive_logp(model, seq, attn, slot, token, temperature=1.0):
    """One sequence, one model call, float64 log-softmax with the never-sampled ids excluded."""
    logits = model(seq[None], attention_mask=attn[None])[0, slot].double()
    logits = logits.masked_fill(banned_ids(model.config, logits.device), -math.inf)
    return torch.log_softmax(logits / temperature, -1)[token]


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


def assert_grads_close(g0, g1, rtol=1e-4, atol=1e-6):
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_cj_grpo_loss_and_gradient_equal_naive():
    model = tiny_model().train()
    mb = fixed_rollout(model, "cj_grpo")
    mb["logp"] = mb["logp"] + 0.3 * torch.randn_like(mb["logp"])  # an off-policy batch, so the clip acts
    cfg = rl_config(algo="cj_grpo")
    model.zero_grad()
    stats = RL.cj_grpo_loss(model, None, mb, cfg, n_micro=1)
    fast = grads_of(model)
    # naive: one model call per (step, sequence); build the whole loss, one backward
    model.zero_grad()
    P, S, total, clipped = mb["P"], mb["num_steps"], 0.0, 0
    for i in range(S):
        terms = []
        for b in range(len(mb["x"])):
            state = mb["x"][b].clone()
            state[mb["step_of"][b] >= i] = model.config.mask_token_id
            for slot in (mb["step_of"][b] == i).nonzero().flatten().tolist():
                lp = naive_logp(model, state, mb["attn"][b], slot, mb["x"][b, slot])
                rho = torch.exp(lp - mb["logp"][b, slot].double())
                a = mb["adv"][b].double()
                terms.append(torch.min(rho * a, torch.clamp(rho, 0.8, 1.2) * a))
                clipped += bool((rho > 1.2 and a > 0) or (rho < 0.8 and a < 0))
        total = total - torch.stack(terms).mean() / S
    total.backward()
    assert clipped > 0
    assert abs(stats["loss"] - total.item()) < 1e-5
    assert_grads_close(fast, grads_of(model))


def test_cj_grpo_on_policy_ratio_is_one():
    """The stored rollout log-probs equal a recomputation, so at the first iteration rho == 1."""
    model = tiny_model().train()
    mb = fixed_rollout(model, "cj_grpo")
    stats = RL.cj_grpo_loss(model, None, mb, rl_config(algo="cj_grpo", clip_eps=1e-4), n_micro=1)
    assert stats["clipped"] == 0.0


def test_just_grpo_stacked_equals_per_token_loop():
    model = tiny_model().train()
    mb = fixed_rollout(model, "just_grpo")
    n_nonzero = float((mb["adv"] != 0).sum())
    results = []
    for stack in (1, 5, 64):
        model.zero_grad()
        s = RL.just_grpo_loss(model, mb, rl_config(algo="just_grpo", stack=stack), 1, n_nonzero)
        results.append((s["loss"], grads_of(model)))
    # naive: the published loop, one forward per (sequence, token)
    model.zero_grad()
    P, L = mb["P"], mb["L"]
    total = 0.0
    for b in range(len(mb["x"])):
        for t in range(L):
            state = mb["x"][b].clone()
            state[P + t:] = model.config.mask_token_id  # AR order: slot t is committed at step t
            lp = naive_logp(model, state, mb["attn"][b], P + t, mb["x"][b, P + t])
            total = total - mb["adv"][b].double() * lp / (L * (n_nonzero + 1e-5))
    total.backward()
    for loss, grads in results:
        assert abs(loss - total.item()) < 1e-5
        assert_grads_close(grads, grads_of(model))


def test_just_grpo_position_options_select_the_right_positions():
    model = tiny_model().train()
    mb = fixed_rollout(model, "just_grpo")
    eos = model.config.eos_token_id
    mb["x"][1, mb["P"] + 3] = eos  # first EOS of row 1 at slot 3: slots 4..7 are its tail
    cfg = rl_config(algo="just_grpo", skip_eos_tail=True)
    s = RL.just_grpo_loss(model, mb, cfg, 1, 3.0)
    tails = sum(mb["L"] - 1 - int((row == eos).float().argmax()) for row in mb["x"][:, mb["P"]:] if (row == eos).any())
    assert s["tokens"] == 4 * mb["L"] - tails
    if mb["entropy"] is not None:
        s = RL.just_grpo_loss(model, mb, rl_config(algo="just_grpo", top_entropy=0.25), 1, 3.0)
        assert s["tokens"] == 4 * 2


def test_diffu_grpo_loss_and_gradient_equal_naive():
    model = tiny_model().train()
    mb = fixed_rollout(model, "diffu_grpo")
    cfg = rl_config(algo="diffu_grpo", num_iterations=2)
    mb["prompt_masks"] = torch.stack([RL.diffu_mask(mb["attn"][:, :mb["P"]], 0.3, seed) for seed in (1, 2)])
    assert mb["prompt_masks"].any() and not torch.equal(mb["prompt_masks"][0], mb["prompt_masks"][1])
    mb["old_logp"] = torch.stack([RL.diffu_grpo_logp(model, mb, j, cfg).detach() for j in range(2)])
    mb["old_logp"] += 0.3 * torch.randn_like(mb["old_logp"])
    model.zero_grad()
    stats = RL.diffu_grpo_loss(model, None, mb, 1, cfg, n_micro=1)
    fast = grads_of(model)
    model.zero_grad()
    P, eos, terms = mb["P"], model.config.eos_token_id, []
    for b in range(len(mb["x"])):
        seq = mb["x"][b].clone()
        seq[P:] = model.config.mask_token_id
        seq[:P][mb["prompt_masks"][1, b]] = model.config.mask_token_id
        logits = model(seq[None], attention_mask=mb["attn"][b][None])[0].double()
        logits = logits.masked_fill(banned_ids(model.config, logits.device), -math.inf)
        for t in range(mb["L"]):
            lp = torch.log_softmax(logits[P + t], -1)[mb["x"][b, P + t]]
            rho = torch.exp(lp - mb["old_logp"][1, b, t].double())
            a = mb["adv"][b].double()
            terms.append(torch.min(rho * a, torch.clamp(rho, 0.8, 1.2) * a))
            if mb["x"][b, P + t] == eos:
                break
    total = -torch.stack(terms).mean()
    total.backward()
    assert abs(stats["loss"] - total.item()) < 1e-5
    assert_grads_close(fast, grads_of(model))


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0])
    torch.testing.assert_close(RL.group_advantages(r, 2, False), torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    a = RL.group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, True)
    torch.testing.assert_close(a, (torch.tensor([1.0, 0.0, 0.0]) - 1 / 3) / (torch.tensor([1.0, 0.0, 0.0]).std() + 1e-4))


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    lp, ref = torch.randn(100), torch.randn(100)
    assert (RL.k3_kl(lp, ref) >= 0).all() and RL.k3_kl(lp, lp).abs().max() == 0


def test_nonfinite_gradient_never_reaches_the_weights():
    model = tiny_model().train()
    batch = fixed_rollout(model, "cj_grpo")
    batch["adv"][1] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = RL.train_on_rollout(model, None, opt, batch, rl_config(algo="cj_grpo", num_iterations=1), world=1)
    assert stats["skipped"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def make_init_checkpoint(tmp_path):
    model = tiny_model(max_sequence_length=256)
    model.source_dir = M.write_byte_tokenizer(tmp_path / "tok")
    model.save_pretrained(tmp_path / "init")
    return tmp_path / "init"


RL_SMALL = ["--task", "sudoku", "--n_train", "64", "--prompts_per_step", "2", "--group_size", "2", "--gen_length", "40",
            "--micro_batch", "2", "--eval_n", "2", "--eval_every", "100", "--num_iterations", "2", "--lr", "1e-3"]


def test_rl_resume_reaches_the_same_weights(tmp_path):
    init = make_init_checkpoint(tmp_path)
    args = ["--init", str(init), *RL_SMALL, "--save_every", "2"]
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "a"), "--steps", "3"]))
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "2"]))
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "3", "--resume"]))
    a, b = (M.LLaDA.from_pretrained(tmp_path / d / "latest").state_dict() for d in "ab")
    changed = M.LLaDA.from_pretrained(init).state_dict()
    assert any(not torch.equal(a[k], changed[k]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


FSDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
import test_all as T, train_rl as RL
from train_sft import prepare_model, setup_distributed
rank, world, device = setup_distributed("cpu")
model = T.tiny_model()
batch = T.fixed_rollout(model, "cj_grpo", n=4)
model = prepare_model(model, world, device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
mine = {{k: (v[rank * 4 // world:(rank + 1) * 4 // world] if torch.is_tensor(v) and v.dim() else v) for k, v in batch.items()}}
RL.train_on_rollout(model, None, opt, mine, T.rl_config(algo="cj_grpo", micro_batch=2, num_iterations=2), world)
from torch.distributed.checkpoint.state_dict import get_model_state_dict, StateDictOptions
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    torch.save(state, {out!r} + f"/w{{world}}.pt")
dist.destroy_process_group()
"""


def test_fsdp_two_processes_equal_one(tmp_path):
    """Two gloo processes under FSDP2, each with half the rollout, take the same update as one
    process on all of it (gradients are averaged over ranks as over micro-batches)."""
    import os
    import subprocess
    import sys
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT.format(repo=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path)))
    for n in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port", str(29500 + n),
                        str(script)], check=True, env=env, capture_output=True, timeout=300)
    one, two = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    for k in one:  # float32 sums in another order: tolerance 1e-5
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6)
