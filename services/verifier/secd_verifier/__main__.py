"""secd-verifier as its own process."""

from secd_shared.service import run_service
from secd_verifier.service import setup


def main() -> None:
    """Run the verifier until SIGTERM/SIGINT."""
    run_service("verifier", setup)


if __name__ == "__main__":
    main()
