"""Test-only code: run inside CLI subprocesses (fault injection, DDP probes), or shared by test files."""
