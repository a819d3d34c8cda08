"""Helpers the test suites share (imported as ``tests._support``; not a test directory: nothing here is collected)."""
