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
