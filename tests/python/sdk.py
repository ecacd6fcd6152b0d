"""Shared by the RocketMQ 5 compatibility scripts: the official Python SDK against a Comet broker.

Every script takes the broker's gRPC endpoint as its first argument and prints one JSON object per line on
stdout (events as they happen, the result last); tests/src/harness/python_sdk.rs reads them. Nothing here
reimplements the protocol: the scripts use the SDK exactly as an application would.
"""
import json
import sys

from rocketmq import ClientConfiguration, Credentials  # noqa: F401  (re-exported for the scripts)


def config(endpoint, request_timeout=10):
    """A client configuration for `endpoint` without credentials (auth is off)."""
    return ClientConfiguration(endpoint, Credentials(), request_timeout=request_timeout)


def emit(**fields):
    """Prints one JSON line for the test and flushes it at once."""
    print(json.dumps(fields), flush=True)


def fail(message):
    """Ends the script with a non-zero exit and the reason on stderr (the test shows it)."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)
