"""The ``datakit`` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import contextlib
import sys

import click
import orjson

from datakit.convert import ConversionError, convert_file, write_dataset_info
from datakit.dedupe import DEFAULT_COSINE, DEFAULT_JACCARD, METHODS, DedupeError
from datakit.dedupe import Settings as DedupeSettings
from datakit.dedupe import dedupe as run_dedupe
from datakit.filter import DEFAULT_RULES, RULES, FilterError, Limits, filter_file, parse_rules
from datakit.formats import FORMATS, FormatError, ReadOptions
from datakit.inspect import inspect as inspect_api
from datakit.inspect import render
from datakit.io import InputError
from datakit.select import DEITA_THRESHOLD, SelectError
from datakit.select import METHODS as SELECT_METHODS
from datakit.select import Settings as SelectSettings
from datakit.select import select as run_select

FORMAT_CHOICE = click.Choice(list(FORMATS))


def _read_options(alpaca_separator: str, oasst_threads: str, lang: str | None, keep_synthetic: bool) -> ReadOptions:
    langs = tuple(x.strip() for x in lang.split(",") if x.strip()) if lang else None
    separator = alpaca_separator.encode().decode("unicode_escape")  # lets users type \n
    return ReadOptions(
        alpaca_separator=separator, oasst_threads=oasst_threads, oasst_lang=langs, oasst_keep_synthetic=keep_synthetic
    )


def read_option_flags(func):
    """The flags that steer readers, shared by convert and inspect."""
    func = click.option("--keep-synthetic", is_flag=True, help="OpenAssistant: keep synthetic messages.")(func)
    func = click.option("--lang", default=None, help="OpenAssistant: keep only these languages (comma-separated).")(
        func
    )
    func = click.option(
        "--oasst-threads",
        type=click.Choice(["all", "top"]),
        default="all",
        show_default=True,
        help="OpenAssistant: every root-to-leaf thread, or the top-ranked reply at each step.",
    )(func)
    func = click.option(
        "--alpaca-separator",
        default="\\n",
        show_default=True,
        help="Alpaca: text between instruction and input when they are joined.",
    )(func)
    return func


@click.group()
@click.version_option(package_name="datakit")
def main() -> None:
    """datakit: convert, clean and compare instruction-tuning data."""


@main.command()
@click.argument("input", type=click.Path(allow_dash=True))
@click.argument("output", type=click.Path(allow_dash=True))
@click.option("--to", "to", type=FORMAT_CHOICE, required=True, help="Output format.")
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--rejects", type=click.Path(), default=None, help="JSONL of bad records and reasons (with skip).")
@click.option("--lossy", is_flag=True, help="Apply the documented lossy rules instead of rejecting.")
@click.option(
    "--dataset-info",
    type=click.Path(),
    default=None,
    help="Also add the output to this LLaMA-Factory dataset_info.json.",
)
@click.option("--dataset-name", default=None, help="Entry name in dataset_info.json (default: output file stem).")
@click.option("--quiet", is_flag=True, help="No progress or summary on stderr.")
@read_option_flags
def convert(
    input, output, to, from_format, on_error, rejects, lossy, dataset_info, dataset_name, quiet, **read_flags
) -> None:
    """Convert INPUT to OUTPUT (.json .jsonl .parquet .csv, optionally .gz; '-' for stdin/stdout)."""
    try:
        summary = convert_file(
            input,
            output,
            to,
            from_format,
            on_error=on_error,
            rejects=rejects,
            lossy=lossy,
            read_options=_read_options(**read_flags),
            progress=not quiet and sys.stderr.isatty(),
        )
        if dataset_info:
            write_dataset_info(dataset_info, output, to, dataset_name)
    except (ConversionError, FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(summary.text(), err=True)


@main.command()
@click.argument("input", type=click.Path(allow_dash=True))
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@read_option_flags
def inspect(input, from_format, as_json, **read_flags) -> None:
    """Show what INPUT holds: format, records, turns, roles, lengths, empty fields, duplicates."""
    try:
        report = inspect_api(input, from_format, _read_options(**read_flags))
    except (FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(report))


@main.command()
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--method", type=click.Choice(list(METHODS)), default="minhash", show_default=True,
              help="exact; minhash or semantic (each after exact); all three.")  # fmt: skip
@click.option("--on", type=click.Choice(["prompt", "response", "all"]), default="all", show_default=True,
              help="Which turns make the text compared.")  # fmt: skip
@click.option("--threshold", type=float, default=None,
              help=f"Jaccard for minhash (default {DEFAULT_JACCARD}); cosine for --method semantic "
                   f"(default {DEFAULT_COSINE}).")  # fmt: skip
@click.option(
    "--cosine", type=float, default=DEFAULT_COSINE, show_default=True, help="Semantic threshold with --method all."
)
@click.option(
    "--keep", default="first", show_default=True, help="Which record of a cluster stays: first, longest, score:KEY."
)
@click.option("--clusters", type=click.Path(), default=None, help="Review file (default OUTPUT.clusters.jsonl).")
@click.option("--to", "to", type=FORMAT_CHOICE, default=None, help="Output format (default: the input's).")
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--ngram", type=int, default=5, show_default=True, help="MinHash shingle size in words.")
@click.option("--num-perm", type=int, default=128, show_default=True, help="MinHash permutations.")
@click.option("--backend", type=click.Choice(["numpy", "datasketch"]), default="numpy", show_default=True,
              help="MinHash signatures: datakit's vectorised kernel, or datasketch (the reference).")  # fmt: skip
@click.option("--model", default=None, help="Embedding model name or path (default: embedded all-MiniLM-L6-v2).")
@click.option("--no-value-guard", is_flag=True, help="Merge similar texts even when numbers or names were swapped.")
@click.option("--quiet", is_flag=True)
def dedupe(input, output, method, on, threshold, cosine, keep, clusters, to, from_format, ngram, num_perm, backend,
           model, no_value_guard, quiet) -> None:  # fmt: skip
    """Remove exact and near duplicates from INPUT, writing OUTPUT and a clusters file to review."""
    try:
        settings = DedupeSettings(
            method, on, threshold, cosine, keep, ngram, num_perm, backend, model, value_guard=not no_value_guard
        )
        summary = run_dedupe(input, output, settings=settings, clusters=clusters, to=to, from_format=from_format)
    except (DedupeError, FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(summary.text(), err=True)


@main.command(name="filter")
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option(
    "--rules", default=None, help=f"Comma-separated rules (default: {','.join(DEFAULT_RULES)}); all: {','.join(RULES)}."
)
@click.option(
    "--rejects",
    type=click.Path(),
    default=None,
    help="Rejected records with rule and reason (default OUTPUT.rejects.jsonl).",
)
@click.option("--annotate", is_flag=True, help="Keep every record; add meta.filter (failed rules) and meta.score.")
@click.option("--max-prompt", type=int, default=Limits.max_prompt, show_default=True, help="Characters (or tokens).")
@click.option(
    "--max-response", type=int, default=Limits.max_response, show_default=True, help="Characters (or tokens)."
)
@click.option("--min-response", type=int, default=Limits.min_response_chars, show_default=True, help="Characters.")
@click.option("--tokenizer", default=None, help="Count lengths in tokens of this Hugging Face tokenizer.")
@click.option("--languages", default="en", show_default=True, help="For the language rule: languages to keep.")
@click.option("--to", "to", type=FORMAT_CHOICE, default=None,
              help="Output format (default: the input's; canonical with --annotate, to keep meta).")  # fmt: skip
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--quiet", is_flag=True)
def filter_command(input, output, rules, rejects, annotate, max_prompt, max_response, min_response, tokenizer,
                   languages, to, from_format, quiet) -> None:  # fmt: skip
    """Drop (or flag) records that fail heuristic quality rules, each with its reason."""
    try:
        limits = Limits(
            min_response_chars=min_response,
            max_prompt=max_prompt,
            max_response=max_response,
            tokenizer=tokenizer,
            languages=tuple(x.strip() for x in languages.split(",") if x.strip()),
        )
        summary = filter_file(
            input, output, rules=parse_rules(rules), limits=limits, rejects=rejects, annotate=annotate, to=to,
            from_format=from_format,
        )  # fmt: skip
    except (FilterError, FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(summary.text(), err=True)


@main.command(name="select")
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--k", "k", type=float, required=True, help="How many records (a count, or a share below 1).")
@click.option("--method", type=click.Choice(SELECT_METHODS), default="kcenter", show_default=True)
@click.option("--score", default=None, help="meta key to rank by (deita needs one; cluster uses it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--on", type=click.Choice(["prompt", "response", "all"]), default="all", show_default=True)
@click.option("--model", default=None, help="Embedding model name or path (default: embedded all-MiniLM-L6-v2).")
@click.option("--threshold", type=float, default=DEITA_THRESHOLD, show_default=True, help="deita: cosine limit.")
@click.option("--clusters", type=int, default=None, help="cluster: number of k-means clusters (default about sqrt(k)).")
@click.option("--plot", type=click.Path(), default=None, help="PNG of the 2-D projection (default OUTPUT.png).")
@click.option(
    "--to", "to", type=FORMAT_CHOICE, default=None, help="Output format (default: canonical, which keeps meta)."
)
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--quiet", is_flag=True)
def select_command(input, output, k, method, score, seed, on, model, threshold, clusters, plot, to, from_format,
                   quiet) -> None:  # fmt: skip
    """Choose K records of INPUT: k-center, DEITA-style score-first, cluster-stratified or random."""
    try:
        settings = SelectSettings(k, method, score, seed, on, model, threshold, clusters)
        summary = run_select(
            input, output, settings=settings, to=to, from_format=from_format, plot=plot or f"{output}.png"
        )
    except (SelectError, DedupeError, FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(summary.text(), err=True)


@main.command(name="synth")
@click.argument("method", type=click.Choice(["self-instruct", "evol", "backtranslate", "judge"]))
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--base-url", required=True, help="An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", required=True, help="The model name the server knows.")
@click.option(
    "--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the key."
)
@click.option("--concurrency", type=int, default=2, show_default=True)
@click.option("--max-requests", type=int, default=None, help="Stop after sending this many requests.")
@click.option("--budget-tokens", type=int, default=None, help="Stop once this many tokens are used (cached included).")
@click.option(
    "--price-per-million", type=float, default=None, help="Dollars per million tokens, for the cost estimate."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--cache", type=click.Path(), default=None, help="SQLite cache (default: $DATAKIT_CACHE_DIR/synth.sqlite)."
)
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--threshold", type=float, default=None, help="judge: keep >= (default 4.5); backtranslate: (default 4).")
@click.option("--rounds", type=int, default=2, show_default=True, help="evol and self-instruct rounds.")
@click.option("--count", type=int, default=20, show_default=True, help="self-instruct: new instructions to aim for.")
@click.option("--json-mode", is_flag=True, help="Ask for response_format json_object (where the server supports it).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds per request.")
@click.option("--retries", type=int, default=4, show_default=True)
@click.option("--quiet", is_flag=True)
def synth_command(method, input, output, base_url, model, api_key_env, concurrency, max_requests, budget_tokens,
                  price_per_million, seed, cache, max_tokens, temperature, threshold, rounds, count, json_mode,
                  timeout, retries, quiet) -> None:  # fmt: skip
    """Make data with an LLM: self-instruct, evol, backtranslate (Humpback) or judge (AlpaGasus)."""
    from datakit.embed import cache_dir
    from datakit.synth import ClientSettings, MethodSettings, synth

    client = ClientSettings(base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                            timeout=timeout, max_retries=retries, max_requests=max_requests, budget_tokens=budget_tokens,
                            price_per_million=price_per_million, cache=cache or cache_dir() / "synth.sqlite")  # fmt: skip
    settings = MethodSettings(seed=seed, max_tokens=max_tokens, temperature=temperature, threshold=threshold,
                              rounds=rounds, count=count, json_mode=json_mode)  # fmt: skip
    try:
        summary = synth(method, input, output, client, settings, progress=not quiet and sys.stderr.isatty())
    except (ConversionError, FormatError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(summary.text(), err=True)
    if summary.stopped:
        sys.exit(3)


@main.command("train")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML file with the same keys (flags override it).",
)
@click.option("--data", multiple=True, help="Training data in any format convert reads (repeatable).")
@click.option("--model", default=None, help="smollm2-135m (embedded, default), a Hugging Face id or a folder.")
@click.option("--out", default=None, help="Output folder (adapter/, loss.jsonl, loss.png, checkpoints/).")
@click.option("--template", default=None, help="tokenizer (default), chatml, alpaca, vicuna, llama2 or plain.")
@click.option(
    "--train-on", type=click.Choice(["all", "last"]), default=None, help="Assistant turns trained (default all)."
)
@click.option("--lora-r", type=int, default=None, help="LoRA rank (default 8).")
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha (default 16).")
@click.option("--lora-dropout", type=float, default=None, help="LoRA dropout (default 0.05).")
@click.option("--target", default=None, help="LoRA target modules: all-linear (default) or names, comma-separated.")
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA.")
@click.option("--qlora", is_flag=True, help="4-bit QLoRA (needs CUDA and bitsandbytes).")
@click.option("--epochs", type=float, default=None, help="Passes over the data (default 1).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 2e-4), warmup then cosine.")
@click.option("--batch-size", type=int, default=None, help="Rows per micro-batch (default 8).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step (default 1).")
@click.option("--max-length", type=int, default=None, help="Tokens per row (default 256).")
@click.option("--packing", is_flag=True, default=None, help="Several records per row, without cross-attention.")
@click.option("--seed", type=int, default=None)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=None,
    help="Base weights: auto = bf16 where the hardware has it (adapters stay fp32).",
)
@click.option("--no-gradient-checkpointing", "no_checkpointing", is_flag=True, help="Faster, more memory.")
@click.option("--save-every", type=int, default=None, help="Steps between checkpoints (default 50).")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint in --out.")
@click.option("--merge", is_flag=True, default=None, help="Also write a standalone merged model (out/merged).")
@click.option("--threads", type=int, default=None, help="torch threads on CPU.")
@click.option("--quiet", is_flag=True)
def train_command(config_file, data, full, qlora, no_checkpointing, quiet, **flags) -> None:
    """Fine-tune a model on a dataset: LoRA (default), full or QLoRA, loss on assistant turns only."""
    from train import ConfigError, TrainConfig, TrainError, fit

    if full and qlora:
        raise click.UsageError("--full and --qlora exclude each other")
    flags["data"] = list(data) or None
    flags["method"] = "full" if full else "qlora" if qlora else None
    flags["gradient_checkpointing"] = False if no_checkpointing else None
    values = {k: v for k, v in flags.items() if v is not None}
    try:
        config = TrainConfig.from_yaml(config_file, **values) if config_file else TrainConfig.from_dict(values, "flags")
        if not config.data:
            raise ConfigError("data: give at least one --data file")
        result = fit(config, progress=not quiet)
    except (ConfigError, TrainError, ConversionError, FormatError, InputError) as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        dropped = ", ".join(f"{n} {reason}" for reason, n in result.dropped.items()) or "none"
        click.echo(
            f"trained {result.steps} steps on {result.records - sum(result.dropped.values())} of {result.records} "
            f"records (dropped: {dropped}); final loss {result.final_loss:.4f}; {result.tokens_per_s:,.0f} tokens/s; "
            f"peak {result.peak_rss_gb} GB\nadapter: {result.adapter}\nmodel: {result.model}",
            err=True,
        )


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="Embedded name, Hugging Face id or folder.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--faults", default="", help="Testing: faults for the first requests, e.g. 429,500,hang,truncated.")
@click.option("--log", type=click.Path(), default=None, help="Testing: a JSONL line per request the model answered.")
@click.option("--threads", type=int, default=None, help="torch threads.")
def serve(model, host, port, faults, log, threads) -> None:
    """Serve a chat model on an OpenAI-compatible HTTP API (for synth; testing and small jobs)."""
    from datakit.serve import ChatModel, ChatServer

    server = ChatServer((host, port), ChatModel(model, threads), faults=[f for f in faults.split(",") if f], log=log)
    click.echo(f"serving {model} at {server.url}", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops it
        server.serve_forever()


@main.command()
@click.option("--prepare", is_flag=True, help="Also fetch and convert the embedded LLM now.")
def models(prepare) -> None:
    """List the embedded models and where they are."""
    from datakit.models import describe, hf_folder

    if prepare:
        hf_folder()
    for row in describe():
        click.echo(f"{row['name']:<18} {row['kind']:<20} {row['source']}\n{'':<18} {row['path']}")


if __name__ == "__main__":
    main()
