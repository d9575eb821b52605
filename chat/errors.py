"""The runtime's errors. Each carries a short machine `code` (used in the JSON-lines protocol) and a message
that names the file or value at fault.

    ChatError
    ├── TokenizerError      token config missing or broken (names the file)
    ├── ModelError          bmodel missing, not loadable, or not shaped like a ChatGLM4 bmodel
    ├── PromptTooLongError  the prompt cannot fit the model's SEQLEN budget
    └── ProtocolError       a JSON-lines request that is not valid
"""

from __future__ import annotations


class ChatError(Exception):
    code = "error"


class TokenizerError(ChatError):
    code = "tokenizer"


class ModelError(ChatError):
    code = "model"


class PromptTooLongError(ChatError):
    code = "too_long"


class ProtocolError(ChatError):
    code = "bad_request"
