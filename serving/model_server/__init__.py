"""kiln-model-server: a protocol-exact local stand-in for tensorflow_model_server (entry point: main.py)."""
