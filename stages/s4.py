# Stage 4 of the card, SFT ("S4.1"): 6B tokens of instruction data from stage 3's weights (loss 1.73 -> ~0.70).
# Each example is "User: {prompt}\nAssistant: {response}<|endoftext|>"; the loss covers the response and the
# EOS (the card's EOS fix), see data.py.
model = "smallcoder"
tokenizer = "bigcode/starcoder"
init_from = "out/s3"
mixture = [
    # Nemotron SFT sets hold whole exchanges in "text" [check on the hub]: chat_text marks them as such.
    {"path": "nvidia/Nemotron-Pretraining-SFT-v1", "name": "Nemotron-SFT-Code", "split": "train", "text": "text",
     "chat_text": True, "weight": 0.45, "shuffle": True},
    {"path": "nvidia/OpenCodeInstruct", "split": "train", "prompt": "input", "response": "output", "weight": 0.30,
     "shuffle": True},
    {"path": "nvidia/OpenMathInstruct-2", "split": "train", "prompt": "problem", "response": "generated_solution",
     "weight": 0.15, "shuffle": True},
    {"path": "nvidia/Nemotron-Pretraining-SFT-v1", "name": "Nemotron-SFT-General", "split": "train", "text": "text",
     "chat_text": True, "weight": 0.10, "shuffle": True},
]
tokens = 6_000_000_000
out_dir = "out/s4"
seq_len = 1024
batch_size = 512  # 0.5M tokens (counting prompt tokens, which carry no loss); 11,445 steps
# SFT on a pretrained model: a third of stage 1's peak, the usual range for fine-tuning (1e-5 .. 2e-4),
# here at the high end because 6B tokens is a long SFT run. Short warmup: the weights are already trained.
lr = 2e-4
warmup_steps = 100
min_lr_ratio = 0.1
weight_decay = 0.1
beta2 = 0.95
grad_accum = 4
remat = "dots"
fsdp = 1
log_interval = 10
eval_interval = 500
ckpt_interval = 500
