# Stage 2 of the card, "code": 7.5B tokens, Nemotron synthetic code Q/A CoT 60% + StarCoderData Python 40%,
# from stage 1's weights (loss 5.00 -> 1.25). Both sets are gated: accept their terms and log in first.
model = "smallcoder"
tokenizer = "bigcode/starcoder"
init_from = "out/s1"
mixture = [
    # The config holding the text (Nemotron-Code-Metadata has none); field name "text" [check on the hub].
    {"path": "nvidia/Nemotron-Pretraining-Code-v1", "name": "Synthetic-Code", "split": "train", "text": "text",
     "weight": 0.60, "shuffle": True},
    {"path": "bigcode/starcoderdata", "data_dir": "python", "split": "train", "text": "content", "weight": 0.40,
     "shuffle": True},
]
tokens = 7_500_000_000
out_dir = "out/s2"
seq_len = 1024
batch_size = 512  # same 0.5M-token batch as stage 1 (14,306 steps)
# Continued pretraining on a new distribution: re-warm, but to half of stage 1's peak, so the first steps on
# code do not undo stage 1 (a common choice for continual pretraining, e.g. Ibrahim et al. 2024).
lr = 3e-4
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
