"""Latency and throughput measurement of the runtime side by side with its peers."""
