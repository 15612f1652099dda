"""`chimera serve`: an OpenAI-compatible server on the inference engine.

- ``protocol.py``: the request bodies, their validation, the OpenAI error shape (``APIError``);
- ``chat.py``: messages, tools and the thinking switch rendered with the checkpoint's chat template;
- ``parsing.py``: tokens -> text (``Detokenizer``), stop strings (``StopMatcher``), reasoning / content /
  tool calls (``OutputParser``), incrementally, so streams and whole answers agree;
- ``engine_loop.py``: the one thread that owns and steps the ``Engine`` (continuous batching);
- ``app.py``: the FastAPI app (``create_app``) and ``serve`` (uvicorn), needing the ``serve`` extra.

Importing this package imports no web stack; ``chimera.serve.app`` does.
"""
