"""The model's text format and its tokenizer: documents end with EOS, SFT examples are CHAT_FORMAT plus the reply.

Files that call a Tokenizer object `tokenizer` import this module's names (`from tokenizer import eos_id`): the
variable would hide the module.
"""
from pathlib import Path

import storage
from corpus import PY_TAG, cache_dir, stdlib_train_files

EOS_TOKEN = "<|endoftext|>"
# The card's chat format, the one spelling of it: SFT examples (sources.py), `sample.py --chat` and eval_code.py's
# chat mode use it (convert.py's Jinja CHAT_TEMPLATE renders the same for Hugging Face). A reply follows as " " + text.
CHAT_FORMAT = "User: {prompt}\nAssistant:"
STDLIB_VOCAB = 8192


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or lacks EOS; the message is meant to be shown as one line."""


def _train_stdlib_tokenizer():
    """Byte-level BPE like StarCoder's (digits split, <|endoftext|> = id 0), trained on stdlib train files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=STDLIB_VOCAB, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Every 2nd train file (sorted, so deterministic): ~6 MB trains in seconds and covers the vocabulary.
    files = stdlib_train_files()[::2]
    tok.train_from_iterator((p.read_text(encoding="utf-8", errors="replace") for p in files), trainer)
    return tok


def load_tokenizer(spec: str):
    """A tokenizers.Tokenizer from a tokenizer.json path, a directory holding one, "stdlib", or a hub id."""
    from tokenizers import Tokenizer
    if storage.is_url(spec):
        file = spec if spec.endswith(".json") else storage.join(spec, "tokenizer.json")
        try:
            text = storage.read_bytes(file).decode("utf-8", "replace")
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file {file!r} does not exist") from None
        return tokenizer_from_text(file, text)
    stdlib = cache_dir() / f"stdlib-bpe-{STDLIB_VOCAB}-{PY_TAG}.json"
    path = stdlib if spec == "stdlib" else Path(spec).expanduser()
    if spec == "stdlib" and not path.exists():
        storage.write_bytes(str(path), _train_stdlib_tokenizer().to_str().encode())
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
        return _parsed(str(path), lambda: Tokenizer.from_file(str(path)))
    try:
        return Tokenizer.from_pretrained(spec)
    except Exception as e:
        raise TokenizerError(f"could not load tokenizer {spec!r} from the Hugging Face hub ({type(e).__name__}): the "
                             f"hub is unreachable or the repo is gated (bigcode/starcoder needs its terms accepted "
                             f"and `huggingface-cli login`); pass a local tokenizer.json path instead, e.g. the one "
                             f"from bigcode/tiny_starcoder_py (same tokenizer, ungated)") from None


def tokenizer_from_text(file: str, text: str):
    """The Tokenizer whose tokenizer.json text was read from `file` (which names it in an error)."""
    from tokenizers import Tokenizer
    return _parsed(file, lambda: Tokenizer.from_str(text))


def _parsed(file: str, parse):
    """parse(), the Tokenizer of `file`; a file the tokenizers library cannot read (cut short, not JSON, another
    format) is a TokenizerError naming it (the library raises a bare Exception)."""
    try:
        return parse()
    except Exception as e:
        raise TokenizerError(f"tokenizer file {file!r} is not a tokenizer ({str(e)[:200]})") from None


def eos_id(tok) -> int:
    """The id of <|endoftext|>, which ends every document (0 for StarCoder and the stdlib tokenizer)."""
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise TokenizerError(f"tokenizer has no {EOS_TOKEN} token; smallcoder needs it as its end-of-document marker")
    return i


def literal_tokenizer(tok):
    """A copy that reads special-token strings inside documents as plain text: a file that mentions
    "<|endoftext|>" must not plant an EOS (or, in SFT, an early stop) in the middle of a document."""
    tok = type(tok).from_str(tok.to_str())
    tok.encode_special_tokens = True
    return tok
