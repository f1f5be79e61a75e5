"""Model files: v1 ``.params``/``.spiece``, v2 safetensors/tokenizer.json, model directories,
loading them into an engine, and converting between the layouts."""
