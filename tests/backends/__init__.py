"""Real PostgreSQL and S3 servers for tests and benchmarks (see servers.py)."""
