"""secd-builder as its own process."""

from secd_builder.service import setup
from secd_shared.service import run_service


def main() -> None:
    """Run the builder until SIGTERM/SIGINT."""
    run_service("builder", setup, concurrency=lambda _config: 2)


if __name__ == "__main__":
    main()
