"""Toy extensions, one file each: registered only when the environment says CACO_JAX_TEST_TOYS=1
(tests/conftest.py imports every module here), so that tests/test_architecture.py can check that
every per-variant test of the default suite picks them up without a test file being edited."""
