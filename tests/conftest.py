"""Shared fixtures: real services are started once per session, never per test."""
