"""The ``datakit`` command: a thin layer that parses arguments and calls the Python API.

The data steps' commands (dedupe, filter, select, synth, shuffle, corrupt) are generated from
the step registry (datakit.pipeline): their flags come from each step's config dataclass, so a
flag, its recipe key, its help and its checks cannot drift apart. How a command ends on an
error or an interruption is decided in one place, datakit.commands.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click
import orjson

from datakit import pipeline
from datakit.commands import Commands
from datakit.convert import check_dataset_info, convert_file, write_dataset_info
from datakit.formats import FORMATS, ReadOptions
from datakit.inspect import inspect as inspect_api
from datakit.inspect import render, write_page
from datakit.io import refuse_overwrite

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


@click.group(cls=Commands)
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
    if dataset_info:
        refuse_overwrite([input], [output, rejects, dataset_info])
        check_dataset_info(dataset_info, to)
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
    if not quiet:
        click.echo(summary.text(), err=True)


@main.command()
@click.argument("input", type=click.Path(allow_dash=True))
@click.option("--from", "from_format", type=FORMAT_CHOICE, default=None, help="Input format (detected if left out).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--html", "page", default=None, help="Also write a dataset card to this HTML file (self-contained).")
@read_option_flags
def inspect(input, from_format, as_json, page, **read_flags) -> None:
    """Show what INPUT holds: format, records, turns, roles, lengths, empty fields, duplicates."""
    if page is not None:
        refuse_overwrite([input], [page])
    report = inspect_api(input, from_format, _read_options(**read_flags), detail=page is not None)
    if page is not None:
        click.echo(f"dataset card: {write_page(report, page)}", err=True)
        report = {k: v for k, v in report.items() if k not in ("values", "sample")}
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(report))


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
@click.option(
    "--method",
    "method_name",
    default=None,
    help="lora (default), dora, rslora, qlora, ia3, prompt, ptuning, prefix (P-tuning v2) or full.",
)
@click.option("--virtual-tokens", type=int, default=None, help="prompt, ptuning, prefix: trained tokens (default 20).")
@click.option("--full", is_flag=True, help="Full fine-tuning (--method full).")
@click.option("--qlora", is_flag=True, help="4-bit QLoRA, needs CUDA and bitsandbytes (--method qlora).")
@click.option("--epochs", type=float, default=None, help="Passes over the data (default 1).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 2e-4), warmup then cosine.")
@click.option("--batch-size", type=int, default=None, help="Rows per micro-batch (default 8).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step (default 1).")
@click.option("--max-length", type=int, default=None, help="Tokens per row (default 256).")
@click.option("--packing", is_flag=True, default=None, help="Several records per row, without cross-attention.")
@click.option("--seed", type=int, default=None)
@click.option("--order", default=None, help="shuffled (default), as_given, by_length, by_source or curriculum:KEY.")
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
@click.option(
    "--fsdp", is_flag=True, default=None, help="Under torchrun: shard weights, gradients and optimizer state (FSDP2)."
)
@click.option("--quiet", is_flag=True)
def train_command(config_file, data, method_name, full, qlora, no_checkpointing, quiet, **flags) -> None:
    """Fine-tune a model on a dataset: LoRA (default) or another method, loss on assistant turns only."""
    from train import ConfigError, TrainConfig, fit

    if sum(bool(x) for x in (method_name, full, qlora)) > 1:
        raise click.UsageError("--method, --full and --qlora exclude each other")
    flags["data"] = list(data) or None
    flags["method"] = "full" if full else "qlora" if qlora else method_name
    flags["gradient_checkpointing"] = False if no_checkpointing else None
    values = {k: v for k, v in flags.items() if v is not None}
    config = TrainConfig.from_yaml(config_file, **values) if config_file else TrainConfig.from_dict(values, "flags")
    if not config.data:
        raise ConfigError("data: give at least one --data file")
    result = fit(config, progress=not quiet)
    if not quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, the main process reports
        dropped = ", ".join(f"{n} {reason}" for reason, n in result.dropped.items()) or "none"
        click.echo(
            f"trained {result.steps} steps on {result.records - sum(result.dropped.values())} of {result.records} "
            f"records (dropped: {dropped}); final loss {result.final_loss:.4f}; {result.tokens_per_s:,.0f} tokens/s; "
            f"peak {result.peak_rss_gb} GB\nadapter: {result.adapter}\nmodel: {result.model}",
            err=True,
        )


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="Embedded name, Hugging Face id or folder.")
@click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="transformers: one request at a time, in this process. vllm: vLLM's server, batching concurrent "
    "requests (its own environment is created on first use).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="vllm: serve a LoRA adapter as model NAME."
)
@click.option(
    "--dtype",
    default=None,
    help="vllm: weight dtype (bfloat16, float32, auto: the model's); default: "
    "bfloat16 on a GPU or a CPU with AMX, else float32 (faster there).",
)
@click.option("--faults", default="", help="Testing: faults for the first requests, e.g. 429,500,hang,truncated.")
@click.option("--log", type=click.Path(), default=None, help="Testing: a JSONL line per request the model answered.")
@click.option("--threads", type=int, default=None, help="torch threads.")
def serve(model, engine, host, port, adapters, dtype, faults, log, threads) -> None:
    """Serve a chat model on an OpenAI-compatible HTTP API (for synth and evals)."""
    if engine == "vllm":
        from datakit.errors import DatakitError
        from datakit.models import resolve_llm
        from datakit.vllm import VllmServer

        if faults or log or threads:
            raise DatakitError("--faults, --log and --threads belong to --engine transformers")
        modules = dict(a.split("=", 1) for a in adapters if "=" in a)
        if len(modules) != len(adapters):
            raise DatakitError("--adapter: expected NAME=DIR")
        server = VllmServer(resolve_llm(model), model, modules, dtype=dtype, host=host, port=port,
                            log=lambda line: click.echo(line, err=True))  # fmt: skip
        with server:
            click.echo(f"serving {model} at {server.url} (vLLM; its log: {server.log_file})", err=True)
            server.wait()
        return
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


# --- the data steps, one command each, made from the registry ------------------------------


def make_executor(name: str, address: str | None, workdir: str | None, workers: int | None = None):
    if name == "ray":
        from datakit.ray_executor import RayExecutor

        return RayExecutor(address=address, workdir=workdir)
    return pipeline.LocalExecutor(workdir=workdir, workers=workers)


def step_command(cls: type[pipeline.Step]) -> click.Command:
    """``datakit <step> [ARGS] INPUT OUTPUT`` with a flag per config field and per side output."""
    config_params = cls.Config.click_params()
    params: list[click.Parameter] = [p for p in config_params if isinstance(p, click.Argument)]
    params += [click.Argument(["input"], type=click.Path()), click.Argument(["output"], type=click.Path())]
    params += [p for p in config_params if not isinstance(p, click.Argument)]
    for name, side in cls.side_outputs.items():
        params.append(click.Option([f"--{name}", f"side_{name}"], type=click.Path(), default=None,
                                   help=f"{side.help} (default OUTPUT{side.suffix})"))  # fmt: skip
    params += [
        click.Option(["--to", "to"], type=FORMAT_CHOICE, default=None, help="Output format (default: the input's)."),
        click.Option(["--from", "from_format"], type=FORMAT_CHOICE, default=None, help="Input format (detected)."),
        click.Option(["--quiet"], is_flag=True, help="No summary on stderr."),
        click.Option(["--executor"], type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process, bounded memory; ray: a Ray cluster (pip install 'datakit[ray]')."),
        click.Option(["--address"], default=None, help="ray: the cluster's address (default: RAY_ADDRESS or a new local one)."),
        click.Option(["--workdir"], type=click.Path(file_okay=False), default=None,
                     help="Folder for intermediate tables (ray: one every node can read; default: a temp folder)."),
        click.Option(["--workers"], type=click.IntRange(min=1), default=None,
                     help="local: processes that scan a JSON-lines input (default: one per core, at most 8, for 64 MB "
                          "or more; 1: none). Steps that load a model (semantic dedupe) scan in this process."),
    ]  # fmt: skip
    config_keys = [p.name for p in config_params]

    def callback(input, output, to, from_format, quiet, executor, address, workdir, workers, **values) -> None:
        sides = {name: values.pop(f"side_{name}") for name in cls.side_outputs}
        config = cls.Config.from_mapping({k: values[k] for k in config_keys})
        result = pipeline.run(cls, input, output, config=config, to=to, from_format=from_format,
                              side_paths=sides, executor=make_executor(executor, address, workdir, workers),
                              resources={"progress": not quiet and sys.stderr.isatty()})  # fmt: skip
        if not quiet:
            click.echo(result.report.text(), err=True)
        if result.report.stopped:
            sys.exit(3)  # stopped by a budget or limit: the output holds what was done

    return click.Command(cls.name, params=params, callback=callback, help=cls.help())


for _step in pipeline.steps().values():
    main.add_command(step_command(_step))


if __name__ == "__main__":
    main()
