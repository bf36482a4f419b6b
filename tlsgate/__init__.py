"""tlsgate: a TLS front door for legacy SMTP and POP3 servers."""

__version__ = "0.1.0"
