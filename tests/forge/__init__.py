"""Forge and identity ports: contract tests over the embedded and the GitLab/Keycloak adapters."""
