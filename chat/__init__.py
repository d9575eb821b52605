"""The ChatGLM4 runtime that runs on a BM1684X box (Python 3.8; numpy, tiktoken, optional sentencepiece and
`sophon.sail`): tokenizer, chat template, GLM-4 generation over the bmodel's SAIL graphs, an interactive REPL
(`python3 -m chat`), a JSON-lines server (`python3 -m chat serve --stdio`), `selftest` and `info`."""

__version__ = "0.1.0"
