"""What crosses a port between services: plain types (one module per service that answers
them), their protobuf form (``*_proto``), the checks of what is sent to context, and the
decision snapshot format. Both sides of a port import them from here, so that no service
imports another's modules (tests/unit/test_layout.py)."""
