"""secd-executor as its own process."""

from secd_executor.service import setup
from secd_shared.service import run_service


def main() -> None:
    """Run the executor until SIGTERM/SIGINT."""
    run_service("executor", setup, concurrency=lambda config: config.executor.concurrency)


if __name__ == "__main__":
    main()
