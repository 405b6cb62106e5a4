"""
The project's tests: CPU, tiny random models, a few minutes in all.

    python -m pytest -q test_all.py
"""
import json
import math
import random
import re
import time
import types
import zlib

import numpy as np
import pytest
import torch

import model as M
import sample as S
import tasks as T
import train_rl as RL
from sample import banned_ids, generate


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
    (model.source_dir / "modeling_llada.py").write_text("# loaded by Hugging Face through auto_map\n")
    model.config.extra["some_key_we_do_not_use"] = [1, 2]
    model.save_pretrained(tmp_path / "ckpt", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert M.INDEX_NAME in files and "tokenizer.json" in files and "tokenizer_config.json" in files
    assert "modeling_llada.py" in files
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
    with pytest.raises(ValueError, match='block_type.*"sequential".*only "llama"'):
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
    with pytest.raises(ValueError, match="tokenizer.json: not valid JSON"):
        M.load_tokenizer(tmp_path)
    M.write_byte_tokenizer(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, "model": {**spec["model"], "type": "Unigram"}}))
    with pytest.raises(ValueError, match="model.type is 'Unigram'"):
        M.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, "pre_tokenizer": {"type": "Whitespace"}}))
    with pytest.raises(ValueError, match="pre_tokenizer type 'Whitespace'"):
        M.load_tokenizer(tmp_path)


# ---- checkpoint config: Hugging Face's LLaDA keys, refused values, bad files named ----

# LLaDA-8B-Instruct's config.json (as published) less its sizes and token ids, which are the model's
# own, and "transformers_version", which names the library that wrote the file
LLADA_8B_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "embedding_dropout": 0.0,
    "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
    "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rope": True, "rope_full_precision": True, "scale_logits": False,
    "use_cache": False, "weight_tying": False,
}
LLADA_SIZE_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size", "embedding_size",
                   "max_sequence_length", "rope_theta", "rms_norm_eps", "mask_token_id", "eos_token_id", "pad_token_id")


def test_from_scratch_config_has_llada_keys_and_loaded_keys_are_kept(tmp_path):
    """Hugging Face loads a LLaDA checkpoint through model_type + auto_map, and trains with the
    dropouts of its config (0.1 by default): a from-scratch save writes LLaDA's full key set."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "a")
    written = json.loads((tmp_path / "a" / "config.json").read_text())
    for key, value in LLADA_8B_CONFIG.items():
        assert key in written and written[key] == value and type(written[key]) is type(value), key
    for key in LLADA_SIZE_KEYS:
        assert written[key] == getattr(model.config, key), key
    # a loaded checkpoint keeps the values of its keys, the ones we only keep included
    written.update(init_std=0.01, transformers_version="4.46.3", flash_attention=True, block_group_size=2)
    (tmp_path / "a" / "config.json").write_text(json.dumps(written))
    M.LLaDA.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == written


def tiny_checkpoint(tmp_path, **config_changes):
    """A saved tiny model with config.json changed (None deletes a key)."""
    ck = tmp_path / "ck"
    if not ck.exists():
        tiny_model().save_pretrained(ck)
        M.write_byte_tokenizer(ck)
    cfg = json.loads((ck / "config.json").read_text())
    for k, v in config_changes.items():
        cfg.pop(k) if v is None else cfg.update({k: v})
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


@pytest.mark.parametrize("key, value, expected", [
    ("input_emb_norm", True, "false"), ("rope_full_precision", False, "true"), ("include_qkv_bias", True, "false"),
    ("layer_norm_with_affine", False, "true"), ("clip_qkv", 8.0, "null"), ("multi_query_attention", True, "null or false"),
    ("bias_for_layer_norm", True, "false or null"), ("attention_layer_norm", True, "false"), ("rope", False, "true"),
    ("activation_type", "swiglu", '"silu"')])
def test_config_values_we_do_not_implement_are_refused(tmp_path, key, value, expected):
    with pytest.raises(ValueError, match=f"config.json: key '{key}' is {re.escape(json.dumps(value))}; "
                                         f"this model implements only {re.escape(expected)}$"):
        M.LLaDA.from_pretrained(tiny_checkpoint(tmp_path, **{key: value}))


def test_nonzero_dropout_is_refused_when_training_only(tmp_path):
    model = M.LLaDA.from_pretrained(tiny_checkpoint(tmp_path, residual_dropout=0.1))
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), tiny_model()(ids))  # evaluation: the same with or without dropout
    with pytest.raises(ValueError, match="residual_dropout.*0.1.*no dropout"):
        model.train()(ids)
    with pytest.raises(ValueError, match="config.json: key 'attention_dropout' is 1.5, expected a number in"):
        M.LLaDA.from_pretrained(tiny_checkpoint(tmp_path, residual_dropout=0.0, attention_dropout=1.5))


def rewrite_tensor(ck, name, tensor):
    from safetensors.torch import load_file, save_file
    tensors = load_file(ck / "model.safetensors")
    tensors[name] = tensor
    save_file(tensors, ck / "model.safetensors")


def test_bad_weights_and_missing_keys_are_refused_naming_them(tmp_path):
    ck = tiny_checkpoint(tmp_path)
    good = M.LLaDA.from_pretrained(ck).transformer.ln_f.weight.detach().clone()
    name = "model.transformer.ln_f.weight"
    for bad, what in ((float("nan"), "NaN or inf"), (float("inf"), "NaN or inf")):
        rewrite_tensor(ck, name, torch.where(torch.arange(len(good)) == 3, bad, good))
        with pytest.raises(ValueError, match=f"model.safetensors: tensor '{name}' has {what}"):
            M.LLaDA.from_pretrained(ck)
    rewrite_tensor(ck, name, good * 1e5)  # finite in float32, inf in float16
    M.LLaDA.from_pretrained(ck)
    with pytest.raises(ValueError, match=f"tensor '{name}' has NaN or inf.*float16"):
        M.LLaDA.from_pretrained(ck, dtype=torch.float16)
    for dtype in (torch.int32, torch.bool, torch.float8_e4m3fn):
        rewrite_tensor(ck, name, good.to(dtype))
        with pytest.raises(ValueError, match=f"tensor '{name}' has dtype {dtype}, expected one of"):
            M.LLaDA.from_pretrained(ck)
    rewrite_tensor(ck, name, good)
    for key in ("mask_token_id", "eos_token_id", "rope_theta", "max_sequence_length"):
        with pytest.raises(ValueError, match=f"config.json: missing required keys \\['{key}'\\]"):
            M.LLaDA.from_pretrained(tiny_checkpoint(tmp_path, **{key: None}))
        tiny_checkpoint(tmp_path, **{key: getattr(tiny_config(), key)})
    # null or absent n_kv_heads / embedding_size mean n_heads / vocab_size, as in LLaDA's configuration
    cfg = {k: v for k, v in json.loads((ck / "config.json").read_text()).items() if k != "embedding_size"}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_kv_heads": None}))
    loaded = M.LLaDAConfig.from_json(tmp_path / "config.json")
    assert (loaded.n_kv_heads, loaded.embedding_size) == (cfg["n_heads"], cfg["vocab_size"])


@pytest.mark.parametrize("changes, message", [
    (dict(d_model="192"), "key 'd_model' is \"192\", expected a positive integer"),
    (dict(n_heads=0), "key 'n_heads' is 0, expected a positive integer"),
    (dict(n_layers=2.5), "key 'n_layers' is 2.5, expected a positive integer"),
    (dict(vocab_size=True), "key 'vocab_size' is true, expected a positive integer"),
    (dict(rope_theta="1e4"), "key 'rope_theta' is \"1e4\", expected a positive number"),
    (dict(rms_norm_eps=-1e-5), "key 'rms_norm_eps' is -1e-05, expected a positive number"),
    (dict(mask_token_id=-1), "key 'mask_token_id' is -1, expected a non-negative integer"),
    (dict(mask_token_id=262), "key 'mask_token_id' is 262, expected an id below vocab_size 262"),
    (dict(d_model=36), "d_model 36 must divide by n_heads 4 into an even head dim"),
])
def test_config_types_and_ranges_name_the_key(tmp_path, changes, message):
    with pytest.raises(ValueError, match="config.json: " + re.escape(message)):
        M.LLaDA.from_pretrained(tiny_checkpoint(tmp_path, **changes))


def test_unreadable_files_name_themselves(tmp_path):
    ck = tiny_checkpoint(tmp_path)
    weights = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a valid safetensors file"):
        M.LLaDA.from_pretrained(ck)
    (ck / "model.safetensors").write_bytes(weights)
    config = (ck / "config.json").read_text()
    (ck / "config.json").write_text(json.dumps([json.loads(config)]))
    with pytest.raises(ValueError, match="config.json: expected a JSON object, found a list"):
        M.LLaDA.from_pretrained(ck)
    binary = bytes(range(128, 256)) * 4
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        original = (ck / name).read_text() if name != "config.json" else config
        (ck / name).write_bytes(binary)
        load = M.LLaDA.from_pretrained if name == "config.json" else M.load_tokenizer
        with pytest.raises(ValueError, match=f"{name}: not UTF-8 text"):
            load(ck)
        (ck / name).write_text(original)
    (ck / "tokenizer_config.json").write_text('{"bos_token": ')
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        M.load_tokenizer(ck)


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
# tasks.py

GSM_ROWS = [
    {"question": "Janet has 3 apples and buys 3 more. How many?", "answer": "3+3=<<3+3=6>>6\n#### 6"},
    {"question": "A shop sells 36 boxes of 30. How many items?",
     "answer": "36*30=<<36*30=1080>>1080\n#### 1,080"},
    {"question": "The temperature drops 5 from 2. What is it?", "answer": "2-5=<<2-5=-3>>-3\n#### -3"},
]


def test_get_task_names_and_unknown():
    for name in ("gsm8k", "math500", "countdown", "sudoku"):
        assert T.get_task(name).name == name
    with pytest.raises(ValueError, match="gsm8k, math500, countdown, sudoku"):
        T.get_task("svamp")


def test_gsm8k_reference_is_correct_in_every_style_and_gold_plus_one_is_not():
    task = T.get_task("gsm8k")
    for row in GSM_ROWS:
        ex = task.from_row(row)
        gold = ex["answer"].split("####")[1].strip()
        wrong = str(int(gold.replace(",", "")) + 1)
        for style in T.STYLES:
            ref = task.reference(ex, style)
            assert task.is_correct(ref, ex), (style, ref)
            assert not task.is_correct(ref.replace(gold, wrong), ex), (style, ref)
        ref = task.reference(ex)
        integer = 0.5 if not gold.startswith("-") else 0.0  # d1's isdigit() test
        assert task.reward(ref, ex) == pytest.approx(2.0 + integer + 1.5)
        assert task.reward(ref.replace(gold, wrong), ex) == pytest.approx(integer + 1.5)


def test_gsm8k_comma_gold_and_dotall_fixes():
    task, ex = T.get_task("gsm8k"), GSM_ROWS[1]
    assert T.correctness_reward("<answer>\n1080\n</answer>", "1,080") == 2.0  # reference: 0
    assert T.correctness_reward("<answer>1,080</answer>", "1080") == 2.0
    assert T.int_reward("<answer>1,080</answer>") == 0.5
    assert task.is_correct("<answer>The total is 1,080 items</answer>", ex)
    assert task.is_correct("so \\boxed{1,080}", ex)
    multi_line = "<reasoning>\nstep 1\nstep 2\n</reasoning>\n<answer>\n1080\n</answer>\n"
    assert T.strict_format_reward(multi_line) == 0.5 and T.soft_format_reward(multi_line) == 0.5
    assert T.xml_count_reward(multi_line) == pytest.approx(0.5)
    assert T.strict_format_reward(multi_line + "\n") == 0.5  # `$` matches before a final newline
    assert T.strict_format_reward(multi_line + "\n\n") == 0.0 == T.strict_format_reward(multi_line[:-1] + " ")
    assert T.xml_count_reward(multi_line + "x" * 10) == pytest.approx(0.5 - 0.02)


def test_gsm8k_eval_reads_first_numeric_boxed_then_last_number_of_answer():
    task, ex = T.get_task("gsm8k"), GSM_ROWS[0]
    assert task.is_correct("\\boxed{...} then \\boxed{6} and \\boxed{7}", ex)
    assert not task.is_correct("\\boxed{7} then \\boxed{6}", ex)
    assert task.is_correct("<answer>7</answer> \\boxed{6}", ex)
    assert task.is_correct("<answer>from 7 we get 6</answer>", ex)
    assert task.is_correct("so 3 + 3 = 6, the answer is 6", ex)  # no format at all: the last number
    assert not task.is_correct("the answer is 6, or maybe 7", ex)
    assert not task.is_correct("<answer>٦</answer>", ex)  # Arabic-Indic six


def test_gsm8k_format_rewards_match_the_reference_regexes_with_dotall():
    strict = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
    soft = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
    parts = ["<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n", "\n", "x", " ",
             "<reasoning>", "</reasoning>", "<answer>", "</answer>"]
    rng, hits = random.Random(0), [0, 0]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.3:
            text = "<reasoning>\n" + text + "\n</answer>\n"
        assert T.strict_format_reward(text) == (0.5 if strict.match(text) else 0.0), repr(text)
        assert T.soft_format_reward(text) == (0.5 if soft.match(text) else 0.0), repr(text)
        hits[0] += bool(strict.match(text))
        hits[1] += bool(soft.match(text))
    assert min(hits) > 20  # the samples exercise both outcomes


MATH_EQUIVALENT = [
    ("\\frac{1}{2}", "\\dfrac{1}{2}"), ("\\frac12", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"),
    (".5", "0.5"), ("1/2", "\\tfrac12"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("10\\%", "10"), ("\\$18", "18"), ("x = 5", "5"),
    ("5 \\text{ cm}", "5"), ("\\sqrt3", "\\sqrt{3}"), ("5.0", "5"), ("-2.00", "-2"),
    ("\\frac1{23}", "\\frac{1}{23}"),
    ("\\!1,\\!000", "1,000"), ("\\text{(C)}", "\\text{(C)}"), ("6 - 5i", "6-5i"),
]
MATH_DIFFERENT = [
    ("\\frac{1}{3}", "\\frac{1}{2}"), ("5", "50"), ("5.5", "5"), ("(3,2)", "(2,3)"), ("x=5", "6"),
    ("5.0", "50"), ("2.01", "2"), ("\\sqrt{3}", "\\sqrt{2}"), ("\\text{(C)}", "\\text{(D)}"), ("-2", "2"),
]


def test_math_normalisation_equivalent_and_different():
    for a, b in MATH_EQUIVALENT:
        assert T.math_equal(a, b) and T.math_equal(b, a), (a, b)
    for a, b in MATH_DIFFERENT:
        assert not T.math_equal(a, b), (a, b)
    assert not T.math_equal(None, "5") and not T.math_equal("5", None)


def test_math_reward_and_is_correct():
    task = T.get_task("math500")
    ex = task.from_row({"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."})
    assert ex["answer"] == "\\frac{1}{2}"  # taken from the solution when the row has no answer
    assert task.is_correct("so \\boxed{\\dfrac12}", ex)
    assert not task.is_correct("\\boxed{\\frac{1}{2}} no wait \\boxed{1}", ex)  # the last \boxed counts
    assert not task.is_correct("\\boxed{\\frac{1}{2}", ex)  # unclosed
    assert not task.is_correct("\\frac{1}{2}", ex)  # no \boxed
    assert task.reward("<answer>\\boxed{0.5}</answer>", ex) == 2.0 + 1.0
    assert task.reward("<answer>1/2</answer>", ex) == 0.75  # tags, no \boxed (reference: always this)
    assert task.reward("\\boxed{1/2}", ex) == 2.0 + 0.5  # \boxed, no tags
    assert task.reward("", ex) == 0.25
    for style in T.STYLES:
        assert task.is_correct(task.reference(ex, style), ex), style
    assert "\\boxed{}" in task.prompt(ex, "just") and task.prompt(ex, "just").startswith("Half of one?")


def test_countdown_adversarial_expressions_are_safe_and_fast():
    task, ex = T.get_task("countdown"), {"numbers": [30, 100, 93], "target": 23}
    right = ["30-(100-93)", " 30 - (100 - 93) ", "30-100+93", "(93+30)-100", "\\boxed{30-(100-93)}",
             "-(100-93)+30", "30-(100-93)\n"]
    wrong = ["9**9**9", "30-(100-93)+0", "(100-93)*30/30", "30-(100-93.0)", "30-(100-93)=23", "23",
             "30 - (100 - 93) - 0 * 9**9**9**9", "__import__('os').system('true')",
             "(" * 10_000 + "1" + ")" * 10_000, "1" * 60_000, "30//1-(100-93)", "٣٠-(١٠٠-٩٣)",
             "30-(100-93", "1_0+20-7", "0x1e+5", "30-(100-93) and 1",
             "30 - (" + "(" * 150 + "100-93" + ")" * 150 + ")"]
    start = time.time()
    for expr in right:
        assert task.reward(f"<reasoning>..</reasoning><answer>{expr}</answer>", ex) == 1.0, expr
    for expr in wrong:
        assert task.reward(f"<answer>{expr}</answer>", ex) == 0.1, expr[:40]
    assert task.reward("30-(100-93)", ex) == 0.0 and task.reward("<answer>30-(100-93)", ex) == 0.0
    assert task.reward("<answer>1+1</answer> <answer>30-(100-93)</answer>", ex) == 1.0  # the last one
    assert task.reward("<answer>3/(5-5)</answer>", {"numbers": [3, 5, 5], "target": 1}) == 0.1
    assert task.reward("<answer>(30/100)*93-4.9</answer>", ex) == 0.1
    assert task.is_correct("<answer>30-(100-93)</answer>", ex)
    assert not task.is_correct("<answer>7</answer>", ex)
    assert time.time() - start < 2.0


def test_bad_input_never_raises_and_returns_fast():
    big = ("<answer>" * 60_000 + "\\boxed{" * 60_000 + "<reasoning>\n</reasoning><answer>" * 20_000
           + "9" * 100_000)
    bad = [None, "", 123, b"<answer>6</answer>", ["x"], "\\boxed{", "<answer>", "</answer><answer>",
           "١٢٣", big, big + "</answer>", "{" * 1_000_000, "\\boxed{" + "{" * 500_000]
    examples = {"gsm8k": GSM_ROWS[0], "math500": {"problem": "p", "answer": "6"},
                "countdown": {"numbers": [1, 2, 3], "target": 6},
                "sudoku": {"puzzle": "0" * 16, "solution": "1234341221434321"}}
    start = time.time()
    for name, ex in examples.items():
        task = T.get_task(name)
        for completion in bad:
            r = task.reward(completion, ex)
            assert isinstance(r, float) and -1.0 < r <= 1.5, (name, str(completion)[:30], r)
            assert task.is_correct(completion, ex) is False, (name, str(completion)[:30])
    assert time.time() - start < 10.0


# ---- bounded work per completion ----

def test_reward_work_is_bounded_for_huge_completions():
    """10 MB completions cannot come from a model (see MAX_COMPLETION_CHARS): scoring reads a bounded
    prefix. Old code: 1.2-1.6 s per call on a quiet machine; bounded: ~0.01 s."""
    math_ex, gsm_ex = {"problem": "p", "answer": "6"}, GSM_ROWS[0]
    math, gsm = T.get_task("math500"), T.get_task("gsm8k")
    cases = [(math.reward, "\\boxed{" + "{" * 10_000_000, math_ex), (math.is_correct, "\\boxed{" + "{" * 10_000_000, math_ex),
             (gsm.is_correct, "-1." * 3_400_000, gsm_ex), (gsm.reward, "-1." * 3_400_000, gsm_ex)]
    for score, completion, ex in cases:
        start = time.perf_counter()
        score(completion, ex)
        assert time.perf_counter() - start < 0.2, score
    long_ok = "x" * (T.MAX_COMPLETION_CHARS - 100) + "<answer>6</answer>"  # the longest real completion
    assert gsm.is_correct(long_ok, gsm_ex) and math.is_correct(long_ok.replace("<answer>6", "\\boxed{6}"), math_ex)
    assert not gsm.is_correct("x" * T.MAX_COMPLETION_CHARS + "<answer>6</answer>", gsm_ex)  # past the cap: unread


def test_countdown_generate_deterministic_disjoint_and_references_score_one():
    task = T.get_task("countdown")
    train, test = task.generate(150, seed=0), task.generate(40, seed=1)  # seed 0: train, others: held out
    assert train == task.generate(150, seed=0) and test != task.generate(40, seed=2)
    assert train != task.generate(150, seed=7, split="train")
    numbers = [{str(sorted(e["numbers"])) for e in s} for s in (train, test, task.generate(40, seed=2))]
    assert not numbers[0] & (numbers[1] | numbers[2])
    small = [{str(sorted(e["numbers"])) for e in task.generate(n, seed=s, max_number=12)}
             for n, s in ((100, 0), (30, 1))]
    assert not small[0] & small[1]  # 364 number sets only: any leak would show
    with pytest.raises(ValueError, match="split"):
        task.generate(5, seed=0, split="val")
    for ex in train + test:
        assert len(ex["numbers"]) == 3 and all(1 <= x <= 100 for x in ex["numbers"])
        assert 1 <= ex["target"] <= 100
        for style in ("d1", "d1_eval", "compact"):
            assert task.reward(task.reference(ex, style), ex) == 1.0, (ex, style)
        assert len(task.reference(ex, "compact")) <= 40 and len(task.prompt(ex, "compact")) <= 40
        loaded = {"numbers": ex["numbers"], "target": ex["target"]}  # data files keep no expression
        assert task.reward(task.reference(loaded, "compact"), loaded) == 1.0


# ---- countdown: exact target check, typed rows ----

def test_countdown_target_is_exact_and_rows_are_typed(tmp_path):
    task, ex = T.get_task("countdown"), {"numbers": [200001, 200000, 1], "target": 1}
    assert task.reward("<answer>200001/200000*1</answer>", ex) == 0.1  # 1.000005: within 1e-5, still wrong
    assert not task.is_correct("<answer>200001/200000*1</answer>", ex)
    assert task.reward("<answer>(200001-200000)/1</answer>", ex) == 1.0
    assert task.reward("<answer>(1+2)/3*3</answer>", {"numbers": [1, 2, 3, 3], "target": 3}) == 1.0
    good = json.dumps({"numbers": [30, 100, 93], "target": 23}) + "\n"
    for bad in ('{"numbers": "123", "target": 6}', '{"numbers": [1, 2, 3], "target": 6.5}',
                '{"numbers": [1, 2, 3], "target": "6"}', '{"numbers": [1, 2, true], "target": 6}',
                '{"numbers": [1, 2, 3, 4], "target": 6}', '{"input": "1,2", "output": "3"}'):
        p = tmp_path / "cd.jsonl"
        p.write_text(good + bad + "\n")
        with pytest.raises(ValueError, match=re.escape("cd.jsonl:2: bad countdown row")):
            task.load(p)


def count_sudoku_solutions(puzzle):
    """Brute force, independent of tasks.py: try every digit in every empty cell."""
    g = [int(c) for c in puzzle]

    def ok(i, d):
        r, c = divmod(i, 4)
        peers = {r * 4 + k for k in range(4)} | {k * 4 + c for k in range(4)}
        peers |= {(r // 2 * 2 + a) * 4 + c // 2 * 2 + b for a in (0, 1) for b in (0, 1)}
        return all(g[j] != d for j in peers - {i})

    def count(i):
        if i == 16:
            return 1
        if g[i]:
            return count(i + 1) if ok(i, g[i]) else 0
        total = 0
        for d in range(1, 5):
            if ok(i, d):
                g[i] = d
                total += count(i + 1)
                g[i] = 0
        return total
    return count(0)


def test_sudoku_generate_unique_deterministic_disjoint_and_references_score_one():
    task = T.get_task("sudoku")
    assert len(T.SUDOKU_GRIDS) == len(set(T.SUDOKU_GRIDS)) == 288 == count_sudoku_solutions("0" * 16)
    train, test = task.generate(200, seed=0), task.generate(60, seed=3, empties=(8, 12))
    assert train == task.generate(200, seed=0) and train != task.generate(200, seed=4, split="train")
    assert not {e["puzzle"] for e in train} & {e["puzzle"] for e in test}
    one_empty = [task.generate(n, seed=s, empties=(1, 1)) for n, s in ((300, 0), (100, 5))]
    assert not {e["puzzle"] for e in one_empty[0]} & {e["puzzle"] for e in one_empty[1]}  # 4608 puzzles only
    for ex, (lo, hi) in [(e, (6, 10)) for e in train] + [(e, (8, 12)) for e in test]:
        assert lo <= ex["puzzle"].count("0") <= hi
        assert count_sudoku_solutions(ex["puzzle"]) == 1
        assert count_sudoku_solutions(ex["solution"]) == 1
        assert all(p in ("0", s) for p, s in zip(ex["puzzle"], ex["solution"]))
        for style in ("d1", "d1_eval", "compact"):
            ref = task.reference(ex, style)
            assert task.reward(ref, ex) == 1.0 and task.is_correct(ref, ex)
        assert len(task.reference(ex, "compact")) <= 40 and len(task.prompt(ex, "compact")) <= 40


def test_sudoku_reward_cells_and_metrics():
    task = T.get_task("sudoku")
    ex = {"puzzle": "1030040220030301", "solution": "1234341221434321"}  # 8 empty cells
    assert task.reward("<answer>\n1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1\n</answer>", ex) == 1.0
    assert task.reward("<answer>12343412</answer>", ex) == 4 / 8  # padded with 0
    assert task.reward("<answer>1111111111111111</answer><answer>1234341221434321</answer>", ex) == 1.0
    assert task.reward("<answer>١٢٣٤</answer>", ex) == 0.0
    assert task.reward("<answer>٣1234341221434321</answer>", ex) == 1.0  # only ASCII digits are read
    assert task.reward("1234341221434321", ex) == 0.0  # no <answer>
    full = {"puzzle": ex["solution"], "solution": ex["solution"]}
    assert task.reward("<answer>1234341221434321</answer>", full) == 0.0  # d1: no empty cell, 0
    m = T.sudoku_metrics(["<answer>1234341221434321</answer>", "<answer>12343412</answer>", None], [ex] * 3)
    assert m == {"cell_accuracy": (8 + 4 + 0) / 24, "solved": 1 / 3}


# ---- train / validation / test splits ----

def test_generated_splits_never_overlap_and_test_is_the_old_tenth():
    keys = {"countdown": lambda e: str(sorted(e["numbers"])), "sudoku": lambda e: e["puzzle"],
            "arithmetic": lambda e: " ".join(e["steps"])}
    for name, key in keys.items():
        task, kw = T.get_task(name), {"max_number": 12} if name == "countdown" else {}  # 364 number sets
        drawn = {split: {key(e) for seed in (0, 3) for e in task.generate(40, seed=seed, split=split, **kw)}
                 for split in ("train", "validation", "test")}
        drawn["train"] |= {key(e) for e in task.generate(40, seed=0, **kw)}  # seed 0: train by default
        drawn["test"] |= {key(e) for e in task.generate(40, seed=1, **kw)}  # other seeds: test
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
            assert not drawn[a] & drawn[b], (name, a, b)
        for split, ks in drawn.items():  # crc32 % 10: 0 test (as before), 1 validation, else train
            buckets = {zlib.crc32(k.encode()) % 10 for k in ks}
            assert buckets <= ({0} if split == "test" else {1} if split == "validation" else set(range(2, 10)))
    with pytest.raises(ValueError, match="'train', 'validation' or 'test'"):
        T.get_task("arithmetic").generate(5, seed=0, split="val")


# ---- arithmetic task ----

def test_arithmetic_generate_deterministic_disjoint_and_chains_recompute():
    task = T.get_task("arithmetic")
    train, test = task.generate(300, seed=0), task.generate(100, seed=1)
    assert train == task.generate(300, seed=0) and train != task.generate(300, seed=5, split="train")
    chains = [[" ".join(e["steps"]) for e in s] for s in (train, test)]
    assert len(set(chains[0])) == 300 and len(set(chains[1])) == 100  # no duplicates within a call
    assert not set(chains[0]) & set(chains[1])
    for ex in train + test:  # each line recomputed here: exact, in 0..999, feeding the next line
        v = None
        for line in ex["steps"]:
            a, op, b, c = re.fullmatch(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)", line).groups()
            a, b, c = int(a), int(b), int(c)
            assert v in (None, a) and 0 <= c <= 999 and str(b) in ex["question"], (line, ex)
            assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and (op != "/" or a % b == 0)
            v = c
        assert v == ex["answer"] and 2 <= len(ex["steps"]) <= 6
        start = re.match(r"[0-9]+", ex["steps"][0]).group()
        assert f" {start} " in ex["question"] and ex["question"].endswith("?")
    assert {len(e["steps"]) for e in train} == {2, 3, 4, 5, 6}


def test_arithmetic_rewards_and_references():
    task = T.get_task("arithmetic")
    examples = task.generate(200, seed=0) + task.generate(50, seed=2)
    for ex in examples:
        for style in ("d1", "d1_eval", "compact"):
            ref = task.reference(ex, style)
            assert task.reward(ref, ex) == 1.0 and task.is_correct(ref, ex), (style, ref)
            assert all(s in ref for s in ex["steps"])
        gold = ex["answer"]
        assert task.reward(f"<answer>{gold + 1}</answer>", ex) == 0.1
        assert not task.is_correct(f"<answer>{gold + 1}</answer>", ex)
    ex = {"question": "Ann has 7 coins. She finds 5 more. She keeps 1/3 of them. How many coins now?",
          "answer": 4, "steps": ["7+5=12", "12/3=4"]}
    assert task.reference(ex, "compact") == "7+5=12\n12/3=4\n<answer>4</answer>"
    assert task.prompt(ex, "compact") == ex["question"] and ex["question"] in task.prompt(ex, "d1")
    for completion, r in [("<answer> 4 </answer>", 1.0), ("<answer>\\boxed{4}</answer>", 1.0),
                          ("<answer>4.0</answer>", 0.1), ("<answer>four</answer>", 0.1), ("<answer>٤</answer>", 0.1),
                          ("<answer>3+1</answer>", 0.1), ("<answer>" + "9" * 5000 + "</answer>", 0.1),
                          ("<answer>7</answer><answer>4</answer>", 1.0), ("<answer>4</answer><answer>7</answer>", 0.1),
                          ("4", 0.0), ("<answer>4", 0.0), (None, 0.0)]:
        assert task.reward(completion, ex) == r, completion[:30] if completion else completion
        assert task.is_correct(completion, ex) is (r == 1.0)
    with pytest.raises(ValueError, match="style"):
        task.prompt(ex, "just")


def test_arithmetic_compact_reference_lengths_vary_widely():
    task, tok = T.get_task("arithmetic"), M.byte_tokenizer()
    by_ops = {}
    for ex in task.generate(1000, seed=0):
        by_ops.setdefault(len(ex["steps"]), []).append(len(tok.encode(task.reference(ex, "compact"))) + 1)
    lengths = [n for v in by_ops.values() for n in v]
    assert min(lengths) <= 32 and max(lengths) >= 85  # measured on 5000: 31 to 93 tokens
    medians = [sorted(by_ops[k])[len(by_ops[k]) // 2] for k in range(2, 7)]
    assert medians == sorted(medians) and medians[-1] - medians[0] >= 25


def test_arithmetic_rows_load_and_malformed_rows_name_the_line(tmp_path):
    task, p = T.get_task("arithmetic"), tmp_path / "a.jsonl"
    row = {"question": "Ann has 7 coins. She finds 5 more. How many?", "answer": 12, "steps": ["7+5=12"]}
    p.write_text(json.dumps(row) + "\n" + json.dumps({"question": "q", "answer": 3}) + "\n")
    loaded = task.load(p)
    assert loaded == [row, {"question": "q", "answer": 3, "steps": []}]
    assert task.reward(task.reference(loaded[1], "compact"), loaded[1]) == 1.0
    for bad in ({"question": "q", "answer": "12"}, {"question": "q", "answer": True}, {"question": "q", "answer": -1},
                {"question": "q", "answer": 1, "steps": "7+5=12"}, {"answer": 1}):
        p.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=re.escape("a.jsonl:2:")):
            task.load(p)


def test_prompts_styles_and_prefill():
    gsm, cd, sd = T.get_task("gsm8k"), T.get_task("countdown"), T.get_task("sudoku")
    q = GSM_ROWS[0]["question"]
    assert gsm.prompt(GSM_ROWS[0]) == T.D1_FORMAT + "\n\n" + q and gsm.prompt(GSM_ROWS[0], "just") == q
    assert "\\boxed{...}" in gsm.prompt(GSM_ROWS[0], "d1_eval") and gsm.prefill("d1_eval") == "<reasoning>"
    assert gsm.prefill("d1") == "" and not gsm.reference(GSM_ROWS[0], "d1_eval").startswith("<reasoning>")
    ex = {"numbers": [30, 100, 93], "target": 23}
    assert cd.prompt(ex, "compact") == "Countdown: 30,100,93 -> 23"
    assert "Using only the numbers [30, 100, 93]" in cd.prompt(ex)
    assert "Target: 23" in cd.prompt(ex, "d1_eval")
    assert sd.prompt({"puzzle": "1030040220030301"}, "compact") == "Sudoku 4x4: 1030040220030301"
    for task, style in [(cd, "just"), (sd, "just"), (gsm, "chat")]:
        with pytest.raises(ValueError, match="style"):
            task.prompt(ex if task is cd else {"puzzle": "0" * 16, "question": "q"}, style)
    with pytest.raises(ValueError, match="not generated"):
        gsm.generate(10, seed=0)


def test_loaders_read_published_formats(tmp_path):
    p = tmp_path / "gsm.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in GSM_ROWS) + "\n\n")
    assert T.get_task("gsm8k").load(p) == GSM_ROWS
    p = tmp_path / "cd_test.jsonl"
    p.write_text('{"input": "30,100,93", "output": "23"}\n{"numbers": [1, 2, 3], "target": 6}\n')
    assert T.get_task("countdown").load(p) == [{"numbers": [30, 100, 93], "target": 23},
                                               {"numbers": [1, 2, 3], "target": 6}]
    p = tmp_path / "sudoku.csv"
    p.write_text("Puzzle,Solution\n1030040220030301,1234341221434321\n")
    assert T.get_task("sudoku").load(p) == [{"puzzle": "1030040220030301", "solution": "1234341221434321"}]
    p = tmp_path / "math.jsonl"
    p.write_text(json.dumps({"problem": "p", "solution": "s \\boxed{\\frac{1}{2}}", "answer": "1/2"}) + "\n")
    assert T.get_task("math500").load(p)[0]["answer"] == "1/2"  # the file's answer field wins


def test_malformed_data_files_name_file_and_line(tmp_path):
    good = json.dumps(GSM_ROWS[0]) + "\n"
    cases = [("gsm8k", "bad.jsonl", good + "\n{not json\n", 3),
             ("gsm8k", "nogold.jsonl", good + json.dumps({"question": "q", "answer": "4"}), 2),
             ("math500", "m.jsonl", json.dumps({"problem": "p", "solution": "no box"}) + "\n", 1),
             ("countdown", "c.jsonl", '{"input": "1,2,3", "output": "6"}\n{"input": "1,x,3"}\n', 2),
             ("sudoku", "s.csv", "Puzzle,Solution\n1030040220030301,1234341221434321\n1030040220030301,1234\n", 3),
             ("sudoku", "h.csv", "a,b\n1,2\n", 2)]
    for name, fname, text, line in cases:
        p = tmp_path / fname
        p.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{fname}:{line}:")):
            T.get_task(name).load(p)
    p = tmp_path / "data.txt"
    p.write_text("x")
    with pytest.raises(ValueError, match="data.txt"):
        T.get_task("gsm8k").load(p)


# ---- code tasks and the executor ----
import os
import socket
import tempfile

import execute as E

SMALL = E.Limits(wall_s=2.0, cpu_s=1, memory_mb=256, file_mb=1, procs=64, output_kb=64)
HUMANEVAL_ROWS = [  # the published format; problems of our own
    {"task_id": "Toy/0", "entry_point": "add_one",
     "prompt": "from typing import List\n\n\ndef add_one(xs: List[int]) -> List[int]:\n    \"\"\" Add 1 to every element.\n    >>> add_one([1, 2])\n    [2, 3]\n    \"\"\"\n",
     "canonical_solution": "    return [x + 1 for x in xs]\n",
     "test": "\n\ndef check(candidate):\n    assert candidate([]) == []\n    assert candidate([1, 2]) == [2, 3]\n    assert candidate([-1]) == [0]\n"},
    {"task_id": "Toy/1", "entry_point": "is_even",
     "prompt": "def is_even(n: int) -> bool:\n    \"\"\" Whether n is even. \"\"\"\n",
     "canonical_solution": "    return n % 2 == 0\n",
     "test": "\n\ndef check(candidate):\n    assert candidate(4)\n    assert not candidate(7)\n"},
]
MBPP_ROWS = [
    {"task_id": 12, "text": "Write a function to double a number.", "code": "def double(x):\r\n  return 2 * x",
     "test_list": ["assert double(2) == 4", "assert double(0) == 0", "assert double(-3) == -6"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 603, "text": "Write a function to count the nodes of a list.", "code": "def count(xs):\n    return len(xs)",
     "test_list": ["assert (count(nodes)) == 3"], "test_setup_code": "nodes = [1, 2, 3]", "challenge_test_list": []},
]


def code_tasks(tmp_path):
    he, mb = T.get_task("humaneval"), T.get_task("mbpp")
    he.limits = mb.limits = SMALL
    (tmp_path / "he.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HUMANEVAL_ROWS))
    (tmp_path / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return (he, he.load(tmp_path / "he.jsonl")), (mb, mb.load(tmp_path / "mbpp.jsonl"))


def test_code_references_pass_in_every_style_and_broken_programs_score_zero(tmp_path):
    completions, examples, expect = [], [], []
    for task, rows in code_tasks(tmp_path):
        for row in rows:
            for style in T.STYLES:
                completions.append(task.reference(row, style)), examples.append((task, row)), expect.append(True)
            good = task.solution(row)
            name = row.get("entry_point") or good.split("def ")[1].split("(")[0]
            broken = [good.replace("return ", "return 1 + "),          # wrong value
                      good.replace("return ", "return ("),             # syntax error
                      good.replace("return ", "return 1 / 0 + "),      # exception
                      f"def {name}(*args):\n    while True:\n        pass\n"]  # infinite loop
            for code in broken:
                completions.append(f"```python\n{code}\n```"), examples.append((task, row)), expect.append(False)
    he_mb = {t.name: t for t, _ in examples}
    got = []
    for name, task in he_mb.items():  # one parallel batch per task
        idx = [i for i, (t, _) in enumerate(examples) if t is task]
        got += list(zip(idx, task.grade([completions[i] for i in idx], [examples[i][1] for i in idx])))
    assert [g for _, g in sorted(got)] == [(e, float(e)) for e in expect]
    he, row = examples[0][0], examples[0][1]
    assert he.reward(he.reference(row, "just"), row) == 1.0 and he.is_correct("no code at all", row) is False
    assert he.reward(None, row) == 0.0


def test_code_prompts_follow_justgrpo_and_mbpp_split(tmp_path):
    (he, he_rows), (mb, mb_rows) = code_tasks(tmp_path)
    p = he.prompt(he_rows[1], "just")
    assert p.startswith("You are an expert Python programmer. Your task is to complete the implementation of a "
                        "function named `is_even`.\n\nHere is the function to complete:\n```python\ndef is_even(")
    assert he.prompt(he_rows[1], "d1") == T.D1_FORMAT + "\n\n" + p and he.prompt(he_rows[0], "compact").startswith("def add_one(")
    p = mb.prompt(mb_rows[1], "just")
    assert "named ``" in p and "def ():" in p  # JustGRPO's name rule, as published: "assert (f(x))" names nothing
    assert "** UNIT TESTS **\nYour code should pass unit tests like:\n    assert (count(nodes)) == 3\n" in p
    assert mb.prompt(mb_rows[0], "just").count("input_param_") == 1
    assert [r["task_id"] for r in mb.load(tmp_path / "mbpp.jsonl", "test")] == [12]
    assert [r["task_id"] for r in mb.load(tmp_path / "mbpp.jsonl", "train")] == [603]
    with pytest.raises(ValueError, match="split 'dev'"):
        mb.load(tmp_path / "mbpp.jsonl", "dev")
    (tmp_path / "bad.jsonl").write_text(json.dumps({**MBPP_ROWS[0], "test_list": []}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        mb.load(tmp_path / "bad.jsonl")


def test_extract_code_equals_the_justgrpo_regex():
    rx = re.compile(r"```python\n(.*?)```", re.DOTALL)
    rng = random.Random(0)
    parts = ["```python\n", "```", "x = 1\n", "\n", "`", "python", " text "]
    for _ in range(2000):
        s = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        m = rx.search(s)
        assert T.extract_code(s) == (m.group(1).strip() if m else s)
    t0 = time.time()
    T.extract_code("```python\n" * 200_000)
    assert time.time() - t0 < 1.0


def test_pass_at_k_equals_enumeration_over_subsets():
    from itertools import combinations
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 4), (4, 4, 2), (7, 1, 7)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(combinations(outcomes, k))
        assert math.isclose(T.pass_at_k(n, c, k), sum(any(s) for s in subsets) / len(subsets))
    assert T.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        T.pass_at_k(3, 4, 1)


MARK = "report, nonce_in, drop"  # a line of the harness: every process of a run has it in its command line


def sandbox_processes():
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if MARK.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def run_dirs():
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("execute-")}


def test_hostile_programs_are_contained_and_never_pass():
    box = E.containment()
    before = run_dirs()
    cases = {
        "infinite loop": ("while True:\n    pass\n", "assert True"),
        "sleep": ("import time\ntime.sleep(60)\n", "assert True"),
        "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "assert True"),
        "50 GB": ("x = bytearray(50 * 2**30)\n", "assert True"),
        "10 GB file": ("with open('big', 'wb') as f:\n    for _ in range(10 * 1024):\n        f.write(bytes(2**20))\n", "assert True"),
        "1 GB printed": ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)\n", "assert True"),
        "kill parent": ("import os\nos.kill(os.getppid(), 9)\n", "assert False"),
        "kill group": ("import os\nos.kill(0, 9)\n", "assert False"),
        "sys.exit(0)": ("import sys\nsys.exit(0)\n", "assert False"),
        "os._exit(0)": ("import os\nos._exit(0)\n", "assert False"),
        "atexit": ("import atexit, os\natexit.register(os._exit, 0)\n", "assert False"),
        "patched builtins": ("import builtins\nbuiltins.len = lambda x: 5\nbuiltins.AssertionError = SystemExit\n",
                             "assert len([1]) == 5"),
        "fake report": ("import os\nfor fd in range(1, 10):\n    try:\n        os.write(fd, b'done\\n')\n    except OSError:\n"
                        "        pass\n", "assert False"),
        "child keeps pipes": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n", "assert False"),
    }
    t0 = time.time()
    results = dict(zip(cases, E.run_batch(cases.values(), SMALL, workers=len(cases))))
    assert time.time() - t0 < 20, {k: r.seconds for k, r in results.items()}
    assert {k for k, r in results.items() if r.passed} == set()  # and this process, their parent, is alive
    assert all(r.seconds < SMALL.wall_s + 2 for r in results.values()), {k: r.seconds for k, r in results.items()}
    assert results["1 GB printed"].status == "output limit" and results["infinite loop"].status in ("timeout", "failed")
    assert "MemoryError" in results["50 GB"].output and "File too large" in results["10 GB file"].output
    for _ in range(50):  # a run killed by its own program is reaped by the kernel a moment later
        if not sandbox_processes():
            break
        time.sleep(0.1)
    assert sandbox_processes() == [] and run_dirs() <= before
    if box["pid_namespace"]:  # without one, a process that left the session outlives the call (README)
        assert results["child keeps pipes"].seconds < SMALL.wall_s


def test_what_programs_can_touch_outside_their_directory(tmp_path):
    box = E.containment()
    home = os.path.expanduser("~")
    mine = os.path.join(tempfile.gettempdir(), f"execute-test-{os.getpid()}")
    with open(mine, "w") as f:
        f.write("keep")
    os.chmod(mine, 0o644)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        r = E.run("import os\nwith open(os.path.expanduser('~/x'), 'w') as f:\n    f.write('x')\nHOME = os.path.expanduser('~')\n",
                  "assert os.path.exists('x') and HOME == os.getcwd()", SMALL)
        assert r.passed, r.output  # ~ is the run's own directory
        assert E.run("print(open('/etc/passwd').read()[:10])", "assert True", SMALL).passed  # reading is not blocked
        overwrite = E.run(f"open({mine!r}, 'w').write('gone')\n", "assert True", SMALL)
        write_home = E.run(f"open({os.path.join(home, 'execute-test-x')!r}, 'w').write('x')\n", "assert True", SMALL)
        connect = E.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", "assert True", SMALL)
        if box["runs_as"] == "nobody":  # run as root: the program runs as nobody
            assert not overwrite.passed and not write_home.passed
            assert open(mine).read() == "keep" and not os.path.exists(os.path.join(home, "execute-test-x"))
        if box["network_isolated"]:
            assert not connect.passed and "Errno" in connect.output
            with pytest.raises(socket.timeout):
                server.accept()
    finally:
        server.close()
        os.remove(mine)
        if os.path.exists(os.path.join(home, "execute-test-x")):
            os.remove(os.path.join(home, "execute-test-x"))


# -----------------------------------------------------------------------------
# sample.py

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
                   banned=None, sampler=None, want_entropy=False)
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


def test_cli_runs_on_the_random_model(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["sample.py", "--random_model", "--prompt", "hi", "--schedule", "ass", "--eoser"])
    S.main()
    out = capsys.readouterr()
    assert "RANDOM model" in out.err and "step   6 |" in out.out and "model calls" in out.out

# ---- sample.py command line: bad flags, missing model, --help, the answer shown ----


def cli_error(monkeypatch, capsys, *args):
    """Run sample.py's main with args; it must exit 2 (argparse's error): return its one-line message."""
    monkeypatch.setattr("sys.argv", ["sample.py", *args])
    with pytest.raises(SystemExit) as e:
        S.main()
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_missing_model_path_is_an_error_naming_it(monkeypatch, capsys, tmp_path):
    missing = str(tmp_path / "llada-tinyy")
    msg = cli_error(monkeypatch, capsys, "--model", missing, "--task", "sudoku", "--eval", "2", "--gen_length", "8")
    assert missing in msg and "--random_model" in msg
    msg = cli_error(monkeypatch, capsys, "--model", str(tmp_path), "--eval", "2")  # a directory, but no checkpoint
    assert str(tmp_path) in msg and "config.json" in msg


@pytest.mark.parametrize("args, flag, allowed", [
    (("--gen_length", "0"), "--gen_length", ">= 1"),
    (("--steps", "0"), "--steps", ">= 1"),
    (("--eoser", "maybe"), "--eoser", "true or false"),
    (("--compile", "no"), "--compile", "true or false"),
    (("--batch_size", "0", "--eval", "2"), "--batch_size", ">= 1"),
    (("--temperature", "nan"), "--temperature", ">= 0"),
    (("--task", "sudok"), "--task", "'sudoku'"),
    (("--steps", "5", "--block_length", "8", "--gen_length", "16"), "--steps", "split evenly over 2 blocks"),
    (("--threshold", "2", "--schedule", "threshold"), "--threshold", "(0, 1]"),
])
def test_cli_flags_outside_their_values_name_the_flag(monkeypatch, capsys, args, flag, allowed):
    msg = cli_error(monkeypatch, capsys, "--random_model", *args)
    assert flag in msg and allowed in msg


def test_cli_boolean_flags_take_true_false_or_nothing(monkeypatch):
    seen = []
    monkeypatch.setattr(S, "show_one", lambda *a: seen.append(a[-1]["eoser"]))
    for args, want in ((["--eoser"], True), (["--eoser", "false"], False), (["--eoser", "True"], True), ([], False)):
        monkeypatch.setattr("sys.argv", ["sample.py", "--random_model", *args])
        S.main()
        assert seen.pop() is want


def test_cli_help_shows_every_default(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["sample.py", "--help"])
    with pytest.raises(SystemExit):
        S.main()
    options = capsys.readouterr().out.split("options:")[1]
    entries = re.split(r"\n  (?=--)", options)[1:]  # one entry per flag, -h excluded
    assert len(entries) >= 20
    for entry in entries:
        assert "default" in entry, entry


def test_cli_shows_the_answer_up_to_the_end_of_the_generation(monkeypatch, capsys):
    tok, tail = M.byte_tokenizer(), "<answer>4023</answer>"  # text after the end, as a small model can leave
    window = tok.encode("<answer>4123</answer>") + [tok.eot_id] + 3 * [tok.eos_id] + tok.encode(tail) + [tok.eos_id]

    def fake_generate(model, ids, callback=None, **kw):
        return torch.cat([ids, torch.tensor([window])], 1), types.SimpleNamespace(num_calls=1)
    monkeypatch.setattr(S, "generate", fake_generate)
    monkeypatch.setattr("sys.argv", ["sample.py", "--random_model", "--task", "sudoku", "--gen_length", str(len(window))])
    S.main()
    lines = capsys.readouterr().out.splitlines()
    assert "<answer>4123</answer>" in lines
    assert [l for l in lines if tail in l] == [f"(after the end of the generation, and read by the reward too: {tail!r})"]
    # the reward reads the whole window without special tokens, as train_rl.py does; here the tail changes it
    task, example = T.get_task("sudoku"), T.get_task("sudoku").generate(1, seed=1)[0]
    read = task.reward("<answer>4123</answer>" + tail, example)
    assert read != task.reward("<answer>4123</answer>", example)
    assert f"reward {read:.3f}  correct False" in lines


# -----------------------------------------------------------------------------
# train_rl.py: each loss and gradient against a naive version; FSDP; resume



def rl_config(**kw):
    return RL.RLConfig(**{**dict(temperature=1.0, clip_eps=0.2, beta=0.0), **kw})


def fixed_rollout(model, algo, n=4, P=5, L=8, seed=0, **decode):
    """A rollout on random prompts (the first two left-padded) with random advantages."""
    torch.manual_seed(seed)
    prompts = torch.randint(0, 256, (n, P))
    attn = torch.ones(n, P, dtype=torch.bool)
    attn[:2, :2] = False
    kw = dict(schedule="linear", steps=L, block_length=1) if algo == "just_grpo" else dict(schedule="ass", steps=3, eoser=True)
    x, traj = generate(model, prompts, attention_mask=attn, gen_length=L, temperature=1.0, return_trajectory=True,
                       record_entropy=True, **{**kw, **decode})
    full = torch.cat([attn, torch.ones(n, L, dtype=torch.bool)], 1)
    adv = torch.randn(n)
    adv[0] = 0.0
    return dict(x=x, step_of=traj.step_of, logp=traj.logp, attn=full, P=P, L=L, num_steps=traj.num_steps,
                adv=adv, device=torch.device("cpu"), entropy=traj.entropy)


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


@pytest.mark.parametrize("decode", [{}, dict(schedule="threshold", steps=None, eoser=False, threshold=0.004)])
def test_cj_grpo_loss_and_gradient_equal_naive(decode):
    """ASS (every row commits k_i slots per step) and the adaptive threshold rule (rows differ)."""
    model = tiny_model().train()
    mb = fixed_rollout(model, "cj_grpo", **decode)
    counts = torch.stack([(mb["step_of"] == i).sum(1) for i in range(mb["num_steps"])])
    assert bool((counts == counts[:, :1]).all()) == (not decode)
    mb["logp"] = mb["logp"] + 0.3 * torch.randn_like(mb["logp"])  # an off-policy batch, so the clip acts
    cfg = rl_config(algo="cj_grpo")
    model.zero_grad()
    stats = RL.cj_grpo_loss(model, None, mb, cfg, n_micro=1)
    fast = grads_of(model)
    # naive: one model call per (step, sequence); build the whole loss, one backward
    model.zero_grad()
    S, total, clipped = mb["num_steps"], 0.0, 0
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
    mb["scale"] = RL.just_grpo_scale(mb["adv"], len(mb["x"]), mb["L"], world=1)  # one group
    results = []
    for stack in (1, 5, 64):
        model.zero_grad()
        s = RL.just_grpo_loss(model, mb, rl_config(algo="just_grpo", stack=stack))
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
    mb["scale"] = torch.ones(len(mb["x"]))
    assert RL.just_grpo_loss(model, mb, rl_config(algo="just_grpo"))["tokens"] == 3 * mb["L"]  # row 0 has A = 0
    mb["adv"][0] = 0.5
    eos = model.config.eos_token_id
    mb["x"][1, mb["P"] + 3] = eos  # first EOS of row 1 at slot 3: slots 4..7 are its tail
    cfg = rl_config(algo="just_grpo", skip_eos_tail=True)
    s = RL.just_grpo_loss(model, mb, cfg)
    tails = sum(mb["L"] - 1 - int((row == eos).float().argmax()) for row in mb["x"][:, mb["P"]:] if (row == eos).any())
    assert s["tokens"] == 4 * mb["L"] - tails
    s = RL.just_grpo_loss(model, mb, rl_config(algo="just_grpo", top_entropy=0.25))
    assert s["tokens"] == 4 * 2
    # the recorded entropy is that of the sampling distribution at the committed slot
    P, t = mb["P"], 5
    state = mb["x"][2].clone()
    state[P + t:] = model.config.mask_token_id
    logits = model(state[None], attention_mask=mb["attn"][2][None])[0, P + t].double()
    probs = torch.softmax(logits.masked_fill(banned_ids(model.config), -math.inf), -1)
    assert abs(mb["entropy"][2, P + t].item() - torch.special.entr(probs).sum().item()) < 1e-4


def test_diffu_grpo_loss_and_gradient_equal_naive():
    model = tiny_model().train()
    mb = fixed_rollout(model, "diffu_grpo")
    cfg = rl_config(algo="diffu_grpo", num_iterations=2)
    mb["prompt_masks"] = torch.stack([RL.diffu_mask(mb["attn"][:, :mb["P"]], 0.3, seed) for seed in (1, 2)], 1)  # (B, mu, P)
    assert mb["prompt_masks"].any() and not torch.equal(mb["prompt_masks"][:, 0], mb["prompt_masks"][:, 1])
    mb["old_logp"] = torch.stack([RL.diffu_grpo_logp(model, mb, j, cfg).detach() for j in range(2)], 1)
    mb["old_logp"] += 0.3 * torch.randn_like(mb["old_logp"])
    model.zero_grad()
    stats = RL.diffu_grpo_loss(model, None, mb, 1, cfg, n_micro=1)
    fast = grads_of(model)
    model.zero_grad()
    P, eos, terms = mb["P"], model.config.eos_token_id, []
    for b in range(len(mb["x"])):
        seq = mb["x"][b].clone()
        seq[P:] = model.config.mask_token_id
        seq[:P][mb["prompt_masks"][b, 1]] = model.config.mask_token_id
        logits = model(seq[None], attention_mask=mb["attn"][b][None])[0].double()
        logits = logits.masked_fill(banned_ids(model.config, logits.device), -math.inf)
        for t in range(mb["L"]):
            lp = torch.log_softmax(logits[P + t], -1)[mb["x"][b, P + t]]
            rho = torch.exp(lp - mb["old_logp"][b, 1, t].double())
            a = mb["adv"][b].double()
            terms.append(torch.min(rho * a, torch.clamp(rho, 0.8, 1.2) * a))
            if mb["x"][b, P + t] == eos:
                break
    total = -torch.stack(terms).mean()
    total.backward()
    assert abs(stats["loss"] - total.item()) < 1e-5
    assert_grads_close(fast, grads_of(model))


# ---- reference match: diffu-GRPO's KL gradient, JustGRPO's per-group scale ----


def diffu_naive_loss(model, ref, mb, iteration, beta):
    """d1's objective in float64, one model call per sequence: the mean over completion tokens up
    to and including the first EOS of -(min(rho A, clip(rho) A) - beta k3(logp, ref_logp)),
    on-policy (rho = exp(lp - lp.detach()))."""
    P, eos, terms = mb["P"], model.config.eos_token_id, []
    for b in range(len(mb["x"])):
        seq = mb["x"][b].clone()
        seq[P:] = model.config.mask_token_id
        seq[:P][mb["prompt_masks"][b, iteration]] = model.config.mask_token_id
        lps = []
        for m in (model, ref):
            logits = m(seq[None], attention_mask=mb["attn"][b][None])[0].double()
            lps.append(torch.log_softmax(logits.masked_fill(banned_ids(m.config, logits.device), -math.inf), -1))
        for t in range(mb["L"]):
            token = mb["x"][b, P + t]
            lp, ref_lp = lps[0][P + t, token], lps[1][P + t, token].detach()
            rho, a = torch.exp(lp - lp.detach()), mb["adv"][b].double()
            kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
            terms.append(torch.min(rho * a, torch.clamp(rho, 0.8, 1.2) * a) - beta * kl)
            if token == eos:
                break
    return -torch.stack(terms).mean()


def test_diffu_grpo_kl_term_carries_gradient():
    """With beta > 0 the KL to the frozen reference must move the weights (d1's trainer backpropagates
    it); loss and gradient equal the naive float64 objective that includes it."""
    model, ref = tiny_model().double().train(), tiny_model(seed=1).double()
    mb = fixed_rollout(model, "diffu_grpo")
    mb["prompt_masks"] = RL.diffu_mask(mb["attn"][:, :mb["P"]], 0.3, 1)[:, None]  # (B, mu = 1, P)
    cfg = rl_config(algo="diffu_grpo", num_iterations=1, beta=0.5)
    model.zero_grad()
    stats = RL.diffu_grpo_loss(model, ref, mb, 0, cfg, n_micro=1)
    fast = grads_of(model)
    model.zero_grad()
    total = diffu_naive_loss(model, ref, mb, 0, cfg.beta)
    total.backward()
    assert stats["kl"] > 0.01
    assert_grads_close(fast, grads_of(model), rtol=1e-9, atol=1e-12)
    assert abs(stats["loss"] - total.item()) < 1e-10


class GradCatcher:
    """An optimizer stand-in keeping the gradient train_on_rollout steps with."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = grads_of(self.model)

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def just_grpo_groups_rollout(model, G=8, L=6, nonzero=(8, 4, 2)):
    """One rollout of len(nonzero) groups of G; group g has nonzero[g] completions with A != 0."""
    batch = fixed_rollout(model, "just_grpo", n=G * len(nonzero), L=L)
    adv = torch.randn(G * len(nonzero), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for g, n in enumerate(nonzero):
        adv[g * G + n:(g + 1) * G] = 0.0
    batch["adv"] = adv
    return batch


def just_grpo_gradient(model, batch, G, micro_batch, stack):
    model.zero_grad(set_to_none=True)
    opt = GradCatcher(model)
    cfg = rl_config(algo="just_grpo", group_size=G, micro_batch=micro_batch, stack=stack, num_iterations=1,
                    grad_clip=1e30)
    RL.train_on_rollout(model, None, opt, dict(batch), cfg, world=1)
    return opt.grads


def test_just_grpo_normalises_per_group_whatever_the_micro_batch():
    """JustGRPO's unit is one prompt group: group g's token losses are scaled by 1 / (L (n_g + 1e-5)).
    Micro-batches of G, 2G, 3 (not dividing G) and several --stack give the naive per-group gradient."""
    G = 8
    model = tiny_model().double().train()
    batch = just_grpo_groups_rollout(model, G)
    P, L = batch["P"], batch["L"]
    model.zero_grad()
    total = 0.0
    for g in range(len(batch["x"]) // G):
        members = range(g * G, (g + 1) * G)
        n_g = sum(float(batch["adv"][j] != 0) for j in members)
        for j in members:
            for t in range(L):
                state = batch["x"][j].clone()
                state[P + t:] = model.config.mask_token_id  # AR order: slot t is committed at step t
                lp = naive_logp(model, state, batch["attn"][j], P + t, batch["x"][j, P + t])
                total = total - batch["adv"][j] * lp / (L * (n_g + 1e-5))
    total.backward()
    naive = grads_of(model)
    for micro_batch, stack in ((G, 64), (2 * G, 64), (3, 64), (3, 5), (2 * G, 1), (3 * G, 7)):
        assert_grads_close(just_grpo_gradient(model, batch, G, micro_batch, stack), naive, rtol=1e-9, atol=1e-13)


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


RL_SMALL = ["--task", "sudoku", "--n_train", "64", "--prompts_per_step", "2", "--group_size", "2", "--gen_length", "40",
            "--micro_batch", "2", "--eval_n", "2", "--eval_every", "100", "--num_iterations", "2", "--lr", "1e-3"]


def test_rl_resume_reaches_the_same_weights(tmp_path):
    """On the bundled model, so that rewards spread and Adam's state matters for the resumed step."""
    import os
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "llada-tiny")
    args = ["--init", str(init), *RL_SMALL, "--save_every", "2"]
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "a"), "--steps", "3"]))
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "2"]))
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a step the killed run logged but never saved
        f.write(json.dumps({"step": 3, "logged_before_the_kill": True}) + "\n")
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "3", "--resume"]))
    a, b = (M.LLaDA.from_pretrained(tmp_path / d / "latest").state_dict() for d in "ab")
    changed = M.LLaDA.from_pretrained(init).state_dict()
    assert any(not torch.equal(a[k], changed[k]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "logged_before_the_kill" not in rows[3]
    assert set(rows[0]) == {"step", "eval_acc", "eval_reward"}  # the held-out curve starts before training
    assert min(r["zero_spread"] for r in rows[1:]) < 1


FSDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
import test_all as T, train_rl as RL
from model import byte_tokenizer
from tasks import get_task
from train_common import prepare_model, setup_distributed
rank, world, device = setup_distributed("cpu")
model = T.tiny_model(max_sequence_length=512)
batch = T.fixed_rollout(model, "cj_grpo", n=4)
model = prepare_model(model, world, device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
mine = {{k: (v[rank * 4 // world:(rank + 1) * 4 // world] if torch.is_tensor(v) and v.dim() else v) for k, v in batch.items()}}
cfg = T.rl_config(algo="cj_grpo", micro_batch=2, num_iterations=2, gen_length=8, group_size=2)
RL.train_on_rollout(model, None, opt, mine, cfg, world)
RL.rollout(model, byte_tokenizer(), get_task("countdown"), get_task("countdown").generate(2, seed=1), cfg, device)
assert not dist.is_initialized() or all(hasattr(p, "to_local") for p in model.parameters()), "root left unsharded"
RL.train_on_rollout(model, None, opt, mine, T.rl_config(algo="cj_grpo", micro_batch=2, num_iterations=1), world)
from torch.distributed.checkpoint.state_dict import get_model_state_dict, StateDictOptions
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
from train_common import gathered, whole  # the checkpoint's own gather equals torch's
ours = gathered(get_model_state_dict(model), rank)
assert rank != 0 or (ours.keys() == state.keys() and all(torch.equal(ours[k], state[k]) for k in state))
if dist.is_initialized():
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    for rows in (5, 1):  # shards of unequal rows, and a rank that holds none
        t = torch.arange(rows * 3.0).view(rows, 3)
        assert torch.equal(whole(distribute_tensor(t, mesh, [Shard(0)])), t)
if rank == 0:
    torch.save(state, {out!r} + f"/w{{world if dist.is_initialized() else 0}}.pt")
if dist.is_initialized():
    dist.barrier()  # no rank closes its connections while another still writes
    dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
# the results are on disk: skip the interpreter's teardown, where gloo's threads sometimes abort
# the process ("terminate called without an active exception"; bench/multirank.py saw it too)
os._exit(0)
"""


def test_fsdp_two_processes_equal_one(tmp_path):
    """Two gloo processes under FSDP2, each with half the rollout, take the same updates as one
    plain process on all of it (gradients are averaged over ranks as over micro-batches), also
    after a rollout, which leaves the parameters sharded (train_common.back_to_training)."""
    import os
    import subprocess
    import sys
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT.format(repo=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (a fixed one fails when another job holds it)
    for cmd in ([sys.executable, str(script)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    plain, two = torch.load(tmp_path / "w0.pt"), torch.load(tmp_path / "w2.pt")
    for k in plain:  # float32 sums in another order: tolerance 1e-5
        torch.testing.assert_close(plain[k], two[k], rtol=1e-5, atol=1e-6)


def test_two_ranks_train_like_one_process_for_every_algorithm(tmp_path):
    """bench/multirank.py's first check at tiny sizes: for cj_grpo, just_grpo and diffu_grpo, two
    gloo ranks, each rolling out its half, end two steps where one plain process does (JustGRPO
    averages its per-rank group sums over ranks, so the plain process runs at half the lr)."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "multirank.json"
    p = subprocess.run([sys.executable, os.path.join(repo, "bench", "multirank.py"), "--tiny", "--parts", "same",
                        "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, f"multirank.py failed:\n{p.stdout}\n{p.stderr}"
    same = json.loads(out.read_text())["same"]
    assert set(same) == {f"{algo} fp32" for algo in ("cj_grpo", "just_grpo", "diffu_grpo")}
    for name, r in same.items():
        assert r["rollout_tokens_equal"] == 1.0 and r["update_rel_to_weights"] > 1e-3, name  # the step moved the weights
        assert r["update_rel_diff"] < 1e-5, name


def test_lora_benchmark_runs_both_steps(tmp_path):
    """bench/bench_lora.py --tiny: the 8B-shape LoRA benchmark's code path on the CPU, one CJ-GRPO
    and one JustGRPO step with FLOPs counted."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "bench_lora.json"
    p = subprocess.run([sys.executable, os.path.join(repo, "bench", "bench_lora.py"), "--tiny", "--out", str(out)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, f"bench_lora.py failed:\n{p.stdout}\n{p.stderr}"
    steps = json.loads(out.read_text())["steps"]
    assert [r["algo"] for r in steps] == ["cj_grpo", "just_grpo"]
    assert all(r["train_tflop"] > 0 and r["train_s"] > 0 for r in steps)
    assert steps[1]["trained_rows"] == 0.25 * 4 * 16  # top 25% of 4 sequences x L 16

# ---- LoRA (lora.py; train_rl.py --lora_rank) ----


def lora_model(seed=0, rank=4, targets="all", dropout=0.0):
    """A tiny model with adapters whose B is random, as after some training (B = 0 at the start)."""
    import lora
    model = lora.add_lora(tiny_model(seed), rank, 8.0, dropout, targets)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    return model


def test_lora_starts_at_the_base_and_its_merged_checkpoint_gives_its_logits(tmp_path):
    """B = 0: the base's logits bit for bit; after an update, train_common's checkpoint (W + s B A
    in LLaDA's layout) gives the adapted model's logits."""
    import lora
    from train_common import save_training_checkpoint
    base, x = tiny_model(), torch.randint(0, 256, (2, 12))
    model = lora.add_lora(tiny_model(), 4, 8.0, 0.05, lora.REFERENCE_TARGETS)
    assert torch.equal(model(x), base(x))  # eval mode: no dropout
    batch = fixed_rollout(model, "cj_grpo")
    cfg = rl_config(algo="cj_grpo", num_iterations=1, lora_rank=4, lora_alpha=8.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    RL.train_on_rollout(model.train(), None, opt, batch, cfg, world=1)
    model.eval()
    assert not torch.allclose(model(x), base(x), atol=1e-4)
    save_training_checkpoint(tmp_path, model, opt, 1, cfg, rank=0)
    assert len(torch.load(tmp_path / "latest" / "train_state.pt", weights_only=False)["lora"]) == 2 * 4 * 2
    # float32 sums in another order (W x + s B (A x) against (W + s B A) x): tolerance 1e-5
    torch.testing.assert_close(M.LLaDA.from_pretrained(tmp_path / "latest")(x), model(x), rtol=1e-5, atol=1e-5)
    merged, adapters = lora.merge_lora(lora_model().state_dict(), 8.0 / 4)  # all seven targets
    assert len(adapters) == 2 * 7 * 2 and set(merged) == set(base.state_dict())


def test_lora_adapters_off_is_the_base_model_and_the_kl_reference():
    """With the adapters off the model gives the frozen base's log-probs bit for bit, so CJ-GRPO's
    KL to `ref = model` (train_rl.main with --lora_rank) equals its KL to a separate base copy."""
    import lora
    base, model = tiny_model(), lora_model()
    batch = fixed_rollout(model, "cj_grpo")
    x = batch["x"]
    with lora.adapters_off(model):
        assert torch.equal(model(x, attention_mask=batch["attn"]), base(x, attention_mask=batch["attn"]))
    assert not torch.equal(model(x), base(x))  # and back on afterwards
    cfg = rl_config(algo="cj_grpo", beta=0.5)
    runs = []
    for ref in (model, base):
        model.zero_grad(set_to_none=True)
        stats = RL.cj_grpo_loss(model, ref, batch, cfg, 1)
        runs.append((stats, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert runs[0][0]["kl"] > 0 and runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("algo", ["cj_grpo", "just_grpo", "diffu_grpo"])
def test_lora_trains_only_the_adapters(algo):
    import lora
    model = lora.add_lora(tiny_model(), 4, 8.0, 0.05, lora.REFERENCE_TARGETS).train()
    batch = fixed_rollout(model, algo)
    cfg = rl_config(algo=algo, num_iterations=1, beta=0.0 if algo == "just_grpo" else 0.1, group_size=2)
    if algo == "diffu_grpo":
        RL.add_diffu_inputs(model, batch, cfg, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    RL.train_on_rollout(model, None if algo == "just_grpo" else model, opt, batch, cfg, world=1)
    adapters = {n for n in before if n.endswith(("lora_A", "lora_B"))}
    assert len(adapters) == 2 * 4 * 2  # q, k, v, up in each of 2 blocks
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == adapters
    assert {id(p) for p in opt.state} == {id(p) for n, p in model.named_parameters() if n in adapters}
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adapters)


def test_lora_resume_reaches_the_same_adapters_and_merged_weights(tmp_path):
    """KL to the adapters-off base and adapter dropout (its masks reseeded every step) included."""
    import os
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "llada-tiny")
    args = ["--init", str(init), *RL_SMALL, "--save_every", "1", "--lora_rank", "8", "--lora_alpha", "16",
            "--lora_dropout", "0.1", "--beta", "0.04", "--lr", "1e-2"]
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "a"), "--steps", "2"]))
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "1"]))
    RL.main(RL.config_from_args(RL.RLConfig, args + ["--out_dir", str(tmp_path / "b"), "--steps", "2", "--resume"]))
    a, b = (M.LLaDA.from_pretrained(tmp_path / d / "latest").state_dict() for d in "ab")
    start = M.LLaDA.from_pretrained(init).state_dict()
    assert {k for k in a if not torch.equal(a[k], start[k])} == {
        f"transformer.blocks.{i}.{n}.weight" for i in range(len(M.LLaDA.from_pretrained(init).transformer.blocks))
        for n in ("q_proj", "k_proj", "v_proj", "up_proj")}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = (torch.load(tmp_path / d / "latest" / "train_state.pt", weights_only=False) for d in "ab")
    assert set(sa["optimizer"]["state"]) == set(sa["lora"])  # Adam holds the adapters only
    assert all(torch.equal(sa["lora"][k], sb["lora"][k]) for k in sa["lora"])
    with pytest.raises(ValueError, match=r"the saved LoRA adapters \(48 tensors, rank 8\) do not match this run's \(48, rank 4\)"):
        RL.main(RL.config_from_args(RL.RLConfig, args[:-8] + ["--lora_rank", "4", "--out_dir", str(tmp_path / "b"),
                                                              "--steps", "3", "--resume"]))


LORA_FSDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
import test_all as T, train_rl as RL
from lora import add_lora
from train_common import load_training_state, prepare_model, save_training_checkpoint, setup_distributed
rank, world, device = setup_distributed("cpu")
tag = world if dist.is_initialized() else 0

def build():
    return prepare_model(add_lora(T.tiny_model(max_sequence_length=512), 4, 8.0, 0.0, "all"), world, device, keep_dtype=True)

model = T.tiny_model(max_sequence_length=512)
batch = T.fixed_rollout(model, "cj_grpo", n=4)
model = build()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
mine = {{k: (v[rank * 4 // world:(rank + 1) * 4 // world] if torch.is_tensor(v) and v.dim() else v) for k, v in batch.items()}}
cfg = T.rl_config(algo="cj_grpo", micro_batch=2, num_iterations=2, gen_length=8, group_size=2, beta=0.1, lora_rank=4, lora_alpha=8.0)
RL.train_on_rollout(model, model, opt, mine, cfg, world)
save_training_checkpoint({out!r} + f"/w{{tag}}", model, opt, 1, cfg, rank)
again = build()
opt2 = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=1e-2)
load_training_state(torch.load({out!r} + f"/w{{tag}}/latest/train_state.pt", weights_only=False), again, opt2)
for (n, p), q in zip(model.named_parameters(), again.parameters()):
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t
    assert torch.equal(full(p), full(q)), n
if dist.is_initialized():
    dist.barrier()  # no rank closes its connections while another still writes
    dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
# the results are on disk: skip the interpreter's teardown, where gloo's threads sometimes abort
# the process ("terminate called without an active exception"; bench/multirank.py saw it too)
os._exit(0)
"""


def test_lora_fsdp_two_processes_equal_one(tmp_path):
    """LoRA under FSDP2 (frozen base sharded with the adapters), KL to the adapters-off model:
    two gloo processes take the same updates as one, save the same merged checkpoint, and
    --resume's load_training_state puts the adapters back."""
    import os
    import subprocess
    import sys
    script = tmp_path / "fsdp_lora.py"
    script.write_text(LORA_FSDP_SCRIPT.format(repo=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a free port (a fixed one clashes when two test runs share the machine)
    for cmd in ([sys.executable, str(script)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    plain, two = (M.LLaDA.from_pretrained(tmp_path / d / "latest").state_dict() for d in ("w0", "w2"))
    base = tiny_model(max_sequence_length=512).state_dict()
    assert not torch.equal(plain["transformer.blocks.0.q_proj.weight"], base["transformer.blocks.0.q_proj.weight"])
    assert torch.equal(plain["transformer.ff_out.weight"], base["transformer.ff_out.weight"])
    for k in plain:  # float32 sums in another order: tolerance 1e-5
        torch.testing.assert_close(plain[k], two[k], rtol=1e-5, atol=1e-6)


# ---- a failing rank ----

FAILING_RANK_SCRIPT = r"""
import os, sys
sys.path.insert(0, {repo!r})
import test_all as T, train_rl as RL
from train_common import name_the_failed_rank
original, calls = RL.cj_grpo_loss, []
def failing(*args, **kw):  # rank 1 raises in the middle of step 1, after the step's first update
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1":
        raise RuntimeError("injected failure")
    return original(*args, **kw)
RL.cj_grpo_loss = failing
with name_the_failed_rank():
    RL.main(RL.config_from_args(RL.RLConfig, ["--init", {init!r}, *T.RL_SMALL, "--steps", "2", "--out_dir", {out!r}]))
"""


def test_a_rank_that_raises_mid_step_stops_the_other_with_its_name(tmp_path):
    """Two gloo processes started without torchrun (so nothing else tears the group down): rank 1
    raises inside the training phase; rank 0, waiting in a collective, exits on its own with one
    line naming rank 1, not after the collective timeout and not with a traceback from torch."""
    import os
    import socket
    import subprocess
    import sys
    repo = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK_SCRIPT.format(repo=repo, init=os.path.join(repo, "checkpoints", "llada-tiny"), out=str(tmp_path / "out")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "DIST_TIMEOUT": "600"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        (_, err0), (_, err1) = (p.communicate(timeout=120) for p in procs)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode != 0 and "RuntimeError: injected failure" in err1
    assert procs[0].returncode == 1
    assert "rank 0: stopping: rank 1 failed: RuntimeError: injected failure" in err0
    assert "Traceback" not in err0

# -----------------------------------------------------------------------------
# train_sft.py

import train_sft as SFT


def test_sft_loss_equals_naive_and_ignores_prompt():
    model = tiny_model()
    B, P, L = 3, 4, 6
    prompts, responses = torch.randint(0, 256, (B, P)), torch.randint(0, 256, (B, L))
    prompt_mask = torch.ones(B, P, dtype=torch.bool)
    prompt_mask[0, :2] = False
    t, masked = SFT.draw_masks(B, L, 1e-3, torch.Generator().manual_seed(3))
    assert masked.any() and not masked.all()
    loss = SFT.sft_loss(model, prompts, prompt_mask, responses, t, masked, model.config.mask_token_id)
    naive = 0.0
    for b in range(B):
        seq = torch.cat([prompts[b], torch.where(masked[b], model.config.mask_token_id, responses[b])])
        logits = model(seq[None], attention_mask=torch.cat([prompt_mask[b], torch.ones(L, dtype=torch.bool)])[None])[0].double()
        for i in range(L):
            if masked[b, i]:
                naive += -torch.log_softmax(logits[P + i], -1)[responses[b, i]] / t[b] / L / B
    assert abs(loss.item() - naive.item()) < 1e-5
    # the prompt's tokens never contribute: changing a prompt target cannot change the loss except
    # through the input; with every response slot unmasked the loss is exactly zero
    none = SFT.sft_loss(model, prompts, prompt_mask, responses, t, torch.zeros_like(masked), model.config.mask_token_id)
    assert none.item() == 0.0


def test_sft_steps_lower_the_loss_on_a_fixed_batch():
    model = tiny_model().train()
    prompts, responses = torch.randint(0, 256, (4, 4)), torch.randint(0, 256, (4, 6))
    pm = torch.ones(4, 4, dtype=torch.bool)
    t, masked = SFT.draw_masks(4, 6, 1e-3, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = SFT.sft_loss(model, prompts, pm, responses, t, masked, model.config.mask_token_id)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


SFT_SMALL = ["--tasks", "sudoku", "--n_train", "64", "--eval_n", "4", "--batch_size", "4", "--d_model", "32",
             "--n_layers", "1", "--n_heads", "2", "--mlp_hidden_size", "32", "--eval_every", "100", "--save_every", "2"]


def test_sft_resume_continues_with_the_same_step_and_weights(tmp_path):
    SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + ["--out_dir", str(tmp_path / "a"), "--max_steps", "4"]))
    SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + ["--out_dir", str(tmp_path / "b"), "--max_steps", "2"]))
    state = torch.load(tmp_path / "b" / "latest" / "train_state.pt", weights_only=False)
    assert state["step"] == 2
    SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + ["--out_dir", str(tmp_path / "b"), "--max_steps", "4", "--resume"]))
    a, b = (M.LLaDA.from_pretrained(tmp_path / d / "latest").state_dict() for d in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]



def test_sft_task_weights_set_each_tasks_share_of_the_batches(tmp_path, monkeypatch):
    seen, real = [], SFT.sft_loss

    def spy(model, prompts, *rest):
        seen.extend("Sudoku" in bytes(t for t in row.tolist() if t < 256).decode() for row in prompts)
        return real(model, prompts, *rest)

    monkeypatch.setattr(SFT, "sft_loss", spy)
    for weights, sudoku_share in (("0,1", 0.0), ("1,0", 1.0), ("3,1", 0.75)):
        seen.clear()
        SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + [
            "--out_dir", str(tmp_path / weights), "--tasks", "sudoku,countdown", "--task_weights", weights,
            "--max_steps", "25", "--save_every", "25", "--eval_every", "25", "--n_layers", "1"]))
        assert sum(seen) / len(seen) == pytest.approx(sudoku_share, abs=0.1)  # 100 rows drawn
    for bad in ("1", "1,x", "0,0"):
        with pytest.raises(ValueError, match="--task_weights"):
            SFT.check_config(SFT.config_from_args(SFT.SFTConfig, ["--tasks", "sudoku,countdown", "--task_weights", bad]))


def test_sft_cooldown_decays_the_logged_lr_linearly_to_zero(tmp_path):
    """--cooldown 0.5 of 8 steps: constant for steps 1-4, then 4/4, 3/4, 2/4, 1/4 of the peak."""
    SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + ["--out_dir", str(tmp_path), "--max_steps", "8",
                                                              "--warmup", "2", "--lr", "1e-3", "--cooldown", "0.5"]))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="--cooldown 1.0"):
        SFT.check_config(SFT.config_from_args(SFT.SFTConfig, ["--cooldown", "1.0"]))

# ---- held-out evaluation on the validation split ----

class Stop(Exception):
    """Raised by a patched training step: the run has built its data, which is all a test needs."""


def stop(*args, **kwargs):
    raise Stop


def test_trainers_hold_out_the_validation_split(tmp_path, monkeypatch):
    """Checkpoints are chosen on the in-run evaluation: it must never see the test split."""
    import os
    asked, split_for = [], T._split_for
    monkeypatch.setattr(T, "_split_for", lambda seed, split: asked.append(split_for(seed, split)) or asked[-1])
    monkeypatch.setattr(SFT, "sft_loss", stop)
    with pytest.raises(Stop):
        SFT.main(SFT.config_from_args(SFT.SFTConfig, SFT_SMALL + ["--out_dir", str(tmp_path / "s"), "--max_steps", "1"]))
    assert asked == ["train", "validation"]
    asked.clear()
    monkeypatch.setattr(RL, "train_on_rollout", stop)
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "llada-tiny")
    with pytest.raises(Stop):
        RL.main(RL.config_from_args(RL.RLConfig, ["--init", init, *RL_SMALL, "--out_dir", str(tmp_path / "r"), "--steps", "1"]))
    assert asked == ["train", "validation"]


# ---- robustness: run folders, checkpoints, flags, errors ----

import train_common as TC


def tiny_init(path):
    """A tiny model with the byte tokenizer saved as a checkpoint: trainer runs in a second."""
    model = tiny_model(max_sequence_length=256)
    model.source_dir = M.write_byte_tokenizer(path.parent / "tok")
    model.save_pretrained(path)
    return str(path)


def rl_args(tmp_path, *extra):
    init = tmp_path / "init"
    if not init.exists():
        tiny_init(init)
    return ["--init", str(init), "--task", "sudoku", "--n_train", "8", "--prompts_per_step", "2", "--group_size", "2",
            "--gen_length", "8", "--micro_batch", "4", "--eval_n", "2", "--eval_every", "100", "--num_iterations", "1",
            "--steps", "2", "--out_dir", str(tmp_path / "run"), *extra]


def rl_main(argv):
    RL.main(RL.config_from_args(RL.RLConfig, argv, defaults_by=("algo", RL.ALGO_DEFAULTS)))


def test_save_removes_orphans_and_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Temp folders of killed saves go before the next save writes; a full disk is one message."""
    model = tiny_model()
    path = tmp_path / "latest"
    M.save_checkpoint(path, model.state_dict(), model.config)
    for orphan in (".latest.tmp-999991", ".latest.old-999992"):  # kills inside earlier saves
        (tmp_path / orphan).mkdir()
        (tmp_path / orphan / "model.safetensors").write_bytes(b"x" * 1000)
    M.save_checkpoint(path, model.state_dict(), model.config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(M, "save_file", full)
    with pytest.raises(OSError, match=r"writing the checkpoint .*latest failed .*No space left.*MiB free.*"
                                      r"the previous checkpoint .*latest is intact"):
        M.save_checkpoint(path, {k: v + 1 for k, v in model.state_dict().items()}, model.config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    loaded = M.LLaDA.from_pretrained(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_resume_finds_the_checkpoint_of_a_save_killed_between_the_renames(tmp_path):
    """Killed after `latest` -> .latest.old-PID: the complete new copy (.latest.tmp-PID) is
    put in place, or the old one when the new copy is gone; the leftovers are removed."""
    old, new = tiny_model(seed=0), tiny_model(seed=1)
    M.save_checkpoint(tmp_path / "a" / ".latest.old-77", old.state_dict(), old.config)
    M.save_checkpoint(tmp_path / "a" / ".latest.tmp-77", new.state_dict(), new.config)
    M.recover_checkpoint(tmp_path / "a" / "latest")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["latest"]
    loaded = M.LLaDA.from_pretrained(tmp_path / "a" / "latest").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in new.state_dict().items())
    # through the trainer: a run killed between the renames of its step-2 save resumes from step 2
    RL.main(RL.config_from_args(RL.RLConfig, rl_args(tmp_path)))
    run = tmp_path / "run"
    (run / "latest").rename(run / ".latest.old-4242")
    rl_main(rl_args(tmp_path, "--steps", "3", "--resume"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".latest")) == []


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    """Both trainers refuse a folder holding a run; --resume into another run is refused; the closing lines."""
    rl_main(rl_args(tmp_path))
    out = capsys.readouterr().out
    assert "checkpoint: " + str(tmp_path / "run" / "latest") in out
    assert re.search(r"Held-out \(\d+ problems.*accuracy \d\.\d+ -> \d\.\d+, reward -?\d\.\d+ -> -?\d\.\d+", out)  # 18.15
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit, match="holds a run: give --resume to continue it, --overwrite to start over"):
        rl_main(rl_args(tmp_path))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with pytest.raises(SystemExit, match=r"the run in .*run has --algo 'cj_grpo'.* gives --algo 'just_grpo'"):
        rl_main(rl_args(tmp_path, "--algo", "just_grpo", "--steps", "3", "--resume"))
    with pytest.raises(SystemExit, match="already at step 2 of 2"):
        rl_main(rl_args(tmp_path, "--resume"))
    rl_main(rl_args(tmp_path, "--steps", "1", "--overwrite"))
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    sft = SFT_SMALL + ["--out_dir", str(tmp_path / "sft"), "--max_steps", "1", "--eval_n", "1"]
    SFT.main(SFT.config_from_args(SFT.SFTConfig, sft))
    with pytest.raises(SystemExit, match="holds a run: give --resume"):
        SFT.main(SFT.config_from_args(SFT.SFTConfig, sft))
    with pytest.raises(SystemExit, match=r"has --d_model 32.* gives --d_model 64"):
        SFT.main(SFT.config_from_args(SFT.SFTConfig, sft + ["--max_steps", "2", "--resume", "--d_model", "64"]))
    state = tmp_path / "sft" / "latest" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a truncated file
    with pytest.raises(SystemExit, match=re.escape(str(state))):
        SFT.main(SFT.config_from_args(SFT.SFTConfig, sft + ["--max_steps", "2", "--resume"]))


def test_a_second_run_into_a_locked_folder_stops_and_a_dead_holder_frees_it(tmp_path):
    """The lock is held for the run's lifetime; the kernel frees it when its holder dies."""
    import subprocess
    import sys
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('12345'); f.flush(); print('held', flush=True); "
                               "time.sleep(120)", str(tmp_path / "run" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=r"is in use by another run \(pid 12345\)"):
            rl_main(rl_args(tmp_path, "--steps", "1"))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    rl_main(rl_args(tmp_path, "--steps", "1"))
    assert (tmp_path / "run" / "latest" / "train_state.pt").is_file()


def test_training_that_cannot_recover_stops_and_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    """A run that cannot recover stops; the accuracy column: for just_grpo (reward +-1) acc = (reward + 1) / 2."""
    real = RL.train_on_rollout

    def nan_step(model, ref, optimizer, batch, cfg, world):
        batch["adv"] = batch["adv"] * float("nan")  # every gradient non-finite
        return real(model, ref, optimizer, batch, cfg, world)
    monkeypatch.setattr(RL, "train_on_rollout", nan_step)
    with pytest.raises(SystemExit, match=r"stopped at step 2: 2 steps in a row had non-finite gradients \(--max_skipped 2\)"):
        rl_main(rl_args(tmp_path, "--algo", "just_grpo", "--steps", "5", "--save_every", "1", "--max_skipped", "2"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]  # after step 0
    assert [r["skipped"] for r in rows] == [1, 1]
    assert all(r["acc"] == (r["reward_mean"] + 1) / 2 for r in rows)
    model = tiny_model().train()
    model.source_dir = None
    with torch.no_grad():
        model.transformer.blocks[1].ff_out.weight[0, 0] = float("inf")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(SystemExit, match=r"non-finite values \(transformer.blocks.1.ff_out.weight\); not saved"):
        TC.save_training_checkpoint(tmp_path / "nan", model, opt, 3, RL.RLConfig(), 0)
    assert not (tmp_path / "nan" / "latest").exists()


def test_metrics_log_is_strict_json_and_a_torn_last_line_is_dropped(tmp_path):
    """Null for non-finite values; resume drops a torn last line, names a bad middle one."""
    log = TC.MetricsLog(tmp_path, 0)
    log.write(step=1, loss=float("nan"), kl=float("inf"), reward_mean=0.5)
    log.write(step=2, loss=1.0)

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")
    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == dict(step=1, loss=None, kl=None, reward_mean=0.5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    TC.MetricsLog(tmp_path, 0, resumed_step=5)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / 'metrics.jsonl'}:2: not a metrics row")):
        TC.MetricsLog(tmp_path, 0, resumed_step=5)


def test_data_file_errors_name_the_file_and_row(tmp_path):
    """Each bad data file stops before training with one message naming it."""
    good = json.dumps(GSM_ROWS[0]) + "\n"
    long_row = json.dumps({"question": "x" * 300, "answer": "#### 1"}) + "\n"
    cases = [("empty.jsonl", b"", [], r"empty.jsonl: 0 rows, but --eval_n 1 held out \+ --prompts_per_step 2 .* need 3"),
             ("few.jsonl", (good * 2).encode(), [], "few.jsonl: 2 rows"),
             ("utf16.jsonl", good.encode("utf-16"), [], "utf16.jsonl: not UTF-8 text"),
             ("nul.jsonl", good.encode("utf-16-le"), [], "nul.jsonl: holds NUL bytes"),
             ("long.jsonl", (good * 2 + long_row + good).encode(), [],
              r"long.jsonl row 3: the prompt is \d+ tokens; with --gen_length 8 that exceeds the model's max_sequence_length 256"),
             ("ok.jsonl", (good * 4).encode(), ["--eval_n", "0"], "--eval_n 0: expected at least 1")]
    for name, data, extra, message in cases:
        (tmp_path / name).write_bytes(data)
        args = rl_args(tmp_path, "--task", "gsm8k", "--style", "compact", "--data", str(tmp_path / name), "--eval_n", "1",
                       "--out_dir", str(tmp_path / name.replace(".", "_")), *extra)
        with pytest.raises((SystemExit, ValueError), match=message):
            rl_main(args)
    with pytest.raises(SystemExit, match=r"sudoku training problem 0 \(generated\): the prompt is"):
        rl_main(rl_args(tmp_path, "--gen_length", "250", "--out_dir", str(tmp_path / "long_gen")))


def test_flags_are_checked_and_every_algorithm_runs_with_its_defaults(capsys):
    """Flag values are checked, and every algorithm runs with its own defaults (AdamW betas included)."""
    parse = lambda *argv: RL.config_from_args(RL.RLConfig, list(argv), defaults_by=("algo", RL.ALGO_DEFAULTS))
    with pytest.raises(SystemExit):
        parse("--eoser", "maybe")
    assert "argument --eoser: expected true or false (or 1/0, yes/no), got 'maybe'" in capsys.readouterr().err
    assert parse("--eoser", "false").eoser is False and parse("--eoser").eoser is True
    for argv, message in [(["--schedule", "bogus"], "--schedule 'bogus': expected ass or linear"),
                          (["--steps", "0"], "--steps 0: expected at least 1")]:
        with pytest.raises(ValueError, match=message):
            RL.check_config(parse(*argv))
    for algo in ("cj_grpo", "just_grpo", "diffu_grpo"):
        RL.check_config(parse("--algo", algo))
    just = parse("--algo", "just_grpo")
    assert (just.num_iterations, just.adam_beta1, just.adam_beta2, just.weight_decay, just.warmup, just.grad_clip,
            just.std_norm) == (1, 0.9, 0.999, 0.0, 0, 1.0, True)
    cj = parse("--algo", "cj_grpo")
    assert (cj.adam_beta2, cj.weight_decay, cj.grad_clip, cj.num_iterations, cj.warmup) == (0.99, 0.1, 0.2, 1, 0)
    assert parse("--algo", "diffu_grpo").num_iterations == 2  # the bundled model's job settings are cj_grpo's only
    assert parse("--algo", "just_grpo", "--adam_beta2", "0.98").adam_beta2 == 0.98  # a given flag wins
    assert TC.lr_at(0, 1e-4, just.warmup) == TC.lr_at(50, 1e-4, just.warmup) == 1e-4  # constant lr
    assert RL.reward_scale("just_grpo") != RL.reward_scale("cj_grpo")


@pytest.mark.parametrize("cls", [RL.RLConfig, SFT.SFTConfig])
def test_help_gives_every_flag_its_text_and_default(cls, capsys):
    """The field comments are the help texts (one source), each with its default."""
    from dataclasses import fields
    with pytest.raises(SystemExit):
        TC.config_from_args(cls, ["--help"])
    text = re.sub(r"(?<=\w-) ", "", re.sub(r"\s+", " ", capsys.readouterr().out))  # undo argparse's line wrapping
    helps = TC.field_help(cls)
    for f in fields(cls):
        assert helps.get(f.name), f"{f.name} has no comment"
        assert re.search(rf"--{f.name}\b[^-]*? {re.escape(' '.join(helps[f.name].split()[:3]))}", text), f.name
        assert f"(default: {f.default!r})" in text if isinstance(f.default, str) else f"(default: {f.default}" in text


def test_default_out_dir_is_per_algorithm_and_task(tmp_path, monkeypatch):
    """Runs of different algorithms or tasks never share the default folder."""
    monkeypatch.chdir(tmp_path)
    args = rl_args(tmp_path)[:-2] + ["--steps", "1"]  # no --out_dir
    rl_main(args + ["--algo", "diffu_grpo"])
    rl_main(args + ["--algo", "just_grpo"])
    assert sorted(p.name for p in (tmp_path / "out" / "rl").iterdir()) == ["diffu_grpo-sudoku", "just_grpo-sudoku"]
    assert all((tmp_path / "out" / "rl" / d / "latest" / "train_state.pt").is_file() for d in ("diffu_grpo-sudoku", "just_grpo-sudoku"))


def test_checkpoint_files_get_the_mode_of_a_normal_file(tmp_path):
    """Safetensors writes 0600; the checkpoint is as readable as config.json (0644 at umask 022)."""
    import os
    old = os.umask(0o022)
    try:
        model = tiny_model()
        M.save_checkpoint(tmp_path / "c", model.state_dict(), model.config)
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "c").iterdir()} == \
        {"model.safetensors": "0o644", "config.json": "0o644"}


def test_plot_metrics_writes_a_png(tmp_path):
    """The one-line plot command reads a strict metrics.jsonl (nulls included)."""
    import os
    import subprocess
    import sys
    pytest.importorskip("matplotlib")
    rows = [dict(step=1, reward_mean=0.1, acc=0.2, loss=None, kl=0.0), dict(step=2, reward_mean=0.3, acc=0.4, loss=0.5, kl=0.1,
                                                                          eval_acc=0.4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "plot_metrics.py")
    subprocess.run([sys.executable, script, str(tmp_path / "metrics.jsonl")], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rl_out_of_memory_is_one_clear_message(tmp_path, monkeypatch):
    import os

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(RL, "train_on_rollout", oom)
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "llada-tiny")
    with pytest.raises(SystemExit, match="out of memory at step 1 .*micro_batch 2.*try a smaller --micro_batch"):
        RL.main(RL.config_from_args(RL.RLConfig, ["--init", init, *RL_SMALL, "--out_dir", str(tmp_path), "--steps", "1"]))

# -----------------------------------------------------------------------------
# experiments/claims.py: its statistics, and the whole pipeline on tiny settings


def claims_module():
    import importlib.util
    import os
    import sys
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "claims.py")
    spec = importlib.util.spec_from_file_location("claims", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = mod  # inspect (the flags' help texts) finds a class's source through it
    spec.loader.exec_module(mod)
    return mod


def test_claims_statistics():
    C = claims_module()
    for n, c, k in [(64, 0, 1), (64, 3, 1), (64, 3, 8), (64, 60, 8), (10, 9, 5), (5, 5, 5)]:
        assert C.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # Wilson's interval for 81 of 263 (a textbook case): 0.2553 .. 0.3662
    lo, hi = C.wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-3) and hi == pytest.approx(0.3662, abs=1e-3)
    a, b = [1] * 60 + [0] * 40, [1] * 40 + [0] * 60
    mean, lo, hi = C.bootstrap_diff(a, b)
    assert mean == pytest.approx(0.2) and lo < 0.2 < hi and lo > 0
    mean, lo, hi = C.seed_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and hi - mean == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert [C.verdict(0.01, 0.1), C.verdict(-0.1, -0.01), C.verdict(-0.01, 0.1)] == ["holds", "does not hold", "inconclusive"]
    assert C.verdict(-0.02, 0.05, margin=-0.03) == "holds"
    assert C.combine(["holds", "holds", "inconclusive"]) == "holds"
    assert C.combine(["holds", "does not hold", "inconclusive"]) == "inconclusive"


def test_claims_verdict_must_survive_a_rerun_with_other_seeds(monkeypatch):
    """Six seeds: each half is judged again; a verdict either half does not repeat becomes inconclusive."""
    C = claims_module()
    runs = [dict(seed=s) for s in range(6)]
    by_half = {(0, 1, 2): dict(C4="holds", F5="holds"), (3, 4, 5): dict(C4="inconclusive", F5="holds")}

    def fake_rl_claims(runs, ev, c, claim):
        for cid, v in by_half[tuple(sorted(r["seed"] for r in runs))].items():
            claim(cid, "paper", "measure", "number", v, "detail")

    monkeypatch.setattr(C, "rl_claims", fake_rl_claims)
    claims = [dict(id="C4", verdict="holds"), dict(id="F5", verdict="holds"), dict(id="C1", verdict="holds")]
    C.rerun_check(runs, None, C.ClaimsConfig(), claims)
    assert [c["verdict"] for c in claims] == ["inconclusive", "holds", "holds"]
    assert claims[0]["all_seeds"] == "holds" and claims[0]["rerun"] == {"0,1,2": "holds", "3,4,5": "inconclusive"}
    assert "rerun" not in claims[2]  # an evaluation claim has no seeds
    few = [dict(id="C4", verdict="holds")]
    C.rerun_check(runs[:5], None, C.ClaimsConfig(), few)  # fewer than 2 x 3 seeds: no halves to judge
    assert few == [dict(id="C4", verdict="holds")]


def fake_eval(C, n=400, trap=0.0, semi_better=0.2):
    """Evaluation rows for every decoder of the grid on every task: the L/2-step linear decoder traps
    the share `trap` of its answers; semi-AR solves `semi_better` more problems than full diffusion."""
    rows, rng = [], np.random.default_rng(0)
    for task in ("sudoku", "countdown", "arithmetic"):
        for L in (128, 256):
            for family, label, kw in C.schedule_grid(L):
                p = 0.4 + (semi_better if family == "semi-AR block 32" else 0.0)
                trapped = (rng.random(n) < trap) if label == f"linear, {L // 2} steps" else np.zeros(n, bool)
                res = dict(correct=(rng.random(n) < p).astype(int).tolist(), trapped=trapped.astype(int).tolist(),
                           steps=[kw.get("steps", 4)] * n, seconds=1.0)
                rows.append(dict(task=task, L=L, family=family, schedule=label, **C.summary(res, L)))
    return dict(rows=rows)


def test_claims_c1_judges_the_trap_share_by_its_interval():
    """C1 holds only when the early-EOS share's interval is above 5% and semi-AR is better; a share
    whose interval straddles 5% leaves it inconclusive; a share clearly below 5% fails it."""
    C = claims_module()
    c = C.ClaimsConfig(competent=0.0)
    c1 = lambda trap, n: next(cl for cl in C.verdicts(fake_eval(C, n, trap), None, None, c) if cl["id"] == "C1")
    assert c1(0.30, 400)["verdict"] == "holds"
    lo, hi = C.wilson(10, 200)  # 5% of 200: the interval straddles 5%
    assert lo < 0.05 < hi
    rows = fake_eval(C, 200, 0.0)
    for r in rows["rows"]:
        if r["schedule"] == "linear, 128 steps":
            r["eos_trap"], r["trap_ci"] = 0.05, (lo, hi)
    assert next(cl for cl in C.verdicts(rows, None, None, c) if cl["id"] == "C1")["verdict"] == "inconclusive"
    assert c1(0.0, 400)["verdict"] == "does not hold"


def test_claims_f4_compares_before_and_after_on_the_same_problems():
    """An RL run is scored on the first rl_n_test of the n_test evaluation problems: F4's "before" is
    the SFT model on those same problems. And F5 cannot hold for a run that is slower."""
    C = claims_module()
    for name in ("sudoku", "countdown", "arithmetic"):  # the draws F4 relies on: a shorter list is a prefix
        assert T.get_task(name).generate(5, seed=1) == T.get_task(name).generate(12, seed=1)[:5]
    c = C.ClaimsConfig(competent=0.0, rl_n_test=200)
    ev = fake_eval(C, 400)
    for r in ev["rows"]:  # the SFT model: right on the first 200 problems, wrong on the rest
        if r["task"] == "sudoku" and r["L"] == 128 and r["family"] in ("threshold", "entropy bound"):
            r["correct"], r["accuracy"] = "1" * 200 + "0" * 200, 0.5
    after = dict(n=200, accuracy=1.0, tokens_per_step=30.0, correct="1" * 200)  # unchanged on its 200
    scores = {label: after for _, label, _ in C.PARALLEL}
    scores["own"] = dict(after)
    just, top = "just_grpo, AR rollout", "just_grpo, top 25% entropy"
    runs = [dict(task="sudoku", arm=arm, seed=s, minutes=minutes, scores=scores)
            for s in range(3) for arm, minutes in ((just, 1.0), (top, 2.0))]
    got = {}
    C.rl_claims(runs, ev, c, lambda cid, paper, measure, number, v, detail: got.__setitem__(cid, (number, v)))
    assert "sudoku threshold 0.9: 32.0 -> 30.0 tokens/step, +0.0 [+0.0, +0.0]" in got["F4"][0]
    assert got["F4"][1] == "not measured"  # arithmetic has no JustGRPO run; sudoku alone: gain 0, inconclusive
    assert got["F5"][1] == "not measured"
    c.competent = 0.99  # only sudoku is judged (the fake arithmetic never reaches 99%)
    for r in ev["rows"]:
        if r["task"] == "sudoku":
            r["accuracy"] = 1.0
    C.rl_claims(runs, ev, c, lambda cid, paper, measure, number, v, detail: got.__setitem__(cid, (number, v)))
    assert got["F4"][1] == "inconclusive"  # a zero gain on the same problems, not +50 points
    assert got["F5"][1] == "does not hold"  # as accurate, but slower: the claim is "as well and faster"


def test_claims_f2_interval_is_over_problems():
    """Samples of one problem are not independent: F2's interval resamples problems, each problem the
    mean of its samples' decode-time entropies."""
    C = claims_module()
    c = C.ClaimsConfig(passk_samples=4)
    rng = np.random.default_rng(0)
    ar, full = rng.random(40), rng.random(40)  # per problem; its 4 samples all alike
    pk = {name: dict(ks=[1, 4], pass_at_k=[0.1, 0.2], per_problem=[[0.1] * 10, [0.2] * 10],
                     entropy=np.repeat(v, 4).tolist(), mean_entropy=float(v.mean()),
                     classes={"digit": dict(share=1.0, commit_step=0.5, entropy=0.1)})
          for name, v in (("AR order", ar), ("full diffusion (low confidence)", full))}
    f2 = next(cl for cl in C.verdicts(fake_eval(C, 100), pk, None, c) if cl["id"] == "F2")
    assert f2["number"].startswith(C.fmt_ci(*C.bootstrap_diff(ar, full), pct=False))


def test_claims_rl_stage_trains_only_on_tasks_the_model_can_do(tmp_path, monkeypatch):
    """Below --competent every group has one reward: the rl stage starts no run for that task."""
    C = claims_module()
    rows = [dict(task="sudoku", L=128, accuracy=0.5), dict(task="arithmetic", L=128, accuracy=0.05)]
    (tmp_path / "eval.json").write_text(json.dumps(dict(rows=rows)))
    started = []

    class FakeRun:
        def __init__(self, argv, **kw):
            spec = json.loads(next(a for a in argv if a.startswith("--rl_job="))[len("--rl_job="):])
            started.append(spec["task"])
            out = tmp_path / "rl" / spec["out_dir"].rsplit("/", 1)[1]
            out.mkdir()
            (out / "result.json").write_text(json.dumps(spec))

        def poll(self):
            return 0
        returncode = 0

    monkeypatch.setattr(C.subprocess, "Popen", FakeRun)
    c = C.ClaimsConfig(work_dir=str(tmp_path), seeds="0,1")
    out = C.stage_rl(c, torch.device("cpu"))
    assert set(started) == {"sudoku"} and len(started) == 2 * len(C.RL_TASKS["sudoku"])
    assert len(out["runs"]) == len(started)
    (tmp_path / "eval.json").unlink()
    with pytest.raises(SystemExit, match="eval.json is missing"):
        C.stage_rl(c, torch.device("cpu"))


def test_claims_schedule_grid_is_valid():
    """Every decoder of the grid runs under generate()'s own checks (whole steps per semi-AR block)."""
    C = claims_module()
    model = tiny_model(max_sequence_length=300)
    prompt = torch.randint(0, 200, (2, 5))
    for L in (128, 256):
        labels = [label for _, label, _ in C.schedule_grid(L)]
        assert len(labels) == len(set(labels))
        for _, label, kw in C.schedule_grid(L):
            x, traj = generate(model, prompt, gen_length=L, return_trajectory=True, **kw)
            assert (x[:, 5:] != model.config.mask_token_id).all(), label
            if "steps" in kw:
                assert traj.num_steps == kw["steps"], label


def test_claims_quick_pipeline(tmp_path):
    """The whole pipeline, tiny: a testbed is trained, every stage runs, and the report holds every
    claim with a verdict; its numbers agree with the per-problem records they come from."""
    C = claims_module()
    C.main(["--quick", f"--work_dir={tmp_path}"])
    report = json.loads((tmp_path / "results" / "claims.json").read_text())
    assert [c["id"] for c in report["claims"]] == ["C1", "C2", "C3", "F1", "F2", "C4", "C5", "F3", "F4", "F5"]
    verdicts = [c["verdict"] for c in report["claims"]]
    assert all(v in ("holds", "does not hold", "inconclusive", "not measured") for v in verdicts[:5])
    assert verdicts[5:] == ["not measured (1 of 3 seeds)"] * 5  # --quick: one seed
    for row in report["stages"]["eval"]["rows"]:
        assert row["accuracy"] == pytest.approx(row["correct"].count("1") / row["n"])
        assert row["ci"][0] <= row["accuracy"] <= row["ci"][1]
    for order in report["stages"]["passk"].values():
        assert order["pass_at_k"] == sorted(order["pass_at_k"])  # pass@k never falls as k grows
    assert "| C1 |" in (tmp_path / "results" / "claims.md").read_text()
