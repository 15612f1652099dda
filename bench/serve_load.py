"""Load test of `chimera serve` on localhost, against the same engine driven directly.

The server runs as `chimera serve` in its own process (a checkpoint of random weights written to a
temporary folder); this process is the clients: ``C`` concurrent clients (1, 8, 32), each sending
``--requests`` streamed chat completions one after another (distinct prompts, ``--max-tokens`` each,
``ignore_eos`` so every answer has that length, sampled at temperature 1), no new request after
``--time-limit`` seconds. Per level: requests/s, generated tokens/s (from the usage counts), latency
and time to first token (p50 / p99), errors. The baseline is the same prompts, token limits and
sampler submitted at once to an ``Engine`` of ``C`` rows in this process: the server's overhead is
the HTTP, JSON, detokenisation and scheduling around the same decode steps (and, on one machine,
the clients' own CPU time, which the direct engine does not pay).

    python bench/serve_load.py            # -> results/serve_load.json
    python bench/serve_load.py --quick    # tiny model, few requests: checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def prompt(client: int, i: int) -> str:
    return f"Client {client}, request {i}: describe the number {client * 1000 + i} in a few words."


async def one_request(http, url: str, text: str, max_tokens: int, seed: int) -> dict:
    """One streamed chat completion -> latency, time to first token, tokens, error."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 1.0, "seed": seed, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "chat_template_kwargs": {"enable_thinking": False}}
    t0 = time.perf_counter()
    ttft, tokens, error = None, 0, None
    try:
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]["message"]
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    d = c.get("delta", {})
                    if ttft is None and (d.get("content") or d.get("reasoning_content")):
                        ttft = time.perf_counter() - t0
    except Exception as e:  # a failed request is counted, not fatal
        return {"error": f"{type(e).__name__}: {e}"}
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens, "error": error}


async def load_level(url: str, clients: int, requests: int, max_tokens: int, time_limit: float) -> dict:
    import httpx

    results: list[dict] = []
    t0 = time.perf_counter()

    async def client(c: int, http) -> None:
        for i in range(requests):
            if time.perf_counter() - t0 > time_limit:
                return
            results.append(await one_request(http, url, prompt(c, i), max_tokens, seed=c * 1000 + i))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.get("error") is None]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(results), "completed": len(ok), "errors": len(results) - len(ok),
            "error_messages": sorted({r["error"] for r in results if r.get("error")})[:5],
            "seconds": wall, "requests_per_s": len(ok) / wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99)}


def direct(model, clients: int, requests: int, max_tokens: int) -> dict:
    """The level's requests submitted at once to an Engine of ``clients`` rows in this process."""
    from chimera.inference import Engine, Request, Sampler
    from chimera.serve.chat import render
    from chimera.serve.protocol import ChatCompletionBody
    from chimera.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    reqs = []
    for c in range(clients):
        for i in range(requests):
            body = ChatCompletionBody.model_validate({
                "model": MODEL, "messages": [{"role": "user", "content": prompt(c, i)}],
                "chat_template_kwargs": {"enable_thinking": False}})
            ids = tok.encode(render(body, tok).text)
            reqs.append(Request(ids, max_tokens, Sampler(1.0), seed=c * 1000 + i, key="choice 0"))
    capacity = max(len(r.prompt) for r in reqs) + max_tokens
    engine = Engine(model, clients, capacity)
    t0 = time.perf_counter()
    for r in reqs:
        engine.submit(r)
    tokens = sum(1 for _ in engine.run())
    wall = time.perf_counter() - t0
    return {"requests": len(reqs), "seconds": wall, "requests_per_s": len(reqs) / wall, "tokens_per_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small-moe", help="a size from chimera.models.SIZES (random weights)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per level after which no request starts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, server and direct engine alike")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "serve_load.json"))
    args = ap.parse_args()
    if args.quick:
        args.model, args.clients, args.requests, args.max_tokens = "tiny", "1,4", 2, 16
    levels = [int(c) for c in args.clients.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from chimera.models import HybridLM, count_parameters, get_config

    cfg = get_config(args.model)
    model = HybridLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model"
        model.save_pretrained(ckpt)
        port = free_port()
        context = 256 + args.max_tokens
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "chimera", "serve", str(ckpt), "--port", str(port), "--served-model-name",
               MODEL, "--max-batch", str(max(levels)), "--context", str(context)]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.time() + 120
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"chimera serve exited: {server.stderr.read()[-2000:]}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("chimera serve did not start within 120 s")
                time.sleep(0.5)
            asyncio.run(load_level(url, 1, 1, 4, 60))  # warm-up: first request loads kernels
            rows = []
            for c in levels:
                served = asyncio.run(load_level(url, c, args.requests, args.max_tokens, args.time_limit))
                base = direct(model, c, args.requests, args.max_tokens)
                served["direct_engine"] = base
                served["server_vs_direct_tokens_per_s"] = served["tokens_per_s"] / base["tokens_per_s"]
                rows.append(served)
                print(f"{c:>3} clients: {served['requests_per_s']:.2f} req/s, {served['tokens_per_s']:.0f} tok/s "
                      f"(direct engine {base['tokens_per_s']:.0f} tok/s), latency p50 {served['latency_p50_s']:.2f} s "
                      f"p99 {served['latency_p99_s']:.2f} s, TTFT p50 {served['ttft_p50_s']:.3f} s, "
                      f"errors {served['errors']}", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit, "model": args.model,
            "parameters": count_parameters(cfg)["total"], "max_tokens": args.max_tokens,
            "requests_per_client": args.requests, "time_limit_s": args.time_limit, "torch_threads": args.threads,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
            "workload": "streamed chat completions, distinct prompts, temperature 1, ignore_eos, thinking off"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
