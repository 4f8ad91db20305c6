"""`python -m telemetry`: serve the telemetry service."""

from common.serve import serve
from telemetry.settings import TelemetrySettings

if __name__ == "__main__":
    serve("telemetry.main:create_app", TelemetrySettings())
