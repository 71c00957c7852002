"""A Genesys Cloud emulator: a real HTTP server that behaves like the service (DESIGN §7).

- `create_app(config)`: the ASGI application (Starlette).
- `serve_in_background(config, host, port)`: serve it on the running event loop.
- `run(config, host, port)`: serve it until a signal (the `emulator` command).
- `processor.emulator.testing.EmulatorHandle`: drive a running emulator from tests.

Importing this package imports neither Starlette nor uvicorn; the submodules do.
"""

from __future__ import annotations
