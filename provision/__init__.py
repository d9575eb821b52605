"""sophon-fleet: provision Sophgo BM1684X boxes for ChatGLM4-9B, from factory state to chatting."""

__version__ = "0.1.0"
