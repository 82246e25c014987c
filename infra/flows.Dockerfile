# The flows image: Ember's code at /ember with its pinned dependencies (CPU torch), dvc's S3 plugin and the Kubernetes
# worker plugin. It runs the Prefect process worker (compose), the flow-run Jobs of the Kubernetes work pool, and
# the Evidently UI. Build from the repo root (its ignore file keeps .venv, data and artifacts out of the context):
#   docker build -f infra/flows.Dockerfile -t ember-flows:<tag> .
FROM python:3.11-slim

# git: DVC works inside a git checkout; libgomp1: lightgbm and faiss.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU index: any other order pulls the multi-GB CUDA build (STACK.md).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /ember
# Dependencies before the code, so a code change reuses this layer: the runtime part of the lock (its pins above the
# dev-only line: every package but torch, above, and no test or lint tool), installed as it is (--no-deps: the part is
# complete, and a resolver would add mypy through feast's SQLAlchemy[mypy]); then the two plugins, resolved against it.
COPY requirements.lock ./
RUN sed '/^# --- dev only/,$d' requirements.lock > /tmp/requirements.runtime.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/requirements.runtime.txt \
    && pip install --no-cache-dir -c /tmp/requirements.runtime.txt "dvc[s3]==3.67.1" prefect-kubernetes==0.8.0
COPY . .
# /workspace: the Evidently workspace volume (compose); made here so a new volume takes its owner, uid 1000.
RUN pip install --no-cache-dir --no-deps -e . \
    && useradd --uid 1000 --create-home ember \
    && mkdir /workspace \
    && chown -R ember:ember /ember /workspace
USER 1000
ENV EMBER_HOME=/ember \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1
CMD ["prefect", "worker", "start", "--pool", "ember-process", "--type", "process", "--with-healthcheck"]
