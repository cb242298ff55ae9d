"""The service's two model paths served by LitServe, with its own batching (max 32, 5 ms timeout).

    bench/.venv-litserve/bin/python -m bench.peers.litserve_app PORT [WORKERS]

POST /attributes takes the multipart upload `image`, POST /generate the JSON body of our /generate; both answer
the same JSON as `jmvae serve`. LitServe runs the HTTP server and WORKERS (default one) inference worker processes
per API; each request is decoded (and its face cropped) in a worker, then batched into one forward pass.
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
from fastapi import HTTPException

from bench.peers.common import MAX_BATCH_SIZE, BadRequest, Pipeline
from jmvae.model.faces import FaceCrop
from jmvae.service.engine import GenerateJob
from jmvae.service.images import ImageRejected

# LitServe's batch_timeout. Not 0, as ours is: at 0 its worker polls an empty queue without blocking, a core's
# worth of CPU on a 2-core box; 5 ms is what our service used before.
BATCH_TIMEOUT_S = 0.005


class _PipelineAPI(ls.LitAPI):
    """A path of the shared Pipeline; LitServe hands `predict` the decoded requests as one list and takes one
    answer per request back, with nothing to stack or split."""

    def setup(self, device: str) -> None:
        self.pipeline = Pipeline()

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output


class AttributesAPI(_PipelineAPI):
    # `request` stays unannotated: LitServe reads the annotation as the body's type, and without one hands over
    # the parsed form (or JSON object).
    def decode_request(self, request) -> FaceCrop:  # type: ignore[no-untyped-def]
        try:
            return self.pipeline.crop(request["image"].file.read())
        except ImageRejected as e:
            raise HTTPException(e.status, e.message) from None

    def predict(self, faces: list[FaceCrop]) -> list[dict[str, Any]]:
        return self.pipeline.attributes(faces)


class GenerateAPI(_PipelineAPI):
    def decode_request(self, request) -> GenerateJob:  # type: ignore[no-untyped-def]
        try:
            return self.pipeline.generate_job(request)
        except BadRequest as e:
            raise HTTPException(422, str(e)) from None

    def predict(self, jobs: list[GenerateJob]) -> list[dict[str, Any]]:
        return self.pipeline.generate(jobs)


def main() -> None:
    batching = {"max_batch_size": MAX_BATCH_SIZE, "batch_timeout": BATCH_TIMEOUT_S}
    server = ls.LitServer(
        [AttributesAPI(api_path="/attributes", **batching), GenerateAPI(api_path="/generate", **batching)],
        accelerator="auto",
        workers_per_device=int(sys.argv[2]) if len(sys.argv) > 2 else 1,
        timeout=60,
        fast_queue=True,  # ZeroMQ: its faster transport
    )
    server.run(host="127.0.0.1", port=int(sys.argv[1]), num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
