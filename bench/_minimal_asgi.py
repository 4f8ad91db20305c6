"""What the minimal ASGI apps of the floor measurements share (bench/floor.py,
bench/embeddings.py): each is written out as a module and served by uvicorn in a process
of its own, with nothing but these helpers and its own few lines, then SERVE."""

HELPERS = """
async def lifespan(receive, send):
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})

async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body

async def send_json(send, status, data):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
"""

# Run as `python -m <module>` by common.ports.spawn: uvicorn (as `uvicorn <module>:app
# --log-level warning --no-access-log` would) on the listening socket handed over, whose
# port no other process can take between its choice and this server (common.ports).
SERVE = """
if __name__ == "__main__":
    import uvicorn
    from common import ports
    sock = ports.inherited()
    if sock is None:
        raise SystemExit("no listening socket handed over: start me with common.ports.spawn")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run([sock])
"""
