"""secd-checkpointer as its own process."""

from __future__ import annotations

import asyncio
import signal
import sys

from secd_checkpointer.service import Checkpointer
from secd_shared.bus import connect
from secd_shared.config import ConfigError, load_config
from secd_shared.integrity import CheckpointError, load_signing_key
from secd_shared.logs import configure_logging


def main() -> None:
    """Sign checkpoints of the log until SIGTERM/SIGINT; exits 2 with one line on a bad setup."""
    try:
        config = load_config()
        key = load_signing_key(config.path(config.checkpointer.private_key_file))
    except (ConfigError, CheckpointError, OSError) as exc:
        print(f"secd-checkpointer: {exc}", file=sys.stderr)
        sys.exit(2)
    if config.checkpointer.interval_s <= 0:
        print("secd-checkpointer: checkpointer.interval_s must be greater than 0", file=sys.stderr)
        sys.exit(2)
    configure_logging("checkpointer", config.log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        nc = await connect(config.nats, "checkpointer")
        try:
            await Checkpointer(
                nc, config.nats.stream, key, interval_s=config.checkpointer.interval_s
            ).run(stop)
        finally:
            await nc.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
