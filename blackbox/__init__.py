"""The flight recorder: a bounded, durable event log shared by every process, plus crash dumps."""
