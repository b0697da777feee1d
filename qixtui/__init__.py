"""qixtui: record, correlate, replay and orchestrate NATS traffic."""

__version__ = "0.1.0"
