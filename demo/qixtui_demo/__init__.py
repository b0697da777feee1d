"""A demo shop on NATS, choreographed and orchestrated, for `qixtui demo` and the tests."""
