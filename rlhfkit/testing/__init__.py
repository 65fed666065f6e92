"""Test-support tools that ship with the package (the SIGKILL-and-resume harness)."""
