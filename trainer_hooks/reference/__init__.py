"""The reference Megatron-style trainer behind `flightlog demo` and `flightlog train`.

- `model.py`: a small Llama-style GPT (RoPE, RMSNorm, SwiGLU) with tensor parallelism 1 or 2.
- `data.py`: a deterministic byte-level token stream in numbered chunks, with an optional corrupted chunk.
- `train.py`: `TrainConfig`, `train(cfg, rank)`, `launch(cfg)` (one process per rank, gloo/NCCL), `main(argv)`.
- `demo.py`: the demo story (a corrupted chunk, a checkpoint without optimizer state, a crash and a resume).

Submodules are imported on use: `import trainer_hooks.reference` does not import torch.
"""
