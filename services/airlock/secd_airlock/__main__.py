"""secd-airlock as its own process."""

from secd_airlock.service import setup
from secd_shared.service import run_service


def main() -> None:
    """Run the airlock until SIGTERM/SIGINT."""
    run_service("airlock", setup, concurrency=lambda config: config.airlock.concurrency)


if __name__ == "__main__":
    main()
