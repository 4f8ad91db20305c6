"""Serve a fake provider as a process: `python -m devkit.fakes.run openai --port 9100`
(`openai`, `anthropic` or `hf`, or `azure`: an Azure OpenAI resource with the deployments
`chat-prod` and `embed-prod`, its endpoint the server's root URL).

Without `--port`, it serves the listening socket its launcher handed it (common.ports).

`--delay-ms` waits that long before each chat or embeddings response (the benchmarks'
fixed-delay upstream); `--api-key` / `--token` make the fake check credentials.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common import ports
from common.serve import run
from devkit.fakes.anthropic_server import create_anthropic_app
from devkit.fakes.azure_server import create_azure_app
from devkit.fakes.hf_server import create_hf_app
from devkit.fakes.openai_server import create_openai_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devkit.fakes.run", description=__doc__)
    parser.add_argument(
        "kind", choices=("openai", "anthropic", "hf", "azure"), help="which protocol to speak"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="else the inherited socket")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay per response")
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer key (OpenAI), x-api-key (Anthropic), token (HF) or api-key (Azure)",
    )
    parser.add_argument("--dimensions", type=int, default=8, help="default embedding size")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Build the chosen fake and serve it with uvicorn, quietly (no access log)."""
    args = parse_args(argv)
    latency = args.delay_ms / 1000
    if args.kind == "hf":
        app = create_hf_app(token=args.api_key, dimensions=args.dimensions, latency=latency)
    elif args.kind == "anthropic":
        app = create_anthropic_app(api_key=args.api_key, latency=latency)
    else:
        create = create_azure_app if args.kind == "azure" else create_openai_app
        app = create(api_key=args.api_key, dimensions=args.dimensions, latency=latency)
    sock = ports.inherited()
    if sock is None:
        if args.port is None:
            raise SystemExit(f"--port, or a socket handed over in {ports.LISTEN_FD_ENV}")
        sock = ports.listen(args.host, args.port)
    run(app, sock, log_level="warning", access_log=False, server_header=False)


if __name__ == "__main__":
    main()
