"""Convert between smallcoder checkpoint directories and Hugging Face LlamaForCausalLM directories.

    python convert.py --ckpt DIR --out HF_DIR [--dtype auto|float32|bfloat16]   # ours -> Hugging Face
                      [--license apache-2.0] [--eval RESULTS.jsonl ...]          # the model card's metadata
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
no BOS (as trained), EOS in generation_config.json, a model card (README.md, card.py's: the hub's metadata, with
eval_code.py's scores given --eval; config, the training stages found next to --ckpt, usage). An import keeps the
checkpoint's chat template (chat_template.jinja in our directory) and where it came from (card.IMPORT_FILE).

As a library: `from_hf(path_or_id) -> (params, config, tokenizer)`, `to_checkpoint(...)` and
`to_hf(params, config, tokenizer, out_dir, dtype, chat_template=CHAT_TEMPLATE, ckpt=None, license=..., evals=())`
(`card.read_eval` reads an eval_code.py results file).
"""
import argparse
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

import card
import checkpoints
import cli
import model
import storage
from tokenizer import TokenizerError, eos_id, load_tokenizer

HF_INDEX_FILE = "model.safetensors.index.json"

# The card's chat format (tokenizer.CHAT_FORMAT; data.py's SFT rows are "User: {prompt}\nAssistant:" + " " + response
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
    """A local directory: `path_or_id` itself, a copy of a URL's files, or a hub id downloaded (json +
    safetensors only) into the HF cache."""
    if storage.is_url(path_or_id):
        return storage.download(path_or_id, tuple(storage.listdir(path_or_id)))
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
    single = os.path.join(hf_dir, checkpoints.WEIGHTS_FILE)
    if os.path.isfile(single):
        from safetensors import safe_open
        with safe_open(single, "np") as f:
            return {name: single for name in f.keys()}
    if any(n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json")) for n in os.listdir(hf_dir)):
        raise ConvertError(f"{hf_dir} has only pytorch_model.bin weights: safetensors are needed (re-save with "
                           f"transformers' save_pretrained, which writes model.safetensors)")
    raise ConvertError(f"{hf_dir} has no {checkpoints.WEIGHTS_FILE} or {HF_INDEX_FILE}")


def _read_hf_dir(hf_dir: str):
    """(fp32 params as numpy, config, tokenizer.json path) from a local HF directory; nothing is written."""
    cfg_file = os.path.join(hf_dir, checkpoints.CONFIG_FILE)
    if not os.path.isfile(cfg_file):
        raise ConvertError(f"{hf_dir} has no {checkpoints.CONFIG_FILE}")
    with open(cfg_file) as f:
        config = config_from_hf(json.load(f))
    tok_file = os.path.join(hf_dir, checkpoints.TOKENIZER_FILE)
    if not os.path.isfile(tok_file):
        raise ConvertError(f"{hf_dir} has no {checkpoints.TOKENIZER_FILE} (a slow-tokenizer-only checkpoint: load it "
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


def from_hf(path_or_id: str):
    """Load a HF LlamaForCausalLM directory or hub id as (fp32 params, model.Config, tokenizers.Tokenizer)."""
    params, config, tok_file = _read_hf_dir(_resolve(path_or_id))
    tokenizer = load_tokenizer(tok_file)  # (_read_hf_dir found it)
    if tokenizer.get_vocab_size() > config.vocab_size:  # its top ids would have no embedding row
        raise ConvertError(f"{tok_file} has {tokenizer.get_vocab_size()} tokens, more than the model's vocab_size "
                           f"{config.vocab_size}")
    return params, config, tokenizer


# ----------------------------------------------------------------------------- writing

def _eos_id(tokenizer, config: model.Config) -> int:
    try:
        eos = eos_id(tokenizer)
    except TokenizerError as e:
        raise ConvertError(str(e)) from None
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ConvertError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but vocab_size is "
                           f"{config.vocab_size}")
    return eos


def to_hf(params: dict, config: model.Config, tokenizer, out_dir: str, dtype: str = "float32", *,
          chat_template: str | None = CHAT_TEMPLATE, ckpt: str | None = None, license: str = card.DEFAULT_LICENSE,
          evals: tuple = ()) -> None:
    """Write a LlamaForCausalLM directory (config, generation config, safetensors, tokenizer with its chat
    template, model card) to `out_dir`. `ckpt`: the checkpoint directory it came from, for the card's history;
    `license` and `evals` (card.read_eval results) go into the card's metadata."""
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
        # Without it transformers 4.x returns token_type_ids too, which LlamaForCausalLM.generate refuses.
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": config.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **({"chat_template": chat_template} if chat_template else {}),
    }

    def write(tmp):
        # format "pt" metadata: transformers refuses safetensors files without it.
        save_file(hf_tensors(params, config, dtype), os.path.join(tmp, checkpoints.WEIGHTS_FILE),
                  metadata={"format": "pt"})
        for name, d in [(checkpoints.CONFIG_FILE, hf_config(config, eos, eos, dtype)),
                        ("generation_config.json", generation), ("tokenizer_config.json", tokenizer_config)]:
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(d, f, indent=2)
        tokenizer.save(os.path.join(tmp, checkpoints.TOKENIZER_FILE))
        if evals:  # their scores are this model's: graded on the checkpoint it came from, or on this very export
            weights = {storage.sha256(storage.join(ckpt, checkpoints.WEIGHTS_FILE)): ckpt} if ckpt else {}
            weights[storage.sha256(os.path.join(tmp, checkpoints.WEIGHTS_FILE))] = "this export"
            card.check_graded(evals, weights)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card.model_card(config, dtype, out_dir, tokenizer=tokenizer, ckpt=ckpt, license=license,
                                    evals=evals, chat="card" if chat_template == CHAT_TEMPLATE else
                                    "imported" if chat_template else None))
    storage.write_dir(out_dir, write, last=checkpoints.CONFIG_FILE)


def to_checkpoint(params: dict, config: model.Config, tokenizer, out_dir: str, chat_template: str | None = None,
                  source: dict | None = None):
    """Write a smallcoder model directory (checkpoints.save_model) to `out_dir`, which must be new. `source`: where
    it was imported from, kept for the model card of a later export (card.IMPORT_FILE)."""
    def write(tmp):
        if source:
            storage.write_bytes(storage.join(tmp, card.IMPORT_FILE), json.dumps(source, indent=1).encode())
        checkpoints.save_model(tmp, params, config, tokenizer, chat_template)
    storage.write_dir(out_dir, write, last=checkpoints.CONFIG_FILE)


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert smallcoder checkpoints to and from Hugging Face "
                                                 "LlamaForCausalLM (safetensors).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="smallcoder checkpoint directory to export")
    src.add_argument("--from-hf", help="Hugging Face directory or hub id to import")
    parser.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    parser.add_argument("--dtype", choices=cli.DTYPES, default="auto",
                        help="weight dtype of the export (--ckpt only; auto: float32, as our checkpoints store "
                             "them; imports are stored as fp32)")
    parser.add_argument("--license", help=f"the model card's license, a hub license id (--ckpt only; default "
                                          f"{card.DEFAULT_LICENSE}, SmallCoder-303M's)")
    parser.add_argument("--eval", action="append", default=[], metavar="RESULTS",
                        help="an eval_code.py --out file whose scores go into the model card (--ckpt only; repeatable)")
    args = cli.parse_args(parser, argv)
    if args.from_hf and args.dtype != "auto":
        parser.error("--dtype applies to --ckpt exports only: smallcoder checkpoints are always fp32")
    if args.from_hf and (args.license is not None or args.eval):
        parser.error("--license and --eval apply to --ckpt exports only: they go into its model card")
    with cli.one_line_errors(ConvertError, checkpoints.CheckpointError, storage.StorageError, TokenizerError):
        storage.check_new(args.out)  # fail fast, before reading a large checkpoint
        if args.ckpt:
            license = card.check_license(card.DEFAULT_LICENSE if args.license is None else args.license)
            evals = [card.read_eval(path) for path in args.eval]
            params, config, tokenizer = checkpoints.load_model(args.ckpt)
            to_hf(params, config, tokenizer, args.out, "float32" if args.dtype == "auto" else args.dtype,
                  chat_template=checkpoints.read_chat_template(args.ckpt) or CHAT_TEMPLATE, ckpt=args.ckpt,
                  license=license, evals=evals)
        else:
            hf_dir = _resolve(args.from_hf)
            params, config, tokenizer = from_hf(hf_dir)
            hub = not (storage.is_url(args.from_hf) or os.path.isdir(args.from_hf))  # _resolve downloaded it
            to_checkpoint(params, config, tokenizer, args.out, checkpoints.read_chat_template(hf_dir),
                          {"from_hf": args.from_hf, "hub_id": args.from_hf if hub else None})
    print(f"wrote {args.out} ({model.param_count(config):,} parameters)")


if __name__ == "__main__":
    main()
