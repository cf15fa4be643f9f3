"""Run state in Redis (and an in-memory twin for unit tests): the key schema, the Lua
transitions, the progress stream."""
