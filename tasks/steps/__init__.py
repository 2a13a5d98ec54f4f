"""The pipeline's steps, one module each: `run(config, ctx, **input_uris) -> {output: uri}`.

A step module imports artifact kinds, the model library and shared helpers, never another step module;
their order, inputs and outputs are declared in `tasks.registry`.
"""
