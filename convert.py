"""Convert between smallcoder checkpoint directories and Hugging Face LlamaForCausalLM directories.

    python convert.py --ckpt DIR --out HF_DIR [--dtype auto|float32|bfloat16]   # ours -> Hugging Face
    python convert.py --from-hf HF_DIR_OR_HUB_ID --out DIR                     # Hugging Face -> ours

A smallcoder checkpoint is config.json (model.Config) + model.safetensors (fp32, layer weights stacked on a
leading L axis) + tokenizer.json. The Hugging Face side is what `LlamaForCausalLM.save_pretrained` writes:
one [out, in] matrix per layer and projection. Our RoPE already uses Hugging Face's split-half layout, so
q/k need no permutation: every weight is a reshape plus a transpose, which is why both directions are
bitwise. What our model cannot represent (tied embeddings, biases, rope scaling, other activations,
head_dim != d_model / n_heads, ...) is refused with one line naming the field, before anything is written.
Outputs are built in a temporary directory next to --out and renamed into place, so a failure leaves
nothing behind, and an existing non-empty --out is never overwritten.

The export is complete for clients that are not ours: the card's chat format as a chat template, EOS as pad,
no BOS (as trained), EOS in generation_config.json, a model card (README.md: config, the training stages found
next to --ckpt, usage). An import keeps the checkpoint's chat template (chat_template.jinja in our directory).

As a library: `from_hf(path_or_id) -> (params, config, tokenizer)`, `read_chat_template(dir)` and
`to_hf(params, config, tokenizer, out_dir, dtype, chat_template=CHAT_TEMPLATE, ckpt=None)`.
"""
import argparse
import dataclasses
import glob
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import data
import model

HF_INDEX_FILE = "model.safetensors.index.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own name for it; in our directories, an import's template

# The card's chat format (sample.CHAT_FORMAT; data.py's SFT rows are "User: {prompt}\nAssistant:" + " " + response
# + EOS) as Jinja for transformers' apply_chat_template, lm-eval's --apply_chat_template and llama.cpp's --jinja.
# Turns are concatenated, "User: a\nAssistant: b<|endoftext|>User: c\nAssistant:" (packed SFT rows follow an EOS
# too); no BOS, as trained. Assistant text is trimmed (replies begin with the space the format puts after
# "Assistant:"). A system message, never seen in training, becomes a first line of plain text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Assistant: ' + message['content'] | trim + eos_token }}"
    "{%- else -%}{{ raise_exception('only system, user and assistant roles are supported') }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}")

# LlamaConfig's defaults, used when a config.json omits a field (save_pretrained writes them all, hand-written
# configs may not). head_dim and num_key_value_heads default to values derived from the others.
HF_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
}


class ConvertError(ValueError):
    """A checkpoint this converter cannot (or will not) convert; the message is one line for the user."""


# ----------------------------------------------------------------------------- weight names and layouts

def _layer_table(c: model.Config) -> dict:
    """Our layer weight -> (its name inside HF's model.layers.{i}, our input dims, our output dims).

    torch.nn.Linear stores [out, in]; we store [in..., out...] (e.g. wq is [D, H, K]), so HF = ours
    reshaped to [in, out] and transposed. Norm gains (input dims None) have the same layout on both sides.
    """
    D, H, G, K, F = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff
    return {
        "wq": ("self_attn.q_proj.weight", (D,), (H, K)),
        "wk": ("self_attn.k_proj.weight", (D,), (G, K)),
        "wv": ("self_attn.v_proj.weight", (D,), (G, K)),
        "wo": ("self_attn.o_proj.weight", (H, K), (D,)),
        "w_gate": ("mlp.gate_proj.weight", (D,), (F,)),
        "w_up": ("mlp.up_proj.weight", (D,), (F,)),
        "w_down": ("mlp.down_proj.weight", (F,), (D,)),
        "attn_norm": ("input_layernorm.weight", None, (D,)),
        "mlp_norm": ("post_attention_layernorm.weight", None, (D,)),
    }


def _top_table(c: model.Config) -> dict:
    """Our non-layer weights, same format as `_layer_table` (the embedding is [V, D] on both sides)."""
    return {
        "embed": ("model.embed_tokens.weight", None, (c.vocab_size, c.d_model)),
        "final_norm": ("model.norm.weight", None, (c.d_model,)),
        "lm_head": ("lm_head.weight", (c.d_model,), (c.vocab_size,)),
    }


def _to_hf_layout(a, in_dims):
    if in_dims is None:
        return a
    return np.ascontiguousarray(a.reshape(math.prod(in_dims), -1).T)


def _from_hf_layout(a, in_dims, out_dims):
    if in_dims is None:
        return a.reshape(out_dims)
    return a.T.reshape(in_dims + out_dims)


def hf_tensors(params: dict, config: model.Config, dtype: str = "float32") -> dict:
    """Our params -> {HF name: numpy array in HF's layout}, cast to `dtype`."""
    np_dtype = np.dtype(_jnp_dtype(dtype))
    out = {}
    for ours, (name, in_dims, _) in _top_table(config).items():
        out[name] = _to_hf_layout(np.asarray(params[ours]).astype(np_dtype), in_dims)
    for ours, (name, in_dims, _) in _layer_table(config).items():
        stacked = np.asarray(params["layers"][ours])
        for i in range(config.n_layers):
            out[f"model.layers.{i}.{name}"] = _to_hf_layout(stacked[i].astype(np_dtype), in_dims)
    return out


def _jnp_dtype(dtype: str):
    # numpy has no bfloat16; jax's (ml_dtypes') is a numpy dtype that safetensors reads and writes.
    if dtype not in ("float32", "bfloat16"):
        raise ConvertError(f"--dtype must be float32 or bfloat16, not {dtype!r}")
    return jnp.dtype(dtype)


# ----------------------------------------------------------------------------- configs

def hf_config(config: model.Config, eos: int, bos: int, dtype: str = "float32") -> dict:
    """The config.json of a LlamaForCausalLM equal to `config`.

    Transformers 5.x writes the rope base as rope_parameters {rope_type, rope_theta}; 4.x reads rope_theta
    (and rope_scaling: null). Both are written, so either version loads it; likewise dtype (5.x) and
    torch_dtype (4.x).
    """
    c = config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,  # StarCoder has no pad token: EOS pads (generate and batches mask it out)
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def _refuse(field, value, why):
    raise ConvertError(f"config.json: {field} = {json.dumps(value)}: {why}")


def config_from_hf(d: dict) -> model.Config:
    """A HF Llama config.json (as a dict) -> model.Config, or ConvertError naming the field we cannot represent."""
    arch = d.get("architectures")
    if arch is not None and arch != ["LlamaForCausalLM"]:
        _refuse("architectures", arch, "only LlamaForCausalLM is supported")
    if d.get("model_type") != "llama":
        _refuse("model_type", d.get("model_type"), "only llama is supported")

    def g(key):  # an explicit null means the default, as in LlamaConfig
        return d[key] if d.get(key) is not None else HF_DEFAULTS[key]

    if g("tie_word_embeddings"):
        _refuse("tie_word_embeddings", True, "smallcoder has untied input and output embeddings")
    for bias in ("attention_bias", "mlp_bias"):
        if g(bias):
            _refuse(bias, True, "smallcoder's projections have no biases")
    if g("hidden_act") != "silu":
        _refuse("hidden_act", g("hidden_act"), "smallcoder's MLP is SwiGLU (silu)")
    if d.get("quantization_config"):
        _refuse("quantization_config", "...", "quantized checkpoints are not supported")

    # Rope: 4.x has rope_theta (+ rope_scaling, null when plain); 5.x has rope_parameters {rope_type, rope_theta}.
    theta = g("rope_theta")
    for field in ("rope_scaling", "rope_parameters"):
        rp = d.get(field)
        if rp is None:
            continue
        plain = (isinstance(rp, dict) and rp.get("rope_type", rp.get("type", "default")) == "default"
                 and not set(rp) - {"rope_type", "type", "rope_theta"})
        if not plain:
            _refuse(field, rp, "only plain RoPE is supported (no scaling)")
        theta = rp.get("rope_theta", theta)

    hidden, heads = g("hidden_size"), g("num_attention_heads")
    head_dim = d.get("head_dim") or hidden // heads
    if hidden % heads or head_dim != hidden // heads:
        _refuse("head_dim", head_dim, f"smallcoder needs head_dim = hidden_size / num_attention_heads "
                                      f"= {hidden} / {heads}")
    kv_heads = d.get("num_key_value_heads") or heads
    try:
        return model.Config(vocab_size=g("vocab_size"), d_model=hidden, n_layers=g("num_hidden_layers"),
                            n_heads=heads, n_kv_heads=kv_heads, d_ff=g("intermediate_size"),
                            max_seq_len=g("max_position_embeddings"), rope_theta=float(theta),
                            rms_norm_eps=float(g("rms_norm_eps")))
    except ValueError as e:
        raise ConvertError(f"config.json: {e}") from None


# ----------------------------------------------------------------------------- Hugging Face -> ours

def _resolve(path_or_id: str) -> str:
    """A local directory, or a hub id downloaded (json + safetensors only) into the HF cache."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id):
        raise ConvertError(f"{path_or_id} is not a directory or a Hugging Face hub id")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConvertError(f"{path_or_id} is not a local directory and could not be downloaded from the "
                           f"Hugging Face hub ({type(e).__name__}: {first})") from None


def _weight_files(hf_dir: str) -> dict:
    """{tensor name: safetensors file} for a single-file or sharded checkpoint."""
    index = os.path.join(hf_dir, HF_INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
    single = os.path.join(hf_dir, model.WEIGHTS_FILE)
    if os.path.isfile(single):
        from safetensors import safe_open
        with safe_open(single, "np") as f:
            return {name: single for name in f.keys()}
    if any(n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json")) for n in os.listdir(hf_dir)):
        raise ConvertError(f"{hf_dir} has only pytorch_model.bin weights: safetensors are needed (re-save with "
                           f"transformers' save_pretrained, which writes model.safetensors)")
    raise ConvertError(f"{hf_dir} has no {model.WEIGHTS_FILE} or {HF_INDEX_FILE}")


def _read_hf_dir(hf_dir: str):
    """(fp32 params as numpy, config, tokenizer.json path) from a local HF directory; nothing is written."""
    cfg_file = os.path.join(hf_dir, model.CONFIG_FILE)
    if not os.path.isfile(cfg_file):
        raise ConvertError(f"{hf_dir} has no {model.CONFIG_FILE}")
    with open(cfg_file) as f:
        config = config_from_hf(json.load(f))
    tok_file = os.path.join(hf_dir, model.TOKENIZER_FILE)
    if not os.path.isfile(tok_file):
        raise ConvertError(f"{hf_dir} has no {model.TOKENIZER_FILE} (a slow-tokenizer-only checkpoint: load it "
                           f"with transformers' AutoTokenizer and save_pretrained it to get one)")
    files = _weight_files(hf_dir)

    # Old checkpoints carry the rotary inv_freq buffer; it is recomputed from rope_theta, so it is skipped.
    names = {n for n in files if not n.endswith("rotary_emb.inv_freq")}
    wanted = {}  # HF name -> (our name, layer index or None, in dims, out dims)
    for ours, (name, in_dims, out_dims) in _top_table(config).items():
        wanted[name] = (ours, None, in_dims, out_dims)
    for ours, (name, in_dims, out_dims) in _layer_table(config).items():
        for i in range(config.n_layers):
            wanted[f"model.layers.{i}.{name}"] = (ours, i, in_dims, out_dims)
    if names - set(wanted):
        raise ConvertError(f"{hf_dir}: unexpected weight {sorted(names - set(wanted))[0]} (not a plain Llama)")
    if set(wanted) - names:
        raise ConvertError(f"{hf_dir}: missing weight {sorted(set(wanted) - names)[0]}")

    # Fill preallocated stacked arrays tensor by tensor: peak memory is one fp32 model plus one tensor.
    shapes = jax.eval_shape(lambda: model.init(config, jax.random.key(0)))
    params = jax.tree.map(lambda s: np.empty(s.shape, np.float32), shapes)
    from safetensors import safe_open
    filled = set()
    for file in sorted(set(files.values())):
        with safe_open(file, "np") as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if files.get(name) != file:  # a shard must hold exactly what the index says it holds
                    raise ConvertError(f"{file} holds {name}, which {HF_INDEX_FILE} does not place in that file")
                ours, i, in_dims, out_dims = wanted[name]
                filled.add(name)
                a = f.get_tensor(name)
                hf_shape = out_dims if in_dims is None else (math.prod(out_dims), math.prod(in_dims))
                if a.shape != tuple(hf_shape):
                    raise ConvertError(f"{name} has shape {list(a.shape)}, config.json implies {list(hf_shape)}")
                a = _from_hf_layout(a.astype(np.float32), in_dims, out_dims)  # bf16 -> fp32 is exact
                if i is None:
                    params[ours][...] = a
                else:
                    params["layers"][ours][i] = a
    if set(wanted) - filled:  # else that weight would be whatever np.empty left in memory
        name = sorted(set(wanted) - filled)[0]
        raise ConvertError(f"{HF_INDEX_FILE} places {name} in {files[name]}, which does not hold it")
    return params, config, tok_file


def _load_tokenizer(path: str):
    try:
        return data.load_tokenizer(path)
    except data.DataError as e:
        raise ConvertError(str(e)) from None


def from_hf(path_or_id: str):
    """Load a HF LlamaForCausalLM directory or hub id as (fp32 params, model.Config, tokenizers.Tokenizer)."""
    params, config, tok_file = _read_hf_dir(_resolve(path_or_id))
    tokenizer = _load_tokenizer(tok_file)
    if tokenizer.get_vocab_size() > config.vocab_size:  # its top ids would have no embedding row
        raise ConvertError(f"{tok_file} has {tokenizer.get_vocab_size()} tokens, more than the model's vocab_size "
                           f"{config.vocab_size}")
    return params, config, tokenizer


def read_chat_template(path: str) -> str | None:
    """The chat template a directory holds (ours or HF's), or None: chat_template.jinja (as transformers >= 4.5x
    saves it, and as our imports keep it), else tokenizer_config.json's chat_template (its default, if named)."""
    if os.path.isfile(os.path.join(path, CHAT_TEMPLATE_FILE)):
        with open(os.path.join(path, CHAT_TEMPLATE_FILE), encoding="utf-8") as f:
            return f.read()
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


# ----------------------------------------------------------------------------- writing

def _check_out(out_dir: str):
    if data.is_url(out_dir):
        try:
            if data.exists(out_dir):
                raise ConvertError(f"{out_dir} already exists: refusing to overwrite it")
        except data.DataError as e:  # an unknown scheme, or its fsspec plugin is not installed
            raise ConvertError(str(e)) from None
    elif os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConvertError(f"{out_dir} already exists and is not empty: refusing to overwrite it")


def _write_dir(out_dir: str, write) -> None:
    """Run write(tmp_dir), then move tmp_dir to out_dir; on any failure nothing is left behind. At a URL (no
    rename there) the files are uploaded one by one, config.json last: a directory without it is incomplete."""
    _check_out(out_dir)
    if data.is_url(out_dir):
        with tempfile.TemporaryDirectory() as tmp:
            write(tmp)
            return data.upload(tmp, out_dir, last=model.CONFIG_FILE)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the directory gets the umask's mode (0755), not mkdtemp's private 0700.
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{secrets.token_hex(6)}")
    os.mkdir(tmp)
    try:
        write(tmp)
        umask = os.umask(0o022)
        os.umask(umask)  # reading the umask means setting it. safetensors writes 0600: give files the umask's mode
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        _check_out(out_dir)  # again: something may have appeared there while we were writing
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked): rename will not replace a directory on every OS
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _eos_id(tokenizer, config: model.Config) -> int:
    try:
        eos = data.eos_id(tokenizer)
    except data.DataError as e:
        raise ConvertError(str(e)) from None
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ConvertError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but vocab_size is "
                           f"{config.vocab_size}")
    return eos


def training_history(ckpt: str) -> list[dict]:
    """The train.py runs behind a checkpoint directory, first stage first: each out_dir's newest run config
    (checkpoints/step_*/state.json) and its logged losses (metrics.jsonl), following init_from back."""
    stages, seen = [], set()
    while ckpt and os.path.realpath(ckpt) not in seen:
        seen.add(os.path.realpath(ckpt))
        try:
            with open(sorted(glob.glob(os.path.join(ckpt, "checkpoints", "step_*", "state.json")))[-1]) as f:
                state = json.load(f)
            with open(os.path.join(ckpt, "metrics.jsonl")) as f:
                metrics = [r for r in map(json.loads, filter(str.strip, f)) if "loss" in r]
        except (IndexError, OSError, ValueError):  # not written by train.py, or moved: the history ends here
            break
        stages.append({"dir": ckpt, "config": state.get("config", {}), "step": state.get("step"), "metrics": metrics})
        # init_from is relative to where that run started: try it as written, then as a sibling of this directory
        init = stages[-1]["config"].get("init_from") or ""
        beside = os.path.join(os.path.dirname(os.path.abspath(ckpt)), os.path.basename(init.rstrip("/")))
        ckpt = next((d for d in (init, beside) if init and os.path.isdir(d)), None)
    return stages[::-1]


def _stage_row(stage: dict) -> str:
    """One stage as a row of the card's training table."""
    cfg, m = stage["config"], stage["metrics"]
    sources = [s for s in cfg.get("mixture", []) if isinstance(s, dict)]
    total = sum(s.get("weight", 0) for s in sources) or 1
    mixture = ", ".join(f"{s.get('path')}{'[%s]' % s['name'] if s.get('name') else ''}"
                        f"{'/' + s['data_dir'] if s.get('data_dir') else ''} {s.get('weight', 0) / total:.0%}"
                        for s in sources)
    cells = [os.path.basename(os.path.normpath(stage["dir"])), cfg.get("init_from") or "(random init)", mixture,
             stage["step"], f"{m[-1].get('tokens_seen', 0):,}" if m else "-",
             f"{m[0]['loss']:.2f} -> {m[-1]['loss']:.2f}" if m else "-",
             next((f"{r['val_loss']:.2f}" for r in reversed(m) if "val_loss" in r), "-")]
    return "| " + " | ".join(map(str, cells)) + " |"


def model_card(config: model.Config, dtype: str, out_dir: str, chat_template: str | None, ckpt: str | None) -> str:
    """README.md of an export: what the model is, how it was trained (if `ckpt`'s history is found), how to run it."""
    stages = training_history(ckpt) if ckpt else []
    history = ("| stage | initialised from | mixture | steps | tokens | loss (first -> last logged) | val loss |\n"
               "|---|---|---|---|---|---|---|\n" + "\n".join(map(_stage_row, stages))) if stages else (
        "No training record (metrics.jsonl and checkpoints/step_*/state.json, as train.py writes them) was found "
        "next to the exported checkpoint.")
    chat = ("`User: {prompt}\\nAssistant:`, then the reply after a space, ended by `<|endoftext|>`; turns are "
            "concatenated (`User: a\\nAssistant: b<|endoftext|>User: c\\nAssistant:`), with no BOS, as in training. "
            "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` renders it."
            if chat_template == CHAT_TEMPLATE else "tokenizer_config.json's chat template, kept from the imported "
            "checkpoint." if chat_template else "None: plain completion only.")
    return "\n\n".join([
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [code, llama, smallcoder]\n---",
        f"# {os.path.basename(os.path.normpath(out_dir))}\n\nA {model.param_count(config) / 1e6:.1f}M-parameter "
        f"Llama-architecture (`LlamaForCausalLM`) code model, exported from the smallcoder checkpoint "
        f"`{ckpt or '(in memory)'}` by smallcoder's `convert.py` ({dtype} weights).",
        "## Config\n| field | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v} |" for k, v in dataclasses.asdict(config).items() if k not in ("dtype", "remat")),
        "## Training\n" + history, "## Chat format\n" + chat,
        f"""## Usage\n```python\nfrom transformers import pipeline

chat = pipeline("text-generation", model="{out_dir}")
messages = [{{"role": "user", "content": "Write a Python function that reverses a string."}}]
print(chat(messages, max_new_tokens=128, do_sample=False)[0]["generated_text"][-1]["content"])
print(chat("def fibonacci(n):", max_new_tokens=64, do_sample=False)[0]["generated_text"])  # plain completion
```\n"""])


def to_hf(params: dict, config: model.Config, tokenizer, out_dir: str, dtype: str = "float32", *,
          chat_template: str | None = CHAT_TEMPLATE, ckpt: str | None = None) -> None:
    """Write a LlamaForCausalLM directory (config, generation config, safetensors, tokenizer with its chat
    template, model card) to `out_dir`. `ckpt`: the checkpoint directory it came from, for the card's history."""
    from safetensors.numpy import save_file
    _jnp_dtype(dtype)
    eos = _eos_id(tokenizer, config)
    token = tokenizer.id_to_token(eos)
    # StarCoder's <|endoftext|> is bos, eos and unk at once; there is no pad token, so eos pads.
    generation = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    tokenizer_config = {
        # PreTrainedTokenizerFast loads tokenizer.json as is in transformers 4.x and 5.x. (The "llama" model
        # type would otherwise pick LlamaTokenizer, which adds a BOS and, in 5.x, rebuilds the pipeline.)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token, "eos_token": token, "unk_token": token, "pad_token": token,
        "add_bos_token": False, "add_eos_token": False,  # as trained (data.py): documents only end with EOS
        "padding_side": "left",  # batched generation continues each row's last token (sample.py pads left too)
        "model_max_length": config.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **({"chat_template": chat_template} if chat_template else {}),
    }

    def write(tmp):
        # format "pt" metadata: transformers refuses safetensors files without it.
        save_file(hf_tensors(params, config, dtype), os.path.join(tmp, model.WEIGHTS_FILE), metadata={"format": "pt"})
        for name, d in [(model.CONFIG_FILE, hf_config(config, eos, eos, dtype)),
                        ("generation_config.json", generation), ("tokenizer_config.json", tokenizer_config)]:
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(d, f, indent=2)
        tokenizer.save(os.path.join(tmp, model.TOKENIZER_FILE))
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(config, dtype, out_dir, chat_template, ckpt))
    _write_dir(out_dir, write)


def to_checkpoint(params: dict, config: model.Config, tokenizer, out_dir: str, chat_template: str | None = None):
    """Write a smallcoder checkpoint directory: config.json, model.safetensors, tokenizer.json[, the template]."""
    def write(tmp):
        model.save(tmp, params, config)
        tokenizer.save(os.path.join(tmp, model.TOKENIZER_FILE))
        if chat_template:
            with open(os.path.join(tmp, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
                f.write(chat_template)
    _write_dir(out_dir, write)


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert smallcoder checkpoints to and from Hugging Face "
                                                 "LlamaForCausalLM (safetensors).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="smallcoder checkpoint directory to export")
    src.add_argument("--from-hf", help="Hugging Face directory or hub id to import")
    parser.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    parser.add_argument("--dtype", choices=data.DTYPES, default="auto",
                        help="weight dtype of the export (--ckpt only; auto: float32, as our checkpoints store "
                             "them; imports are stored as fp32)")
    args = data.parse_cli(parser, argv)
    if args.from_hf and args.dtype != "auto":
        parser.error("--dtype applies to --ckpt exports only: smallcoder checkpoints are always fp32")
    try:
        _check_out(args.out)  # fail fast, before reading a large checkpoint
        if args.ckpt:
            if data.is_url(args.ckpt):  # a local copy of the model files (the training history stays behind)
                args.ckpt = data.download(args.ckpt, (model.CONFIG_FILE, model.WEIGHTS_FILE, model.TOKENIZER_FILE,
                                                      CHAT_TEMPLATE_FILE, "metrics.jsonl"))
            params, config = model.load(args.ckpt)
            tokenizer = _load_tokenizer(os.path.join(args.ckpt, model.TOKENIZER_FILE))
            to_hf(params, config, tokenizer, args.out, "float32" if args.dtype == "auto" else args.dtype,
                  chat_template=read_chat_template(args.ckpt) or CHAT_TEMPLATE, ckpt=args.ckpt)
        else:
            hf_dir = _resolve(data.download(args.from_hf, tuple(data.listdir(args.from_hf)))
                              if data.is_url(args.from_hf) else args.from_hf)
            params, config, tokenizer = from_hf(hf_dir)
            to_checkpoint(params, config, tokenizer, args.out, read_chat_template(hf_dir))
    except (ConvertError, model.CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out} ({model.param_count(config):,} parameters)")


if __name__ == "__main__":
    main()
