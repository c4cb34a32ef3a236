"""PyTorch checkpoints (CPC, wav2vec2/HuBERT/WavLM, VAP) -> Flax, read without torch."""
