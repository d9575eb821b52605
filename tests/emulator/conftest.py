from tests.chat.conftest import model, standin, standin_int8, tokenizer  # noqa: F401 (fixtures)
