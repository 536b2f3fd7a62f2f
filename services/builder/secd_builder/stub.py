"""EnvironmentBuilder that builds nothing: every run gets the same (given) environment.

For tests of what surrounds the builder, and with executor.kind = "stub" for trying secd's flow
without building anything. It records what it was asked; the contract suite runs against it too.
"""

from __future__ import annotations

from secd_builder.environment import check_requirements
from secd_builder.port import BuildRequest, Built

__all__ = ["StubBuilder"]

STUB_ENVIRONMENT = "sha256:" + "0" * 64


class StubBuilder:
    """Answers every build with `environment`; `requests` lists what it was asked."""

    def __init__(self, environment: str = STUB_ENVIRONMENT) -> None:
        self.environment = environment
        self.requests: list[BuildRequest] = []

    async def environment_for(self, request: BuildRequest) -> Built:
        """Check the requirements as a real builder would, then answer at once."""
        self.requests.append(request)
        check_requirements(request.requirements or b"")
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        request.log_path.write_text("secd: the stub builder built nothing\n")
        reused = any(r.requirements == request.requirements for r in self.requests[:-1])
        return Built(environment=self.environment, reused=reused, log_path=request.log_path)

    async def close(self) -> None:
        """Nothing to close."""
