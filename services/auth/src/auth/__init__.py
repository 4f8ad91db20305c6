"""The auth service: users, roles and permissions, login sessions in Redis, API keys."""
