"""The meaning of each op the converter knows, in one place (used by the front-end's coverage,
the runtime, the report and the hardware profiles)."""
