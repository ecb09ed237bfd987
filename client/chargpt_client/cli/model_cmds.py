"""`chargpt models load|list|show|unload`, `chargpt generate` and `chargpt score`."""

from __future__ import annotations

import argparse
import codecs
import enum
import sys
import types
import typing
from pathlib import Path

from chargpt.decode_plan import describe_decode_threads
from chargpt.text import TextDecodeError, read_text
from chargpt_client import types as t
from chargpt_client.cli.common import SubParsers, UsageError, inference_client, print_json
from chargpt_client.errors import ChargptClientError
from chargpt_client.render import fmt, print_table
from chargpt_client.sampling import SamplingOptions
from chargpt_client.tokenizer import CharMapping


def register(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    models = subparsers.add_parser("models", help="load and manage models in the inference service")
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    load = sub.add_parser("load", parents=[parent], help="load a checkpoint under a name")
    load.add_argument("name")
    source = load.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory under the service's models root")
    source.add_argument("--job", help="a trainer job id (the service fetches its checkpoint)")
    load.add_argument("--kind", choices=["best", "latest"], default="",
                      help="with --job: which checkpoint (default: the trainer's, best if any, else latest)")
    load.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: the service's)")
    load.add_argument("--dtype", default="", help="float32, bfloat16, float16 (default: the service's, auto: "
                      "measured on the host)")
    load.set_defaults(handler=load_cmd)
    sub.add_parser("list", parents=[parent], help="loaded models").set_defaults(handler=list_cmd)
    for name, handler in (("show", show_cmd), ("unload", unload_cmd)):
        cmd = sub.add_parser(name, parents=[parent], help=f"{name} a model")
        cmd.add_argument("name")
        cmd.set_defaults(handler=handler)
    _register_generate(subparsers, parent)
    _register_score(subparsers, parent)


# `chargpt generate` has a flag per SamplingOptions field but these: it prints one sample, and a mapping is no flag.
GENERATE_FLAGS = [name for name in SamplingOptions.model_fields if name not in ("n", "logit_bias")]
GENERATE_DEFAULTS = {"max_new_tokens": 500}  # the CLI's own: a screenful, not the server's 256
# Flags spelled otherwise than their field: one --choice per choice (--choices also works), a schema from a file.
GENERATE_SPELLINGS = {"choices": ("--choice", "--choices")}


def _register_generate(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    gen = subparsers.add_parser("generate", parents=[parent], help="stream generated text to the terminal")
    gen.add_argument("model")
    gen.add_argument("prompt", nargs="?", default="", help="text to continue (default: empty)")
    for name in GENERATE_FLAGS:  # one flag per SamplingOptions field, e.g. --top-k
        gen.add_argument(*GENERATE_SPELLINGS.get(name, ("--" + name.replace("_", "-"),)), dest=name, **_flag(name))
    gen.add_argument("--priority", type=int, default=0,
                     help="admission order among waiting requests: lower first (vLLM's convention), default 0")
    gen.set_defaults(handler=generate_cmd)


def _flag(name: str) -> dict[str, typing.Any]:
    """argparse keywords for a SamplingOptions field: its type (choices for an enum; a tuple is a repeatable flag)
    and its description as the help."""
    info = SamplingOptions.model_fields[name]
    (kind,) = [a for a in typing.get_args(info.annotation) if a is not types.NoneType]
    if typing.get_origin(kind) is tuple:
        return {"action": "append", "default": None, "type": _unescape,
                "help": f"{info.description} (repeatable; backslash escapes such as \\n are understood)"}
    if name == "json_schema":
        return {"type": _read_schema, "metavar": "FILE", "help": f"{info.description}, read from FILE"}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"choices": [member.value for member in kind], "help": info.description}
    return {"type": kind, "default": GENERATE_DEFAULTS.get(name), "help": info.description}


def _unescape(value: str) -> str:
    """'\\n\\n' typed in a shell -> two newlines."""
    return codecs.decode(value.encode("utf-8"), "unicode_escape").encode("latin-1").decode("utf-8")


def _read_schema(path: str) -> str:
    """--json-schema FILE: the file's text (the server checks that it is a schema)."""
    try:
        return read_text(Path(path))
    except (OSError, TextDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read the JSON schema file: {exc}") from None


def _register_score(subparsers: SubParsers, parent: argparse.ArgumentParser) -> None:
    score = subparsers.add_parser("score", parents=[parent], help="perplexity and bits/char of texts or files")
    score.add_argument("model")
    score.add_argument("texts", nargs="*", help="texts to score (before or after the options)")
    score.set_defaults(trailing_positionals="texts")
    score.add_argument("--file", "-f", action="append", default=[], help="score a file's text (repeatable)")
    score.add_argument("--compare", action="append", default=[], metavar="MODEL",
                       help="also score under this model (repeatable)")
    score.add_argument("--drop-unknown", action="store_true",
                       help="drop characters outside a model's vocabulary instead of failing")
    score.set_defaults(handler=score_cmd)


def load_cmd(args: argparse.Namespace) -> int:
    if args.kind and not args.job:
        raise UsageError("--kind applies to --job only (a --checkpoint directory is one checkpoint)")
    with inference_client(args) as client:
        result = client.load_model(args.name, checkpoint_path=args.checkpoint, job_id=args.job, kind=args.kind,
                                   device=args.device, dtype=args.dtype)
    if args.json:
        print_json(result)
    else:
        verb = "loaded" if result.loaded else "already loaded"
        print(f"{verb} {result.model.name} from {result.model.source}")
        show(result.model)
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    with inference_client(args) as client:
        models = client.list_models()
    if args.json:
        print_json(models)
        return 0
    rows = [(m.name, m.state, m.source, f"{m.parameter_count:,}", m.device, m.dtype, m.training.val_loss)
            for m in models]
    print_table(["name", "state", "source", "params", "device", "dtype", "val loss"], rows)
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    with inference_client(args) as client:
        model = client.get_model(args.name)
    print_json(model) if args.json else show(model)
    return 0


def show(m: t.Model) -> None:
    c = m.config
    print(f"  {m.name}: {m.state} on {m.device} ({m.dtype}), {m.parameter_count:,} parameters")
    print(f"  source: {m.source}")
    print(f"  architecture: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, block {c.block_size}, "
          f"vocab {c.vocab_size}")
    if m.parent is not None and m.parent.source_format:  # imported: trained elsewhere, on a corpus chargpt never saw
        print(f"  imported: {m.parent.describe()}")
    else:
        print(f"  trained: corpus {m.training.corpus_name or m.training.corpus_id[:12]}, step {m.training.step}, "
              f"val loss {fmt(m.training.val_loss)}")
    if m.kv_cache_dtype:
        weights = f"{m.dtype} weights"
        if m.narrow_decode_from > 1:
            weights = f"float32 weights below a decode batch of {m.narrow_decode_from}, {m.dtype} from it"
        threads = describe_decode_threads(m.parallel_decode_from, m.split_decode_from)
        print(f"  serving: {weights}, {m.kv_cache_dtype} KV cache, {threads}")
        if m.ggml_decode_up_to:
            print(f"  decode runner: llama.cpp's ggml for batches of up to {m.ggml_decode_up_to} rows, torch above")
    if m.parent is not None:
        print(f"  fine-tuned from: {m.parent.describe()}")
    if m.error:
        print(f"  error: {m.error}")


def unload_cmd(args: argparse.Namespace) -> int:
    with inference_client(args) as client:
        client.unload_model(args.name)
    print_json({"unloaded": args.name}) if args.json else print(f"unloaded {args.name}")
    return 0


COMPLETE = ("LENGTH", "STOP")  # finish reasons of a generation that ran to its end


def generate_cmd(args: argparse.Namespace) -> int:
    """Stream (or with --json print) one generation; exit status 1 if the server cut it short (e.g. its shutdown)."""
    sampling = {"options": SamplingOptions.of({name: getattr(args, name) for name in GENERATE_FLAGS}),
                "priority": args.priority}
    with inference_client(args) as client:
        if args.json:
            whole = client.generate(args.model, args.prompt, **sampling)
            print_json(whole)
            return 0 if whole.summary.finish_reason in COMPLETE else 1
        sys.stdout.write(args.prompt)
        stream = client.generate_stream(args.model, args.prompt, **sampling)
        try:
            for chunk in stream:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        finally:
            sys.stdout.write("\n")  # an error message starts on its own line
            sys.stdout.flush()
    s = stream.summary
    if s is not None:
        # .9g: the echoed values exactly (1e-38 is not "0"); the client already shortened them to what was sent.
        print(f"[{s.generated_tokens} chars, {s.finish_reason.lower()}, seed {s.seed}, temperature "
              f"{s.temperature:.9g}, top-k {s.top_k}, top-p {s.top_p:.9g}, {s.total_seconds:.2f}s]", file=sys.stderr)
        if args.logprobs:
            result = stream.result()
            print_logprobs(result.logprobs, len(result.text))
    return 0 if s is None or s.finish_reason in COMPLETE else 1


def print_logprobs(entries: list[t.TokenLogprob], text_length: int) -> None:
    """One row per generated character: its log-probability and the top alternatives (character logprob).

    Entries past `text_length` are the matched stop sequence's characters (generated, not in the text).
    """
    width = max((len(e.top) for e in entries), default=0)
    # one rounding for every value, so the chosen character reads the same in its column and among the top N
    rows = [(i, repr(e.token) + (" (stop)" if i >= text_length else ""), f"{e.logprob:.3f}",
             *(f"{c!r} {v:.3f}" for c, v in e.top), *[""] * (width - len(e.top))) for i, e in enumerate(entries)]
    print_table(["#", "char", "logprob", *(f"top {k + 1}" for k in range(width))], rows)


def label(text: str) -> str:
    """A text as a one-line table label: quoted when empty or holding newlines or other unprintables; cut at 24."""
    shown = text if text and text.isprintable() else repr(text)
    return shown if len(shown) <= 24 else shown[:21] + "..."


def _inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    inputs = [(label(text), text) for text in args.texts]
    for name in args.file:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{'not a file' if path.exists() else 'no such file'}: {name}")
        try:
            inputs.append((name, read_text(path)))  # labelled as typed; read exactly: no newline translation
        except TextDecodeError as exc:
            raise UsageError(str(exc)) from exc
    if not inputs:
        raise UsageError("give texts to score or --file")
    return inputs


def score_cmd(args: argparse.Namespace) -> int:
    inputs = _inputs(args)
    results: list[dict[str, object]] = []
    with inference_client(args) as client:
        for model_name in [args.model, *args.compare]:
            mapping = CharMapping(client.get_model(model_name).vocabulary) if args.drop_unknown else None
            for label, text in inputs:
                dropped = 0
                if mapping is not None:
                    filtered, counts = mapping.filter(text)
                    text, dropped = filtered, sum(counts.values())
                try:
                    score = client.score(model_name, text)
                except ChargptClientError as exc:  # say which of several inputs it was
                    exc.message = f"scoring {label} with {model_name}: {exc.message}"
                    raise
                results.append({"input": label, "model": model_name, "chars": score.num_tokens + 1,
                                "dropped": dropped, "perplexity": score.perplexity,
                                "bits_per_char": score.bits_per_char, "mean_nll": score.mean_nll})
    if args.json:
        print_json(results)
        return 0
    headers = ["input", "model", "chars", "perplexity", "bits/char"] + (["dropped"] if args.drop_unknown else [])
    rows = [[r["input"], r["model"], r["chars"], r["perplexity"], r["bits_per_char"]]
            + ([r["dropped"]] if args.drop_unknown else []) for r in results]
    print_table(headers, rows)
    return 0
