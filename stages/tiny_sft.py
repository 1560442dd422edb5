# Demo SFT stage: docstring -> function pairs from the Python standard library, offline.
tokenizer = "stdlib"
mixture = [{"path": "stdlib_sft", "weight": 1.0}]
seq_len = 256
batch_size = 8
