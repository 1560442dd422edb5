# Stage 3 of the card, "math & knowledge": 10B tokens from stage 2's weights (loss 2.77 -> 1.55).
model = "smallcoder"
tokenizer = "bigcode/starcoder"
init_from = "out/s2"
mixture = [
    {"path": "nvidia/Nemotron-CC-Math-v1", "name": "4plus", "split": "train", "text": "text", "weight": 0.40,
     "shuffle": True},
    {"path": "HuggingFaceFW/finewiki", "name": "en", "split": "train", "text": "text", "weight": 0.35, "shuffle": True},
    # The card says CC-Math "4", but the configs are only 3, 4plus and 4plus_MIND: "3" is the closest reading.
    {"path": "nvidia/Nemotron-CC-Math-v1", "name": "3", "split": "train", "text": "text", "weight": 0.15,
     "shuffle": True},
    {"path": "open-web-math/open-web-math", "split": "train", "text": "text", "weight": 0.10, "shuffle": True},
]
tokens = 10_000_000_000
out_dir = "out/s3"
seq_len = 1024
batch_size = 512  # 19,074 steps of 0.5M tokens
lr = 3e-4  # re-warm to half of stage 1's peak, as in stage 2
warmup_steps = 300
min_lr_ratio = 0.1
weight_decay = 0.1
beta2 = 0.95
grad_accum = 4
remat = "dots"
fsdp = 1
log_interval = 10
eval_interval = 500
ckpt_interval = 500
