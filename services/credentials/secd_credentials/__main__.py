"""secd-credentials as its own process."""

from secd_credentials.service import setup
from secd_shared.service import run_service


def main() -> None:
    """Run the credentials service until SIGTERM/SIGINT."""
    run_service("credentials", setup, concurrency=lambda _config: 4)


if __name__ == "__main__":
    main()
