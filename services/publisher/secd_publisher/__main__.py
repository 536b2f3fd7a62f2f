"""secd-publisher as its own process."""

from secd_publisher.service import setup
from secd_shared.service import run_service


def main() -> None:
    """Run the publisher until SIGTERM/SIGINT."""
    run_service("publisher", setup, concurrency=lambda _config: 2)


if __name__ == "__main__":
    main()
