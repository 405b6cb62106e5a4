"""
The project's tests: CPU, tiny random models, a few minutes in all.

    python -m pytest -q test_all.py
"""
import json
import math

import pytest
import torch

import model as M


def tiny_config(**kw):
    return M.byte_tokenizer_config(**{**dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                             mlp_hidden_size=48, max_sequence_length=128), **kw})


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    model = M.LLaDA(tiny_config(**kw))
    with torch.no_grad():  # RMSNorm weights start at 1; random ones test that they are applied
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()

# -----------------------------------------------------------------------------
# model.py


def naive_forward(model, ids, mask=None):
    """LLaDA's forward written out with explicit loops and einsum in float64."""
    cfg = model.config
    W = {k: v.double() for k, v in model.state_dict().items()}
    B, T = ids.shape
    H, Hkv, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rms_norm_eps
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    out = torch.zeros(B, T, cfg.embedding_size, dtype=torch.float64)
    for b in range(B):
        pos, p = [], 0
        for t in range(T):
            pos.append(p)
            p += int(mask[b, t])
        pos = [max(q - 1, 0) if not mask[b, t] else q for t, q in enumerate(pos)]
        x = W["transformer.wte.weight"][ids[b]]
        for i in range(cfg.n_layers):
            pre = f"transformer.blocks.{i}."
            h = rms(x, W[pre + "attn_norm.weight"])
            q = (h @ W[pre + "q_proj.weight"].T).view(T, H, hd)
            k = (h @ W[pre + "k_proj.weight"].T).view(T, Hkv, hd)
            v = (h @ W[pre + "v_proj.weight"].T).view(T, Hkv, hd)
            for t in range(T):  # rotate-half: pair dim j with dim j + hd/2
                for j in range(hd // 2):
                    ang = pos[t] / cfg.rope_theta ** (2 * j / hd)
                    c, s = math.cos(ang), math.sin(ang)
                    for vec in (q[t], k[t]):
                        a, bb = vec[:, j].clone(), vec[:, j + hd // 2].clone()
                        vec[:, j], vec[:, j + hd // 2] = a * c - bb * s, bb * c + a * s
            att = torch.zeros(T, H, hd, dtype=torch.float64)
            for head in range(H):
                kv = head // (H // Hkv)
                scores = torch.einsum("td,sd->ts", q[:, head], k[:, kv]) / math.sqrt(hd)
                scores[:, ~mask[b]] = -math.inf
                att[:, head] = torch.softmax(scores, -1) @ v[:, kv]
            x = x + att.reshape(T, -1) @ W[pre + "attn_out.weight"].T
            h = rms(x, W[pre + "ff_norm.weight"])
            gate, up = h @ W[pre + "ff_proj.weight"].T, h @ W[pre + "up_proj.weight"].T
            x = x + (gate * torch.sigmoid(gate) * up) @ W[pre + "ff_out.weight"].T
        out[b] = rms(x, W["transformer.ln_f.weight"]) @ W["transformer.ff_out.weight"].T
    return out


def test_forward_matches_naive_float64():
    model = tiny_model()
    ids = torch.randint(0, 262, (2, 9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    for m in (None, mask):
        ref = naive_forward(model, ids, m)
        got = model(ids, attention_mask=m).double()
        rel = (got - ref).norm() / ref.norm()
        assert rel < 1e-5, rel


def test_padded_batch_equals_single_sequences():
    model = tiny_model()
    a, b = torch.randint(0, 262, (1, 7)), torch.randint(0, 262, (1, 4))
    pad = torch.full((1, 3), model.config.pad_token_id)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    logits = model(batch, attention_mask=mask)
    torch.testing.assert_close(logits[0], model(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 3:], model(b)[0], atol=1e-5, rtol=1e-5)
    # the logits slice and gather paths give the same numbers as the full computation
    torch.testing.assert_close(model(batch, mask, logits_slice=slice(4, 7)), logits[:, 4:7])
    idx = torch.tensor([[1, 6], [5, 3]])
    torch.testing.assert_close(model(batch, mask, logits_slice=idx), logits[torch.arange(2)[:, None], idx])


def test_activation_checkpointing_same_gradient():
    model = tiny_model().train()
    ids = torch.randint(0, 262, (2, 6))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ckpt
        model(ids).float().logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_sharded_save_load_roundtrip_exact(tmp_path):
    model = tiny_model(n_kv_heads=4)
    model.source_dir = M.write_byte_tokenizer(tmp_path / "tok")
    model.config.extra["some_key_we_do_not_use"] = [1, 2]
    model.save_pretrained(tmp_path / "ckpt", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert M.INDEX_NAME in files and "tokenizer.json" in files and "tokenizer_config.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    loaded = M.LLaDA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.to_json_dict() == model.config.to_json_dict()
    ids = torch.randint(0, 262, (2, 8))
    assert torch.equal(model(ids), loaded(ids))
    # saving again over an existing checkpoint replaces it atomically and keeps the files along
    loaded.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and (tmp_path / "ckpt" / "tokenizer.json").is_file()
    assert torch.equal(M.LLaDA.from_pretrained(tmp_path / "ckpt")(ids), model(ids))


def test_checkpoint_bad_input_errors(tmp_path):
    model = tiny_model()
    ck = tmp_path / "ck"
    model.save_pretrained(ck, max_shard_bytes=20_000)
    with pytest.raises(FileNotFoundError, match="nope"):
        M.LLaDA.from_pretrained(tmp_path / "nope")
    index = json.loads((ck / M.INDEX_NAME).read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (ck / shard).rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=shard):
        M.LLaDA.from_pretrained(ck)
    (tmp_path / "moved").rename(ck / shard)
    # a tensor missing from the checkpoint
    name = "model.transformer.ln_f.weight"
    del index["weight_map"][name]
    (ck / M.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lacks 1 tensors.*ln_f"):
        M.LLaDA.from_pretrained(ck)
    # wrong shape: the config says a wider MLP than the weights have
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "mlp_hidden_size": 64}))
    with pytest.raises(ValueError, match=r"ff_proj.weight' has shape \(48, 32\), expected \(64, 32\)"):
        M.LLaDA.from_pretrained(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "block_type": "sequential"}))
    with pytest.raises(ValueError, match="block_type.*'sequential'"):
        M.LLaDA.from_pretrained(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        M.LLaDA.from_pretrained(ck)
    (ck / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        M.LLaDA.from_pretrained(ck)


def test_tokenizer_bad_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        M.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}')
    with pytest.raises(ValueError, match="tokenizer.json: not a Hugging Face tokenizer.json"):
        M.load_tokenizer(tmp_path)
    M.write_byte_tokenizer(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, "model": {**spec["model"], "type": "Unigram"}}))
    with pytest.raises(ValueError, match="model.type is 'Unigram'"):
        M.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, "pre_tokenizer": {"type": "Whitespace"}}))
    with pytest.raises(ValueError, match="pre_tokenizer type 'Whitespace'"):
        M.load_tokenizer(tmp_path)


TOKENIZER_TEXTS = [
    "Hello, world! 12345 + 678 = 999",
    "  leading and   multiple   spaces\n\n\ttabs\r\n",
    "naïve café, 東京タワー, Ελληνικά, emoji 🤖🎉, ümlaut",
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat's 2+2?<|eot_id|><|endoftext|>",
    "x<|mdm_mask|><|mdm_mask|>y don't we'll I'M  3.14159e-10",
    "",
]


def build_hf_bpe(tmp_path, split_regex):
    """A byte-level BPE tokenizer.json trained by the `tokenizers` library, with LLaDA's specials."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    if split_regex:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    corpus = [t * 3 for t in TOKENIZER_TEXTS[:3]] + ["the quick brown fox jumps over the lazy dog " * 5,
                                                     "1234567890 " * 20, "def f(x):\n    return x ** 2\n" * 4]
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(M.CHAT_TOKENS), show_progress=False)
    hf.train_from_iterator(corpus, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    return hf


@pytest.mark.parametrize("split_regex", [None, r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"])
def test_tokenizer_matches_huggingface_tokenizers(tmp_path, split_regex):
    hf = build_hf_bpe(tmp_path, split_regex)
    tok = M.load_tokenizer(tmp_path)
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text
    assert len(tok.encode(TOKENIZER_TEXTS[0])) < len(TOKENIZER_TEXTS[0].encode())  # merges were used


def test_byte_tokenizer_roundtrip_and_chat_template():
    tok = M.byte_tokenizer()
    for text in TOKENIZER_TEXTS:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.chat_prompt("  Sudoku 1234  ")
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids) == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nSudoku 1234<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.decode(ids, skip_special=True) == "user\n\nSudoku 1234assistant\n\n"
    cfg = tiny_config()
    assert (tok.mask_id, tok.eos_id) == (cfg.mask_token_id, cfg.eos_token_id)
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


RL_SMALL = ["--task", "sudoku", "--prompts_per_step", "2", "--group_size", "2", "--gen_length", "40",
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
import test_tmp_rl as T, train_rl as RL
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
