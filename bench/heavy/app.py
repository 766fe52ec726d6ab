"""A wasi:http hello world in Python (componentize-py): the heavy, interpreter-based
component of the benchmarks. It answers like examples/hello: a JSON greeting that echoes the
request's path."""

import json

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        body = json.dumps({"message": "Hello, world!", "path": request.path_with_query()}).encode()
        response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
        outgoing = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = outgoing.write()
        stream.blocking_write_and_flush(body)
        stream.__exit__(None, None, None)
        OutgoingBody.finish(outgoing, None)
