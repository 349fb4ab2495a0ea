"""`dartrt serve`: an HTTP image service on Ray Serve, batching the images of concurrent requests.

The parts, one job each:

- `schema`: the JSON body of ``POST /v1/generate``, checked field by field (one-line errors);
- `batching`: which queued requests may share a forward, and running them (numpy + the runtime only);
- `codec`: PNG bytes and the JSON answer;
- `config`: the service's settings and what each replica reserves (CPUs, GPUs, threads);
- `app`: the Ray Serve deployment (FastAPI ingress, ``@serve.batch``, health, metrics);
- `cluster`: starting or joining Ray, deploying, shutting down;
- `client` and `load`: a small stdlib-only client and a bounded load generator (tests, `bench-serve`);
- `bench`: ``dartrt bench-serve``: the service against a loop of `runtime.generate` calls.

Only `app`, `cluster` and `bench` import Ray, and only when called, so ``import dartrt.serve`` and the
client stay light.
"""
