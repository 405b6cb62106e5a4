"""
LLaDA, written out by hand: a LLaMA-shaped transformer with no causal mask, its checkpoint
format (LLaDA's own config.json + safetensors names), and its tokenizer through tiktoken.

    model = LLaDA.from_pretrained("path/to/LLaDA-8B-Instruct", device="cuda", dtype=torch.bfloat16)
    tok = load_tokenizer("path/to/LLaDA-8B-Instruct")
    logits = model(torch.tensor([tok.chat_prompt("What is 2+2?")], device="cuda"))

Reads top to bottom: config, RMSNorm and RoPE, the block, the model, loading and saving,
the tokenizer. Definitions follow DEFINITIONS.md section 1. Simplifications: no KV cache (every step
of masked diffusion changes tokens everywhere, so there is nothing exact to cache), no dropout.
"""
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# config

# config.json, key by key (LLaDA-8B's file has 45 keys):
# - read: the LLaDAConfig fields below. Each must be present with a value of the right type and
#   range, except n_kv_heads and embedding_size (null or absent: n_heads and vocab_size, as in
#   LLaDA's configuration_llada.py).
# - checked: REQUIRED_CONFIG_VALUES and the dropouts. Their value changes the computation and this
#   model implements one: any other value is refused (running another architecture as ours would
#   give garbage); an absent key is taken to have our value. Nonzero dropout is refused only
#   when training (we have no dropout; evaluation is the same with or without it).
# - only kept: everything else (model_type, auto_map, init_*, precision, use_cache, ...), written
#   back on save. A model built from scratch writes LLADA_CONFIG_KEYS too, so that Hugging Face
#   loads its checkpoint with LLaDA's modeling_llada.py and computes what we compute.
REQUIRED_CONFIG_VALUES = {  # a tuple lists every accepted value, the first is the one we write
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": (False, None),  # null: = include_bias
    "weight_tying": False, "alibi": False, "rope": True, "rope_full_precision": True, "scale_logits": False,
    "attention_layer_norm": False, "input_emb_norm": False, "clip_qkv": None, "multi_query_attention": (None, False),
}
DROPOUT_KEYS = ("attention_dropout", "residual_dropout", "embedding_dropout")
# LLaDA-8B's values of the keys we only keep (its config.json, less "transformers_version", which
# names the library that wrote the file). Hugging Face needs model_type and auto_map to find the
# remote code; mlp_ratio is unused while mlp_hidden_size is set.
LLADA_CONFIG_KEYS = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"],
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "alibi_bias_max": 8.0, "attention_layer_norm_with_affine": True, "block_group_size": 1, "flash_attention": False,
    "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "mlp_ratio": 4,
    "precision": "amp_bf16", "use_cache": False, **{k: 0.0 for k in DROPOUT_KEYS},
}
OPTIONAL_KEYS = ("n_kv_heads", "embedding_size")  # null or absent: n_heads, vocab_size
TOKEN_ID_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id")


@dataclass
class LLaDAConfig:
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32              # < n_heads means grouped-query attention
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464          # ids the tokenizer can produce
    embedding_size: int = 126464      # rows of wte / ff_out (>= vocab_size; extra rows unused)
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    extra: dict = field(default_factory=dict)  # every other config.json key, written back on save

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @classmethod
    def from_json(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config.json not found (expected a LLaDA checkpoint directory)")
        raw = read_json(path)
        for key, want in REQUIRED_CONFIG_VALUES.items():
            accepted = want if isinstance(want, tuple) else (want,)
            if key in raw and raw[key] not in accepted:
                raise ValueError(f"{path}: key '{key}' is {json.dumps(raw[key])}; this model implements only "
                                 f"{' or '.join(json.dumps(a) for a in accepted)}")
        for key in DROPOUT_KEYS:
            v = raw.get(key, 0.0)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
                raise ValueError(f"{path}: key '{key}' is {json.dumps(v)}, expected a number in [0, 1)")
        names = [f.name for f in fields(cls) if f.name != "extra"]
        missing = [k for k in names if raw.get(k) is None and k not in OPTIONAL_KEYS]
        if missing:
            raise ValueError(f"{path}: missing required keys {missing}")
        for key in names:
            v = raw.get(key)
            if v is None:
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if key in ("rope_theta", "rms_norm_eps"):
                if not (number and math.isfinite(v) and v > 0):
                    raise ValueError(f"{path}: key '{key}' is {json.dumps(v)}, expected a positive number")
            elif not (number and isinstance(v, int) and (v >= 0 if key in TOKEN_ID_KEYS else v > 0)):
                raise ValueError(f"{path}: key '{key}' is {json.dumps(v)}, expected a "
                                 f"{'non-negative' if key in TOKEN_ID_KEYS else 'positive'} integer")
        kwargs = {k: raw[k] for k in names if raw.get(k) is not None}
        kwargs.setdefault("n_kv_heads", kwargs["n_heads"])
        kwargs.setdefault("embedding_size", kwargs["vocab_size"])
        cfg = cls(**kwargs, extra={k: v for k, v in raw.items() if k not in names})
        if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
            raise ValueError(f"{path}: d_model {cfg.d_model} must divide by n_heads {cfg.n_heads} into an even "
                             f"head dim (RoPE rotates pairs), and n_heads by n_kv_heads {cfg.n_kv_heads}")
        if cfg.embedding_size < cfg.vocab_size:
            raise ValueError(f"{path}: embedding_size {cfg.embedding_size} < vocab_size {cfg.vocab_size}")
        for key in TOKEN_ID_KEYS:
            if getattr(cfg, key) >= cfg.vocab_size:
                raise ValueError(f"{path}: key '{key}' is {getattr(cfg, key)}, expected an id below vocab_size {cfg.vocab_size}")
        return cfg

    def to_json_dict(self):
        """LLaDA's full key set: the keys this config was loaded with, the ones it lacks at
        LLaDA-8B's values (LLADA_CONFIG_KEYS, REQUIRED_CONFIG_VALUES), and the fields."""
        implemented = {k: v[0] if isinstance(v, tuple) else v for k, v in REQUIRED_CONFIG_VALUES.items()}
        out = {**LLADA_CONFIG_KEYS, **implemented, **self.extra}
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        return dict(sorted(out.items()))  # key order as LLaDA's file


def read_json(path):
    """A JSON object from a file, or one error naming the file (binary, invalid JSON, not an object)."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (a binary file?), expected JSON") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found a {type(value).__name__}")
    return value

# -----------------------------------------------------------------------------
# the network


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), computed in float32, cast back, then scaled (LLaDA's order)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # keep x's dtype: a float32 weight under autocast would promote the output, and each of the
        # matmuls reading it would cast it back again
        return (self.weight * xf.to(x.dtype)).to(x.dtype)


def rope_cos_sin(positions, head_dim, theta):
    """Rotate-half (NeoX) RoPE over the full head dim, angles in float32. positions: (B, T)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq          # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)[:, :, None]  # (B, T, 1, hd): broadcasts over heads
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # LLaDA's rope_full_precision: rotate in float32, then cast back
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm LLaMA block; parameter names mirror LLaDA's checkpoint."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)   # gate: silu applies to it
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)    # down projection

    def forward(self, x, cos, sin, attn_mask):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim)
        # RoPE before the head transpose, while q and k are contiguous (vectorised elementwise kernels)
        q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)  # (B, H, T, hd)
        v = v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDA(nn.Module):

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.embedding_size, cfg.d_model),
            blocks=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            ff_out=nn.Linear(cfg.d_model, cfg.embedding_size, bias=False),  # untied output head
        ))
        self.activation_checkpointing = False
        self.nonzero_dropout = {k: cfg.extra[k] for k in DROPOUT_KEYS if cfg.extra.get(k)}
        self.source_dir = None  # checkpoint directory whose tokenizer files save_pretrained copies
        for name, p in self.named_parameters():
            if p.dim() == 2:  # random init for from-scratch training; from_pretrained overwrites it
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("attn_out.weight", "ff_out.weight")) and "blocks" in name else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, input_ids, attention_mask=None, logits_slice=None):
        """
        input_ids (B, T); attention_mask (B, T), 1 = real token, 0 = left padding (keys that no
        query may see; RoPE positions start at each row's first real token, so a padded row gives
        the logits it gives alone). logits_slice: None (all positions), a slice of positions, or a
        (B, K) LongTensor of positions per row: the LM head over ~126k ids is the largest matmul,
        and decoding and RL never need the prompt's logits. Returns (B, T or K, embedding_size).
        """
        B, T = input_ids.shape
        if self.nonzero_dropout and self.training and torch.is_grad_enabled():
            raise ValueError(f"config.json sets {self.nonzero_dropout}: this model has no dropout, so it cannot train "
                             f"as that config says (set the keys to 0.0 to train without dropout)")
        if attention_mask is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
            attn_mask = None  # lets SDPA pick its flash kernel
        else:
            real = attention_mask.bool()
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)
            attn_mask = real[:, None, None, :]  # (B, 1, 1, T): mask keys only
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        x = self.transformer.wte(input_ids)
        if torch.is_autocast_enabled(x.device.type):  # bf16 residual stream, as under FSDP's bf16 parameters
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for block in self.transformer.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, attn_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, attn_mask)
        if isinstance(logits_slice, slice):
            x = x[:, logits_slice]
        elif logits_slice is not None:
            x = x.gather(1, logits_slice[..., None].expand(-1, -1, x.size(-1)))
        return self.transformer.ff_out(self.transformer.ln_f(x))

    def compile_blocks(self):
        """torch.compile each block (fuses RMSNorm, RoPE and SwiGLU; all blocks share one graph)."""
        for block in self.transformer.blocks:
            block.compile(dynamic=False)

    # -------------------------------------------------------------------------
    # checkpoints in LLaDA's layout: the one name remap is the "model." prefix

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32):
        """Build on the meta device, allocate once on `device`, copy tensor by tensor into place:
        never two copies of the weights in memory."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: checkpoint directory not found")
        cfg = LLaDAConfig.from_json(path / "config.json")
        weight_map = _read_weight_map(path)
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to(dtype).to_empty(device=device)
        params = {CKPT_PREFIX + name: p for name, p in model.named_parameters()}
        loaded = set()
        with torch.no_grad():
            for shard in sorted(set(weight_map.values())):
                shard_path = path / shard
                if not shard_path.is_file():
                    raise FileNotFoundError(f"{shard_path}: shard named in the index is missing")
                with open_safetensors(shard_path) as f:
                    names = set(f.keys())
                    for name in [n for n, s in weight_map.items() if s == shard]:
                        if name not in names:
                            raise ValueError(f"{shard_path}: tensor '{name}' listed in the index is not in the file")
                        if name not in params:
                            raise ValueError(f"{shard_path}: unexpected tensor '{name}' for this config")
                        t = f.get_tensor(name)
                        if tuple(t.shape) != tuple(params[name].shape):
                            raise ValueError(f"{shard_path}: tensor '{name}' has shape {tuple(t.shape)}, "
                                             f"expected {tuple(params[name].shape)}")
                        if t.dtype not in WEIGHT_DTYPES:  # an int or float8 tensor is not a weight we could use as is
                            raise ValueError(f"{shard_path}: tensor '{name}' has dtype {t.dtype}, expected one of "
                                             f"{', '.join(str(d) for d in WEIGHT_DTYPES)}")
                        params[name].copy_(t)
                        if not bool(params[name].isfinite().all()):  # also catches overflow in the cast to `dtype`
                            raise ValueError(f"{shard_path}: tensor '{name}' has NaN or inf values "
                                             f"(in the file, or after the cast to {dtype})")
                        loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
        model.source_dir = path
        return model

    def save_pretrained(self, path, dtype=None, max_shard_bytes=5 * 2**30):
        state = {name: p.detach() for name, p in self.named_parameters()}
        save_checkpoint(path, state, self.config, self.source_dir, dtype, max_shard_bytes)


CKPT_PREFIX = "model."  # LLaDA's HF wrapper keeps the transformer under .model
INDEX_NAME = "model.safetensors.index.json"
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# files a save writes itself; everything else of the source directory (tokenizer, modeling_llada.py, ...) is copied
WEIGHT_OR_STATE_FILE = re.compile(r"config\.json|train_state\.pt|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin")


def open_safetensors(file):
    """safe_open, with the file named when it is not a readable safetensors file (truncated, another format)."""
    try:
        return safe_open(file, framework="pt", device="cpu")
    except SafetensorError as e:
        raise ValueError(f"{file}: not a valid safetensors file ({e})") from None


def _read_weight_map(path):
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object (tensor name -> file)")
        return weight_map
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: neither {INDEX_NAME} nor model.safetensors found")
    with open_safetensors(single) as f:
        return {name: single.name for name in f.keys()}


def save_checkpoint(path, state, cfg, files_from=None, dtype=None, max_shard_bytes=5 * 2**30, train_state=None):
    """Write config.json, safetensors shards (+ index when more than one), the tokenizer and
    other files of `files_from`, and train_state.pt if given, into a temporary directory, then
    rename it into place, so a crash never leaves a half-written checkpoint that looks complete.
    `state` uses our parameter names (no "model." prefix); tensors reach the CPU shard by shard.
    A failed write (a full disk) removes the temporary directory and says so in one message."""
    path = Path(path)
    recover_checkpoint(path)  # leftovers of a killed save would hold the disk space this one needs
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        shards, current, size = [], [], 0
        for name, t in state.items():
            nbytes = t.numel() * (t.element_size() if dtype is None else torch.empty((), dtype=dtype).element_size())
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        shards.append(current)
        weight_map, total = {}, 0
        for i, names in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {CKPT_PREFIX + n: state[n].to(dtype or state[n].dtype).contiguous().cpu() for n in names}
            save_file(tensors, tmp / fname, metadata={"format": "pt"})
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp / fname, 0o666 & ~umask)  # safetensors writes 0600; others may need to read a checkpoint
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map.update({k: fname for k in tensors})
            del tensors
        if len(shards) > 1:
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2))
        if files_from is not None:
            for f in Path(files_from).iterdir():
                if f.is_file() and not WEIGHT_OR_STATE_FILE.fullmatch(f.name) and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was written"
        raise OSError(f"writing the checkpoint {path} failed ({type(e).__name__}: {e}; {free:.0f} MiB free on "
                      f"that disk): {kept}") from None
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)  # a kill before this line leaves old and tmp, both complete: recover_checkpoint
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(path):
    """Finish or undo a save_checkpoint that a kill interrupted, then drop its leftovers. With
    `path` missing and `.path.old-PID` present, the kill came between the two renames: that save's
    `.path.tmp-PID` is complete and newer, so it goes into place (else the old copy does). With
    `path` present every temporary or old copy is stale."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and olds:
        tmp = path.with_name(f".{path.name}.tmp-{olds[-1].name.rsplit('-', 1)[1]}")
        (tmp if tmp.is_dir() else olds[-1]).rename(path)
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)

# -----------------------------------------------------------------------------
# tokenizer: tokenizer.json (Hugging Face byte-level BPE) -> tiktoken, offline


def bytes_to_unicode():
    """GPT-2's byte <-> printable-character table that byte-level BPE vocab strings are written in:
    printable bytes map to themselves, the other 68 to code points from 256 upward."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHAT_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


class Tokenizer:
    """tiktoken Encoding + LLaDA's special ids and chat template."""

    def __init__(self, encoding, special_ids, bos_token="<|startoftext|>", eos_token="<|endoftext|>"):
        self.encoding = encoding
        self.special_ids = special_ids            # content -> id, for every added token marked special
        missing = [t for t in CHAT_TOKENS if t not in encoding._special_tokens]
        if missing:
            raise ValueError(f"tokenizer lacks LLaDA's chat/mask tokens {missing}")
        self.bos_id = encoding._special_tokens[bos_token]
        self.eos_id = encoding._special_tokens[eos_token]
        self.mask_id = encoding._special_tokens["<|mdm_mask|>"]
        self.eot_id = encoding._special_tokens["<|eot_id|>"]
        self.n_vocab = encoding.n_vocab

    def encode(self, text):
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids, skip_special=False):
        skip = set(self.special_ids.values()) if skip_special else set()
        ids = [i for i in (ids.tolist() if torch.is_tensor(ids) else ids) if i < self.n_vocab and i not in skip]
        return self.encoding.decode(ids, errors="replace")

    def chat_prompt(self, user_text):
        """LLaDA's chat template for one user turn with the generation prompt, as token ids."""
        text = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n" + user_text.strip() +
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        return self.encode(text)


def _fail(path, what):
    raise ValueError(f"{path}: {what}")


def load_tokenizer(path):
    """Build a tiktoken Encoding from a directory's tokenizer.json (+ tokenizer_config.json).
    Supports byte-level BPE only; anything else fails with the key that is not supported."""
    import tiktoken
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: tokenizer.json not found")
    spec = read_json(file)
    model = spec.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{file}: not a Hugging Face tokenizer.json (no 'model' object)")
    if model.get("type") != "BPE":
        _fail(file, f"model.type is {model.get('type')!r}, only 'BPE' is supported")
    if spec.get("normalizer") is not None:
        _fail(file, "a normalizer is set; only byte-level BPE without normalizer is supported")
    pattern = _pretokenizer_pattern(file, spec.get("pre_tokenizer"))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(s):
        try:
            return bytes(byte_of[c] for c in s)
        except KeyError:
            _fail(file, f"vocab string {s!r} is not byte-level encoded")

    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    added_ids = set(added.values())
    ranks = {to_bytes(s): i for s, i in model["vocab"].items() if i not in added_ids}
    if len(ranks) != len({i for s, i in model["vocab"].items() if i not in added_ids}):
        _fail(file, "two vocab strings share one id")
    if any(bytes([b]) not in ranks for b in range(256)):
        _fail(file, "vocab lacks some of the 256 single-byte tokens that byte-level BPE needs")
    # tiktoken merges by the rank (= id) of the merged token; HF by position in the merge list.
    # They agree when the merge list is in id order and every multi-byte token is a merge result.
    merged_ids = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        token = to_bytes(a) + to_bytes(b)
        if token not in ranks:
            _fail(file, f"merge {a!r} + {b!r} gives a string that is not in the vocab")
        merged_ids.append(ranks[token])
    if any(x >= y for x, y in zip(merged_ids, merged_ids[1:])):
        _fail(file, "the merge list is not in token-id order, so tiktoken's rank-ordered merging would differ")
    if len(merged_ids) != len(ranks) - 256:
        _fail(file, "some multi-byte vocab tokens are not the result of any merge")
    encoding = tiktoken.Encoding(name=path.name or "llada", pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
    config = path / "tokenizer_config.json"
    cfg = read_json(config) if path.is_dir() and config.is_file() else {}
    token = lambda v, default: (v.get("content") if isinstance(v, dict) else v) or default
    return Tokenizer(encoding, special, token(cfg.get("bos_token"), "<|startoftext|>"),
                     token(cfg.get("eos_token"), "<|endoftext|>"))


def _pretokenizer_pattern(file, pre):
    """The regex that splits text before BPE: a Split(Regex, Isolated) followed by
    ByteLevel(use_regex=false), or ByteLevel(use_regex=true), which means GPT-2's pattern."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    pattern = None
    for step in steps:
        kind = (step or {}).get("type")
        if kind == "Split":
            if step.get("behavior") != "Isolated" or step.get("invert"):
                _fail(file, f"Split pre-tokenizer with behavior {step.get('behavior')!r} is not supported (expected 'Isolated')")
            pat = step["pattern"]
            pattern = pat["Regex"] if "Regex" in pat else re.escape(pat["String"])
        elif kind == "ByteLevel":
            if step.get("add_prefix_space"):
                _fail(file, "ByteLevel add_prefix_space=true is not supported")
            if step.get("use_regex", True):
                pattern = GPT2_PATTERN
        else:
            _fail(file, f"pre_tokenizer type {kind!r} is not supported (expected ByteLevel or Split)")
    if pattern is None:
        _fail(file, "no pre-tokenizer pattern found")
    return pattern


def write_byte_tokenizer(path):
    """The small models' tokenizer: the 256 bytes plus LLaDA's special-token names, written as
    tokenizer.json + tokenizer_config.json so it loads exactly like LLaDA's."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    added = [{"id": 256 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(CHAT_TOKENS)]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": []}}
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": False, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=1))
    return path


def byte_tokenizer_config(**overrides):
    """A LLaDAConfig sized for the byte tokenizer (ids 0-261; embedding rows padded to 264)."""
    ids = {t: 256 + i for i, t in enumerate(CHAT_TOKENS)}
    base = dict(vocab_size=262, embedding_size=264, mask_token_id=ids["<|mdm_mask|>"],
                eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    return LLaDAConfig(**{**base, **overrides})


def byte_tokenizer():
    """The byte-level tokenizer, loaded through the same files as any other."""
    import tempfile
    return load_tokenizer(write_byte_tokenizer(tempfile.mkdtemp(prefix="byte-tokenizer-")))
