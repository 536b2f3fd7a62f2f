"""Tests for the executor: sandbox, forwarder and database relay."""
