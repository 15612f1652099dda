"""`chimera serve`'s options (no web-stack import here, so `--help` works without the serve extra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro


@dataclass
class ServeConfig:
    """Serve a checkpoint directory (HF NemotronH format, e.g. runs/<run>/model) over an OpenAI-compatible API:
    /v1/models, /v1/chat/completions, /v1/completions (streaming, reasoning budget, tools)."""

    checkpoint: Annotated[str, tyro.conf.Positional]
    """Checkpoint directory with config.json and safetensors (and tokenizer.json, if it has its own)."""
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    """Rows decoded together; more requests wait for a free row."""
    compile: bool = False
    """Decode with a torch.compile'd step (the first requests compile, 1-2 min)."""
    context: int = 0
    """Positions per sequence, prompt and completion together (0: the checkpoint's max_position_embeddings,
    else 4096)."""
    max_n: int = 16
    """The largest `n` (choices per request) accepted."""
    served_model_name: str = ""
    """The model id clients send (default: the checkpoint argument as given)."""
    device: str = "auto"
    """cpu, cuda, cuda:1, ... (auto: cuda when available)."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be at least 1")
        if self.context < 0:
            raise ValueError(f"--context={self.context} must be >= 0 (0: from the checkpoint)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port={self.port} is not a TCP port (0-65535)")

    def torch_device(self) -> str:
        """The device the model goes on (auto: cuda when available)."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
