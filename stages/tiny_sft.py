# Offline demo, SFT: continue from the tiny pretraining run on docstring -> function pairs from the stdlib,
# formatted "User: {docstring}\nAssistant: {function}<|endoftext|>", loss on the response and EOS only.
# ~5 minutes on 2 CPU cores. Run `python train.py stages/tiny.py` first.
model = "tiny"
tokenizer = "stdlib"
init_from = "out/tiny"
mixture = [{"path": "stdlib_sft", "weight": 1.0}]
out_dir = "out/tiny_sft"
seq_len = 256
batch_size = 8
# Measured with docs/eos_rate.py (50 held-out prompts, 128 new tokens): replies stop on EOS 99% of the time
# sampled (T 0.8, top-p 0.95; base 3%) and EOS at a reply's end went from p 6e-5 to 0.29. Greedy, the
# 7.6M-parameter model often loops and stops 0-84% depending on the run (README). 200k tokens at lr 5e-4
# taught too little (greedy 4%, previous corpus order).
tokens = 400_000        # 196 steps
lr = 1e-3               # pretraining's peak: the model is small and the format is new
warmup_steps = 10
min_lr_ratio = 0.1
weight_decay = 0.1
log_interval = 10
eval_interval = 25
eval_batches = 8
ckpt_interval = 50
