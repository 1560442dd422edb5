# Stage 1 of the card, "language": 6.3B tokens of FineWeb-Edu from random init (loss 10.87 -> 2.58).
model = "smallcoder"
tokenizer = "bigcode/starcoder"  # gated; bigcode/tiny_starcoder_py carries the same tokenizer ungated
# sample-10BT: 10B tokens cover the 6.3B budget without indexing the full 1.3T-token default config. shuffle: the
# files in a seeded order, and the documents of each ~1 MB read (data.py); 1 in 50 documents are held out for val_loss.
mixture = [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train", "text": "text",
            "weight": 1.0, "shuffle": True}]
tokens = 6_300_000_000
out_dir = "out/s1"
seq_len = 1024
# The card gives no batch size or learning rate. 512 x 1024 = 524,288 tokens per step: GPT-3's batch for its
# 350M model and close to the compute-optimal critical batch for ~300M models; 12,017 steps.
batch_size = 512
# LR tolerance follows width more than depth: d_model 768 is GPT-3 125M's width, trained at 6e-4
# (its 350M, d1024, used 3e-4). Warmup 700 steps = 367M tokens (GPT-3 warmed up over 375M). Cosine to 10%.
lr = 6e-4
warmup_steps = 700
min_lr_ratio = 0.1
weight_decay = 0.1
beta2 = 0.95  # 0.95 rather than 0.999: steadier with large batches (GPT-3, Llama)
# Card hardware: TPU v4-32 = 16 chips (32 GiB each). 512 / grad_accum 4 = 128 rows per micro-batch = 8 per
# chip. The weights and Adam state (4.8 GB) fit replicated, so plain data parallelism (fsdp = 1) avoids
# gathering weights every micro-batch; on 16 GB chips use --fsdp=-1 --remat=full.
grad_accum = 4
remat = "dots"
fsdp = 1
log_interval = 10
eval_interval = 500
ckpt_interval = 500
