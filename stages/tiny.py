# Offline demo, pretraining: the tiny model (7.6M parameters) on the Python standard library's source,
# with a BPE tokenizer (vocab 8192) trained on the same files. Sized for ~5 minutes on 2 CPU cores.
model = "tiny"
tokenizer = "stdlib"
mixture = [{"path": "stdlib", "weight": 1.0}]  # held-out: a fixed set of stdlib files (data.py)
out_dir = "out/tiny"
seq_len = 256
batch_size = 8          # 2,048 tokens per step
tokens = 400_000        # 196 steps
lr = 1e-3               # small models take a high lr; 2e-3 made the loss jump around at this batch size
warmup_steps = 20
min_lr_ratio = 0.1
weight_decay = 0.1
log_interval = 10
eval_interval = 50
eval_batches = 8
ckpt_interval = 100
