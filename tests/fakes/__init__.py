"""Fakes of outside systems that cannot run here, answering like their documented APIs."""
