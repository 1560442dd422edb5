# Demo pretraining stage: the Python standard library, offline.
tokenizer = "stdlib"
mixture = [{"path": "stdlib", "weight": 1.0}]
seq_len = 256
batch_size = 8
