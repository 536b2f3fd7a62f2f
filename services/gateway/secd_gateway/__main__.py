"""secd-gateway: HTTP in (forge hooks) and the read API, as its own process."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from secd_gateway.app import create_app, read_token
from secd_gateway.gitlab_hook import read_webhook_secret
from secd_shared.bus import EventBus, connect
from secd_shared.config import ConfigError, load_config
from secd_shared.logs import configure_logging


def main() -> None:
    """Start the gateway with the config from SECD_CONFIG and the environment."""
    try:
        config = load_config()
        gitlab_secret = read_webhook_secret(config) if config.forge.kind == "gitlab" else None
        # With GitLab, the embedded forge's hook (and its token file) is not served.
        token = read_token(config) if gitlab_secret is None else ""
        reader_token = (
            read_token(config, config.gateway.read_token_file)
            if config.gateway.read_token_file
            else None
        )
    except (ConfigError, OSError, ValueError) as exc:
        print(f"secd-gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging("gateway", config.log_level)

    async def serve() -> None:
        bus = EventBus(await connect(config.nats, "gateway"), config.nats.stream)
        app = create_app(config, bus, token, gitlab_secret=gitlab_secret, read_token=reader_token)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.gateway.host,
                port=config.gateway.port,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
        )
        try:
            await server.serve()
        finally:
            await bus.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
