# Offline demo, SFT: continue from the tiny pretraining run on docstring -> function pairs from the stdlib,
# formatted "User: {docstring}\nAssistant: {function}<|endoftext|>", loss on the response and EOS only.
# Sized for ~2 minutes on 2 CPU cores. Run `python train.py stages/tiny.py` first.
model = "tiny"
tokenizer = "stdlib"
init_from = "out/tiny"
mixture = [{"path": "stdlib_sft", "weight": 1.0}]
out_dir = "out/tiny_sft"
seq_len = 256
batch_size = 8
tokens = 160_000        # 79 steps
lr = 5e-4               # a quarter of pretraining's peak: adapt to the format without forgetting
warmup_steps = 10
min_lr_ratio = 0.1
weight_decay = 0.1
log_interval = 10
eval_interval = 25
eval_batches = 8
ckpt_interval = 50
