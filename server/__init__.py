"""The gateway. Kept empty so ``import server.policy`` does not pull in FastAPI."""
