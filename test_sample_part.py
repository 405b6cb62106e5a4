"""Tests for sample.py: CPU, tiny random models, seconds.   python -m pytest -q test_sample_part.py"""
import math

import pytest
import torch

import model as M
import sample as S


def sample_model(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    cfg = M.byte_tokenizer_config(**{**dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                             mlp_hidden_size=48, max_sequence_length=128), **kw})
    return M.LLaDA(cfg).to(dtype).eval()


def sample_prompt(B=2, P=5, seed=1):
    return torch.randint(0, 256, (B, P), generator=torch.Generator().manual_seed(seed))


class RiggedEOS(torch.nn.Module):
    """EOS, very confident, in the right half of the window; a token 'a', less confident, in the left; and
    each committed (visible) token predicts itself with confidence ~1, as a trained model does."""

    def __init__(self, P, L):
        super().__init__()
        self.config = M.byte_tokenizer_config(max_sequence_length=128)
        self.P, self.L = P, L

    def forward(self, input_ids, attention_mask=None, logits_slice=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.embedding_size)
        logits[:, :, ord("a")] = torch.linspace(6.0, 7.0, T)       # conf 0.6-0.8 over 264 ids
        logits[:, self.P + self.L // 2:, ord("a")] = 0.0
        logits[:, self.P + self.L // 2:, self.config.eos_token_id] = 10.0  # conf ~ 0.99
        logits[:, :, self.config.mask_token_id] = 50.0                  # must never be a candidate
        logits.scatter_add_(2, input_ids[..., None], torch.full((B, T, 1), 20.0))  # a visible token predicts itself
        return logits.gather(1, logits_slice[..., None].expand(-1, -1, logits.size(-1)))

# -----------------------------------------------------------------------------
# schedules


def test_schedule_counts_exact():
    assert S.linear_counts(10, 4) == [3, 3, 2, 2]
    assert S.linear_counts(256, 256) == [1] * 256
    assert S.linear_blocks(256, 64, 32) == [[4] * 8] * 8
    assert S.linear_blocks(12, 4, 6) == [[3, 3], [3, 3]]
    assert S.linear_blocks(8, 8, 1) == [[1]] * 8  # AR order
    assert S.ass_counts(256, 8) == [1, 2, 4, 8, 16, 32, 64, 129]
    assert S.ass_counts(200, 7) == [1, 2, 4, 8, 16, 32, 137]
    assert S.ass_blocks(256, 8, 1) == [[1, 2, 4, 8, 16, 32, 64, 129]]
    assert [sum(b) for b in S.ass_blocks(256, 8, 2)] == [127, 129]
    assert [sum(b) for b in S.ass_blocks(256, 8, 3)] == [63, 64, 129]
    assert S.ass_blocks(256, 8, 3) == [[1, 2, 4, 8, 16, 32], [64], [129]]
    plan = S.block_plan(S.ass_blocks(256, 8, 3))
    assert [(lo, hi) for lo, hi, _, _ in plan] == [(0, 63)] * 6 + [(63, 127), (127, 256)]
    assert [left for _, _, left, _ in plan] == [63, 62, 60, 56, 48, 32, 64, 129]


def test_eoser_gamma_formulas():
    g = [S.eoser_gamma_linear(i, 5, 0.01, 1.0) for i in range(5)]
    assert g == pytest.approx([0.01, 0.2575, 0.505, 0.7525, 1.0])
    g = [S.eoser_gamma_ass(i, 8, 0.01, 1.0) for i in range(8)]
    assert g[0] == pytest.approx(0.01 + 0.99 / 256)
    assert g[-1] == pytest.approx(1 - 0.99 / 256)  # just below max at the last step
    assert g == sorted(g)


SCHEDULE_CASES = [  # kwargs, expected committed count per step (each row)
    (dict(gen_length=16, steps=6), [3, 3, 3, 3, 2, 2]),
    (dict(gen_length=16, steps=8, block_length=4), [2] * 8),
    (dict(gen_length=12, steps=4, block_length=6, temperature=1.0), [3] * 4),
    (dict(gen_length=8, steps=8, block_length=1), [1] * 8),
    (dict(gen_length=16, schedule="ass", eoser=True), [1, 2, 4, 9]),
    (dict(gen_length=40, steps=5, schedule="ass", block_num=3, temperature=0.8), [1, 2, 4, 8, 25]),
    (dict(gen_length=16, schedule="ass", remasking="random"), [1, 2, 4, 9]),
    (dict(gen_length=16, steps=4, cfg_scale=1.5), [4] * 4),
]


@pytest.mark.parametrize("kw,counts", SCHEDULE_CASES)
def test_generate_follows_schedule(kw, counts):
    model, ids = sample_model(), sample_prompt()
    P = ids.shape[1]
    snaps = []
    x, tr = S.generate(model, ids, return_trajectory=True, callback=lambda c, x: snaps.append(x.clone()), **kw)
    assert (x[:, :P] == ids).all() and not (x == model.config.mask_token_id).any()
    assert tr.num_steps == len(counts) == tr.num_calls
    assert [c.sum(1).tolist() for c in tr.committed] == [[k] * len(ids) for k in counts]
    assert (tr.step_of[:, :P] == -1).all() and (tr.step_of[:, P:] >= 0).all()
    states = tr.states
    assert (states[0][:, P:] == model.config.mask_token_id).all() and (states[-1] == x).all()
    for i, snap in enumerate(snaps):  # the trajectory is what happened, and committed tokens never change
        assert (snap == states[i + 1]).all()
        assert ((states[i + 1] != states[i]) == tr.committed[i]).all()
        kept = snap != model.config.mask_token_id
        assert (snap[kept] == x[kept]).all()


def test_steps_beyond_the_slots_are_empty_and_skip_the_model():
    x, tr = S.generate(sample_model(), sample_prompt(), gen_length=4, steps=8, return_trajectory=True)
    assert [c.sum(1).tolist() for c in tr.committed] == [[1, 1]] * 4 + [[0, 0]] * 4 and tr.num_calls == 4


def test_semi_ar_and_ass_blocks_stay_inside_their_block():
    model, ids = sample_model(), sample_prompt()
    P = ids.shape[1]
    _, tr = S.generate(model, ids, gen_length=16, steps=8, block_length=4, return_trajectory=True)
    for i, c in enumerate(tr.committed):
        lo, hi = P + 4 * (i // 2), P + 4 * (i // 2 + 1)  # two steps per 4-slot block
        assert not c[:, :lo].any() and not c[:, hi:].any()
    _, tr = S.generate(model, ids, gen_length=32, steps=5, schedule="ass", block_num=2, return_trajectory=True)
    first = tr.step_of[:, P:P + 15]  # [15 | 17]: steps 0-3 fill the first block, step 4 the rest
    assert (first <= 3).all() and (tr.step_of[:, P + 15:] == 4).all()


@pytest.mark.parametrize("schedule,extra", [("threshold", dict(threshold=0.05)), ("threshold", dict(threshold=1.0)),
                                            ("entropy_bound", dict(entropy_bound=2.0)), ("entropy_bound", dict(entropy_bound=0.0))])
def test_adaptive_schedules(schedule, extra):
    model, ids = sample_model(), sample_prompt(B=3)
    P = ids.shape[1]
    x, tr = S.generate(model, ids, gen_length=16, block_length=8, schedule=schedule, return_trajectory=True, **extra)
    assert not (x == model.config.mask_token_id).any()
    per_row = tr.step_of.amax(1) + 1
    assert (per_row >= 2).all() and (per_row <= 16).all() and tr.num_calls >= int(per_row.max())
    if extra in (dict(threshold=1.0), dict(entropy_bound=0.0)):  # one slot per step: as many steps as slots
        assert (per_row == 16).all() and tr.num_calls == 16
    for b in range(3):  # each of a row's steps commits >= 1 slot, the first block before the second
        used = tr.step_of[b, P:]
        assert sorted(set(used.tolist())) == list(range(int(per_row[b])))
        assert used[:8].max() < used[8:].min()


def test_threshold_and_entropy_rules():
    conf = torch.tensor([[0.95, 0.2, 0.91, -math.inf], [0.3, 0.5, 0.1, 0.2]])
    masked = conf > -math.inf
    assert S.above_threshold(conf, masked, 0.9).tolist() == [[True, False, True, False], [False, True, False, False]]
    ent = torch.tensor([[0.3, 0.05, 0.1, 9.0], [2.0, 1.0, 3.0, 0.5]])
    assert S.entropy_bounded(ent, masked, 0.2).tolist() == [[False, True, True, False], [False, False, False, True]]
    assert S.entropy_bounded(ent, masked, 0.46).tolist()[0] == [True, True, True, False]

# -----------------------------------------------------------------------------
# EOSER, sampling, trajectory log-probs, batching


def test_eoser_commits_eos_later():
    P, L = 4, 16
    ids, model = sample_prompt(P=P), RiggedEOS(P, L)
    eos = model.config.eos_token_id
    x0, tr0 = S.generate(model, ids, gen_length=L, schedule="ass", return_trajectory=True)
    x1, tr1 = S.generate(model, ids, gen_length=L, schedule="ass", eoser=True, return_trajectory=True)
    assert (x0 == x1).all() and (x0[:, P + L // 2:] == eos).all() and (x0[:, P:P + L // 2] == ord("a")).all()
    first_eos = lambda tr: tr.step_of[x0 == eos].min()
    assert first_eos(tr0) == 0 and first_eos(tr1) == 3  # without: EOS first; with: only at the last step
    _, trl = S.generate(model, ids, gen_length=L, steps=8, eoser=True, eos_min_gamma=0.01, return_trajectory=True)
    assert tr0.step_of[x0 == eos].float().mean() < trl.step_of[x0 == eos].float().mean()


@pytest.mark.parametrize("schedule,extra", [("threshold", dict(threshold=1.0)), ("entropy_bound", dict(entropy_bound=0.0))])
def test_adaptive_rules_only_commit_masked_slots(schedule, extra):
    x, tr = S.generate(RiggedEOS(4, 16), sample_prompt(P=4), gen_length=16, schedule=schedule, return_trajectory=True, **extra)
    assert tr.num_calls == 16 and [c.sum(1).tolist() for c in tr.committed] == [[1, 1]] * 16


def test_generate_applies_the_gamma_of_each_step(monkeypatch):
    seen, step = [], S.denoise_step
    monkeypatch.setattr(S, "denoise_step", lambda *a: seen.append(a[5]) or step(*a))
    model, ids = sample_model(), sample_prompt()
    S.generate(model, ids, gen_length=32, schedule="ass", eoser=True, eos_min_gamma=0.2)
    assert seen == pytest.approx([0.2 + 0.8 * (2 ** (i + 1) - 1) / 32 for i in range(5)])
    seen.clear()
    S.generate(model, ids, gen_length=8, steps=4, block_length=4, eoser=True, eos_min_gamma=0.1, eos_max_gamma=0.7)
    assert seen == pytest.approx([0.1, 0.3, 0.5, 0.7])


def test_gumbel_sampling_matches_softmax_and_never_draws_mask():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 9.0]).repeat(40_000, 1)
    banned = torch.tensor([False, False, False, False, True])  # id 4 plays the mask token
    torch.manual_seed(0)
    x0, conf, logp, _ = S.sample_slots(logits, banned, 0.7, False)
    want = torch.softmax(logits[0, :4] / 0.7, 0)
    freq = torch.bincount(x0, minlength=5).double() / len(x0)
    assert freq[4] == 0 and torch.allclose(freq[:4], want.double(), atol=0.01)
    assert torch.allclose(logp, want.log()[x0]) and torch.allclose(conf, torch.softmax(logits[0, :4], 0)[x0])


def test_float64_noise_only_for_the_slots_being_sampled(monkeypatch):
    drawn, rand = [], torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: drawn.append((tuple(a[0]), k.get("dtype"))) or rand(*a, **k))
    S.generate(sample_model(), sample_prompt(), gen_length=16, schedule="ass", temperature=1.0)
    assert drawn == [((2 * m, 264), torch.float64) for m in (16, 15, 13, 9)]  # masked slots x vocab rows


def test_cfg_logits_are_guided():
    model, ids = sample_model(), sample_prompt()
    cfg = model.config
    x = torch.cat([ids, torch.full((2, 8), cfg.mask_token_id)], 1)
    pos = torch.arange(5, 13).expand(2, 8)
    d = S.Decoding(schedule="linear", remasking="low_confidence", temperature=0.0, cfg_scale=1.5, threshold=0.9,
                   entropy_bound=0.1, prompt_len=5, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id,
                   banned=None, sampler=None)
    c = model(x)[:, 5:]
    u = model(torch.cat([torch.full_like(ids, cfg.mask_token_id), x[:, 5:]], 1))[:, 5:]
    assert torch.allclose(S.model_logits(model, x, None, pos, d), (u + 2.5 * (c - u)).float(), atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_trajectory_logps_equal_recomputation(temperature):
    model, ids = sample_model(), sample_prompt(B=3)
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[0, :2] = False
    torch.manual_seed(0)
    x, tr = S.generate(model, ids, attention_mask=attn, gen_length=16, schedule="ass", eoser=True,
                       temperature=temperature, return_trajectory=True)
    full_attn = torch.cat([attn, torch.ones(3, 16, dtype=torch.bool)], 1)
    cfg, t = model.config, temperature or 1.0
    for i, (state, committed, lp) in enumerate(zip(tr.states, tr.committed, tr.logps)):
        logits = model(state, attention_mask=full_attn).float()
        logits[..., cfg.mask_token_id] = -math.inf
        logits[..., cfg.vocab_size:] = -math.inf
        want = torch.log_softmax(logits / t, -1).gather(-1, x[..., None])[..., 0]
        assert torch.allclose(lp[committed], want[committed], atol=1e-5)
        assert (lp[~committed] == 0).all()


@pytest.mark.parametrize("kw", [dict(gen_length=16, steps=8, block_length=8),
                                dict(gen_length=16, schedule="ass", eoser=True, cfg_scale=1.0),
                                dict(gen_length=16, block_length=8, schedule="threshold", threshold=0.05)])
def test_batched_equals_single(kw):
    model = sample_model()
    seqs = [[7, 8, 9], [1, 2, 3, 4, 5, 6, 7], [10, 20, 30, 40, 50]]
    ids, attn = S.left_pad(seqs, model.config.pad_token_id)
    xb, trb = S.generate(model, ids, attention_mask=attn, return_trajectory=True, **kw)
    P = ids.shape[1]
    for b, s in enumerate(seqs):
        x1, tr1 = S.generate(model, torch.tensor([s]), return_trajectory=True, **kw)
        assert (xb[b, P:] == x1[0, len(s):]).all()
        assert (trb.step_of[b, P:] == tr1.step_of[0, len(s):]).all()
        assert torch.allclose(trb.logp[b, P:], tr1.logp[0, len(s):], atol=1e-5)


@pytest.mark.parametrize("kw,name", [
    (dict(gen_length=16, block_length=5), "block_length"),
    (dict(gen_length=16, steps=3, block_length=8), "steps"),
    (dict(gen_length=16, steps=5, schedule="ass"), "steps"),
    (dict(gen_length=16, steps=2, schedule="ass", block_num=3), "block_num"),
    (dict(gen_length=16, block_num=2), "block_num"),
    (dict(gen_length=16, schedule="ass", block_length=4), "block_length"),
    (dict(gen_length=125), "gen_length"),
    (dict(gen_length=0), "gen_length"),
    (dict(gen_length=16, schedule="diagonal"), "schedule"),
    (dict(gen_length=16, remasking="top_p"), "remasking"),
    (dict(gen_length=16, eoser=True, remasking="random"), "eoser"),
    (dict(gen_length=16, schedule="threshold", steps=4), "steps"),
    (dict(gen_length=16, schedule="threshold", threshold=1.5), "threshold"),
    (dict(gen_length=16, temperature=-1.0), "temperature"),
    (dict(gen_length=16, eos_min_gamma=2.0, eoser=True), "eos_min_gamma"),
    (dict(gen_length=16, attention_mask=torch.ones(2, 3)), "attention_mask"),
])
def test_invalid_arguments_name_themselves(kw, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        S.generate(sample_model(), sample_prompt(), **kw)


def test_cli_runs_on_the_fallback_model(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["sample.py", "--model", "no/such/dir", "--prompt", "hi", "--schedule", "ass", "--eoser"])
    S.main()
    out = capsys.readouterr()
    assert "RANDOM model" in out.err and "step   6 |" in out.out and "model calls" in out.out
