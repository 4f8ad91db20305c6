"""`python -m auth`: serve the auth service."""

from auth.settings import AuthSettings
from common.serve import serve

if __name__ == "__main__":
    serve("auth.main:create_app", AuthSettings())
