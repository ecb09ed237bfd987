"""The README.md model card of an export: corpus, weights sha256, losses and lineage from the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chargpt.formats.checkpoint_dir import CharCheckpoint

USAGE = {
    "hf": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
           "tokenizer = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH)\n"
           "ids = tokenizer(\"ROMEO:\", return_tensors=\"pt\").input_ids\n"
           "print(tokenizer.decode(model.generate(ids, max_new_tokens=200)[0]))\n```"),
    "gguf": ("```sh\nllama-cli -m PATH/model-f32.gguf -p \"ROMEO:\" -n 200 --temp 0.8 --top-k 40 --logit-bias EOT-inf\n"
             "```\n"
             "A character outside the vocabulary is dropped by llama.cpp's tokenizer (it has no unknown token)."),
    "onnx": ("```python\nfrom chargpt.formats.onnx_decode import OnnxDecoder\n"
             "print(OnnxDecoder(PATH).greedy(\"ROMEO:\", 200))\n```"),
}
CANNOT_CARRY = ("attention dumps, stop sequences (pass them to your runtime), chargpt's logit_bias by character, "
                "per-request seeds that reproduce chargpt's sampled text, and the trainer's resume state")


def write_model_card(checkpoint: CharCheckpoint, path: Path, format_name: str) -> None:
    training = checkpoint.training
    a = checkpoint.arch
    lines = [
        "---", "library_name: transformers" if format_name == "hf" else f"tags: [chargpt, {format_name}]",
        "pipeline_tag: text-generation", "---", "",
        f"# chargpt character-level GPT ({format_name} export)", "",
        f"A {a.n_layer}-layer, {a.n_head}-head, {a.n_embd}-wide character-level GPT (GPT-2 architecture, exact "
        f"GELU, tied head) with a {a.block_size}-character context and {a.vocab_size} characters: "
        f"{checkpoint.vocabulary!r}."
        + ("" if format_name == "onnx" else f" The export appends an end-of-text token, id {a.vocab_size}, whose "
           "logit is always 0: chargpt has none, so ban it (logit bias) or suppress it when sampling."), "",
        "| | |", "| --- | --- |",
        f"| corpus | {training.get('corpus_name') or '-'} (id {training.get('corpus_id') or '-'}, sha256 "
        f"{training.get('corpus_sha256') or '-'}) |",
        f"| chargpt weights sha256 | {checkpoint.weights_sha256} |",
        f"| training job, step | {training.get('job_id') or '-'}, {training.get('step', 0)} |",
        f"| train loss, val loss | {_loss(training.get('train_loss'))}, {_loss(training.get('val_loss'))} |",
        f"| fine-tuned from | {_lineage(training.get('parent'))} |",
        f"| libraries | {_versions(training.get('library_versions'))} |", "",
        "## Use", "", USAGE[format_name].replace("PATH", "this_directory").replace("EOT", str(a.vocab_size)), "",
        f"The format cannot carry {CANNOT_CARRY}.", "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _lineage(parent: Any) -> str:
    if not isinstance(parent, dict):
        return "- (trained from random weights)"
    if parent.get("source_format"):
        return f"imported from {parent['source_format']}, original weights sha256 {parent.get('weights_sha256', '-')}"
    origin = f"job {parent.get('job_id')} ({parent.get('kind')})" if parent.get("job_id") else "a checkpoint directory"
    return f"{origin} at step {parent.get('step', 0)}, weights sha256 {parent.get('weights_sha256', '-')}"


def _versions(versions: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) and versions else "-"
