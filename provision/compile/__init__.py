"""tpu-mlir pipeline: Hugging Face GLM-4 weights -> ONNX graphs -> ChatGLM4 bmodel (own Python 3.10 venv)."""
