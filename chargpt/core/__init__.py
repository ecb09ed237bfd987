"""The shared core: model, tokenizer, checkpoint format, sampling and device probing."""
