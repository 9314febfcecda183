"""One place for the tests' hang guards.

A test asserts order and completion, never speed. But a test that waits for something that
never happens must fail rather than hang CI, so every wait has a guard - this one, far above
anything a loaded 2-core machine needs (the slowest wait seen under load took ~2 minutes).
Speed is measured by `make bench`, not here."""

HANG_GUARD = 600.0
