"""`sophon-fleet chat HOST`: chat with ChatGLM4 on a box, streaming, from this terminal."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from provision.cli.completion import complete_hosts
from provision.cli.errors import reports_errors
from provision.cli.hosts import connector_for, fleet_manifest, host_options, one_host, reach_from
from provision.cli.options import json_option, model_option
from provision.cli.output import Output, safe
from provision.facts.parse import gather
from provision.runtime.remote_chat import ChatClient, Done, Token, choose_variant, runtime_session

HELP_LINE = (
    "/reset forgets the conversation, /stats shows counters, /exit (or Ctrl-D) quits; Ctrl-C stops an answer"
)


@click.command("chat")
@click.argument("host", shell_complete=complete_hosts)
@host_options
@model_option
@click.option(
    "--variant",
    metavar="auto|VARIANT",
    default="auto",
    show_default=True,
    help="Which deployed variant (auto: int8 when verified on the box, else int4).",
)
@click.option("--prompt", "-p", help="Ask once, stream the answer to stdout and exit.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Cap each answer.")
@json_option(
    help="Machine-readable output: JSON lines, one event per line (ready, token..., done), each with a "
    "versioned `schema`."
)
@click.pass_obj
@reports_errors
def chat(
    out: Output,
    host: str,
    model: str,
    variant: str,
    prompt: str | None,
    max_new_tokens: int | None,
    **kwargs: Any,
) -> None:
    """Chat with the model on HOST (checks the box is ready first; says what is missing and the fix).

    \b
    Examples:
      sophon-fleet chat se7-1 -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet chat se7-1 -i hosts.yml --prompt '你好' --variant int4
      sophon-fleet chat linaro@192.168.150.1 -K --prompt 'hello' --json
    """
    reach = reach_from(kwargs)
    inv, target = one_host(reach, host)
    inv = dataclasses.replace(inv, hosts=(target,))
    manifest = fleet_manifest(model, inv)
    manifest.check_variant(variant)
    with connector_for(reach, inv) as connector:
        transport = connector.transport(inv.hosts[0])
        chosen = choose_variant(gather(transport), manifest, variant, inv.hosts[0].name)
        with runtime_session(transport, manifest, chosen, inv.hosts[0].name) as client:
            with out.err.status(f"loading {manifest.title} {chosen} on {inv.hosts[0].name} ..."):
                ready = client.wait_ready()
            out.info(
                f"{inv.hosts[0].name}: {manifest.title} {chosen} loaded in {ready.load_s:.2f} s "
                f"(SEQLEN {ready.seqlen})"
            )
            if out.json:
                out.json_line({"event": "ready", **dataclasses.asdict(ready)})
            if prompt is not None:
                answer(out, client, prompt, max_new_tokens)
            else:
                repl(out, client, max_new_tokens)


def answer(out: Output, client: ChatClient, prompt: str, max_new_tokens: int | None) -> Done | None:
    """Stream one answer; Ctrl-C cancels it (a second Ctrl-C leaves)."""
    events = client.chat(prompt, max_new_tokens=max_new_tokens)
    done: Done | None = None
    cancelled = False
    while done is None:
        try:
            event = next(events)
        except KeyboardInterrupt:
            if cancelled:
                raise
            cancelled = True
            client.cancel()
            continue
        if isinstance(event, Token):
            emit_token(out, event)
        else:
            done = event
    if out.json:
        out.json_line({"event": "done", **dataclasses.asdict(done)})
    else:
        click.echo()
        out.info(f"FTL: {done.ftl_s:.3f} s  TPS: {done.tps:.3f} token/s  ({done.tokens} tokens, {done.stop})")
    return done


def emit_token(out: Output, event: Token) -> None:
    if out.json:
        out.json_line({"event": "token", "text": event.text})
    else:
        click.echo(safe(event.text), nl=False)


def repl(out: Output, client: ChatClient, max_new_tokens: int | None) -> None:
    out.info(HELP_LINE)
    stdin = sys.stdin
    while True:
        click.echo("\nQuestion: ", nl=False)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            click.echo()
            return
        text = line.strip()
        if not line or text in ("/exit", "exit"):
            if not line or not stdin.isatty():  # EOF, or a piped `exit`: nothing ended the prompt's line
                click.echo()
            return
        if text == "/reset":
            client.reset()
            out.info("history cleared")
        elif text == "/stats":
            out.text(json.dumps(client.stats(), indent=2))
        elif text.startswith("/") and not text.startswith("//"):
            out.warn(f"unknown command {text.split()[0]!r}: {HELP_LINE} (start with // to send a '/')")
        elif text:
            text = text[1:] if text.startswith("//") else text
            click.echo("Answer: ", nl=False)
            try:
                answer(out, client, text, max_new_tokens)
            except KeyboardInterrupt:
                return
