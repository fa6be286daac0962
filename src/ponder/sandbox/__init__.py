"""Features that are dangerous by nature, off by default and confined when on: running
model-written code (`code`) and fetching URLs (`fetch`)."""
