"""End-to-end tests. A package, so that the embedded stack they share (conftest.py, scope="package") stops as soon as
they are done instead of idling beside the other tests until the session ends."""
