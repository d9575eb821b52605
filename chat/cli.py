"""Command line of the runtime (`python3 -m chat ...`), argparse only.

    python3 -m chat --bmodel B --token T [--dev-id N]      interactive, like the seed: Question:/Answer:,
                                                          `exit` quits, `/reset` forgets the history
    python3 -m chat serve --stdio [--bmodel B --token T]   JSON-lines server (chat/protocol.py)
    python3 -m chat serve --http ADDR:PORT [--api-key-file F] [--queue 8] [--model-name M] [--variant V]
                                                          OpenAI Chat Completions (chat/http_server.py)
    python3 -m chat selftest [--bmodel B --token T]        load, generate a few tokens, print one JSON line
    python3 -m chat info --bmodel B [--json]               graph summary of a bmodel

Defaults for --bmodel/--token: $SOPHON_CHAT_BMODEL / $SOPHON_CHAT_TOKEN, else the seed's paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, TextIO

from . import bmodel_info
from .errors import ChatError, ModelError, PromptTooLongError
from .generate import ChatSession, Done, generate
from .http_server import serve_http
from .model import GlmModel
from .openai_api import split_addr
from .server import StdioServer
from .template import apply_chat_template
from .tokenizer import load_tokenizer

SUBCOMMANDS = ("serve", "selftest", "info")
SELFTEST_PROMPT = "你好"


def _add_model_options(parser: argparse.ArgumentParser, token: bool = True) -> None:
    bmodel = os.environ.get("SOPHON_CHAT_BMODEL", "./models/BM1684X/glm4-9b_int4_1dev.bmodel")
    parser.add_argument("--bmodel", default=bmodel, help="ChatGLM4 bmodel (default: %(default)s)")
    if token:
        token_dir = os.environ.get("SOPHON_CHAT_TOKEN", "./python/token_config/")
        parser.add_argument(
            "--token", default=token_dir, help="token config directory (default: %(default)s)"
        )
    parser.add_argument("--dev-id", "--dev_id", dest="dev_id", type=int, default=0, help="TPU device id")


def build_parser(command: Optional[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m chat" + (" " + command if command else ""),
        description=__doc__.split("\n\n")[1] if command is None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(parser, token=command != "info")
    if command == "serve":
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--stdio", action="store_true", help="serve JSON lines on stdin/stdout")
        mode.add_argument("--http", metavar="ADDR:PORT", type=_address, help="serve the OpenAI API over HTTP")
        parser.add_argument(
            "--api-key-file",
            help="file holding the API key required off loopback (default: $SOPHON_CHAT_API_KEY_FILE)",
            default=os.environ.get("SOPHON_CHAT_API_KEY_FILE"),
        )
        parser.add_argument("--queue", type=int, default=8, help="requests that may wait (default: 8)")
        parser.add_argument("--model-name", help="model id clients ask for (default: the bmodel's name)")
        parser.add_argument("--variant", default="", help="variant reported by /health (int4, int8)")
    elif command == "selftest":
        parser.add_argument("--tokens", type=int, default=8, help="how many tokens to generate")
    elif command == "info":
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _address(value: str):
    try:
        return split_addr(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def read_api_keys(path: Optional[str]) -> List[str]:
    """The keys in `path` (one per line); none when no file is given.

    Raises:
        ChatError: the file cannot be read or holds no key.
    """
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            keys = [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise ChatError("cannot read the API key file %s: %s" % (path, error.strerror))
    if not keys:
        raise ChatError("the API key file %s holds no key" % path)
    return keys


def serve_http_command(args: argparse.Namespace) -> None:
    keys = read_api_keys(args.api_key_file)
    model_id = args.model_name or os.path.basename(args.bmodel).rsplit(".bmodel", 1)[0]
    sys.stderr.write("chat: serving %s on http://%s:%d\n" % (model_id, args.http[0], args.http[1]))
    serve_http(args.http, lambda: load_session(args)[0], model_id, args.variant, keys, args.queue)


def load_session(args: argparse.Namespace):
    """(session, load seconds): tokenizer first (cheap, fails fast on a bad token config), then the bmodel."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(args.token)
    model = GlmModel(args.bmodel, args.dev_id)
    return ChatSession(model, tokenizer), time.perf_counter() - started


def run_repl(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """The seed's loop: `Question: ` prompt, streamed `Answer: `, FTL/TPS after each answer."""
    while True:
        stdout.write("\nQuestion: ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            break
        question = line.rstrip("\n")
        if question.strip() == "exit":
            break
        if question.strip() == "/reset":
            session.reset()
            stdout.write("(history cleared)\n")
            continue
        stdout.write("\nAnswer: \n")
        try:
            for event in session.chat(question):
                if isinstance(event, Done):
                    stdout.write("\n\n\nFTL: %.3f s\nTPS: %.3f token/s\n" % (event.ftl_s, event.tps))
                else:
                    stdout.write(event.text)
                stdout.flush()
        except PromptTooLongError as error:
            stdout.write("input length is too long: %s\n" % error)
    stdout.write("all done\n")


def selftest(args: argparse.Namespace) -> dict:
    """Load, generate `args.tokens` tokens greedily for SELFTEST_PROMPT (EOS does not stop it, so FTL/TPS
    always cover the same work), report one JSON object."""
    session, load_s = load_session(args)
    prompt = apply_chat_template(session.tokenizer, [{"role": "user", "content": SELFTEST_PROMPT}])
    done = None
    for event in generate(session.model, session.tokenizer, prompt, args.tokens, stop_at_eos=False):
        if isinstance(event, Done):
            done = event
    return {
        "ok": done is not None and done.tokens > 0,
        "model": os.path.basename(args.bmodel),
        "tokens": done.tokens if done else 0,
        "stop": done.stop if done else None,
        "ftl_s": round(done.ftl_s, 4) if done else None,
        "tps": round(done.tps, 3) if done else None,
        "load_s": round(load_s, 3),
        "seqlen": session.model.seqlen,
    }


def info(args: argparse.Namespace, stdout: TextIO) -> None:
    """A real bmodel is read from its bytes (no SAIL needed): what `model_tool --info` prints. Anything else
    (the emulator's stand-ins) is loaded through SAIL and summarised from the engine."""
    try:
        real = bmodel_info.read_bmodel_info(args.bmodel)
    except bmodel_info.BmodelError as error:
        if "magic" not in str(error):
            raise ModelError(str(error))
        real = None
    except OSError as error:
        raise ModelError("%s: %s" % (args.bmodel, error))
    if real is not None:
        if args.json:
            stdout.write(json.dumps(bmodel_info.summary(real)) + "\n")
        else:
            stdout.write("\n".join(bmodel_info.format_info(real)) + "\n")
        return
    model = GlmModel(args.bmodel, args.dev_id)
    summary = model.summary()
    if args.json:
        stdout.write(json.dumps(summary) + "\n")
        return
    for key, value in summary.items():
        stdout.write("%-9s %s\n" % (key + ":", value))
    engine = model.engine
    for graph in model.graph_names:
        inputs = ["%s%s" % (n, engine.get_input_shape(graph, n)) for n in engine.get_input_names(graph)]
        outputs = ["%s%s" % (n, engine.get_output_shape(graph, n)) for n in engine.get_output_names(graph)]
        stdout.write("  %-20s %s -> %s\n" % (graph, " ".join(inputs), " ".join(outputs)))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    try:
        if command == "selftest":
            report = selftest(args)
            sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
            return 0 if report["ok"] else 1
        if command == "info":
            info(args, sys.stdout)
            return 0
        if command == "serve" and args.http:
            serve_http_command(args)
            return 0
        session, load_s = load_session(args)
        if command == "serve":
            StdioServer(
                session, os.path.basename(args.bmodel), load_s, sys.stdin.buffer, sys.stdout.buffer
            ).serve()
        else:
            run_repl(session, sys.stdin, sys.stdout)
        return 0
    except ChatError as error:
        if command == "selftest":
            sys.stdout.write(json.dumps({"ok": False, "error": error.code, "message": str(error)}) + "\n")
        else:
            sys.stderr.write("error: %s\n" % error)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # selftest must always answer with its one JSON line
        if command != "selftest":
            raise
        sys.stdout.write(json.dumps({"ok": False, "error": "internal", "message": repr(error)}) + "\n")
        return 1
