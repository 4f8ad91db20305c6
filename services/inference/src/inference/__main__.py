"""`python -m inference`: serve the inference service."""

from common.serve import serve
from inference.settings import InferenceSettings

if __name__ == "__main__":
    serve("inference.main:create_app", InferenceSettings())
