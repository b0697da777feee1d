"""The NATS side of qixtui: recorder, connection options, embedded nats-server."""
