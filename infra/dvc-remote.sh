#!/usr/bin/env bash
# Points DVC at the S3-compatible remote that the environment names, as the default remote of this checkout only
# (.dvc/config.local, never committed). Credentials stay in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY:
# DVC's S3 remote reads them there); only the URL and the endpoint are written. Needs dvc's S3 plugin: pip install
# "dvc[s3]" (the flows image has it). Usage: EMBER_DVC_REMOTE=s3://bucket/ember AWS_ENDPOINT_URL=https://... $0
set -euo pipefail
: "${EMBER_DVC_REMOTE:?set EMBER_DVC_REMOTE to the remote URL, e.g. s3://ember-artifacts/dvc}"
dvc remote add --local --force --default env "$EMBER_DVC_REMOTE"
if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then  # MinIO, Ceph, R2...: anything but AWS itself
  dvc remote modify --local env endpointurl "$AWS_ENDPOINT_URL"
fi
if [[ -n "${AWS_REGION:-}" ]]; then
  dvc remote modify --local env region "$AWS_REGION"
fi
echo "dvc remote 'env' (default): $EMBER_DVC_REMOTE${AWS_ENDPOINT_URL:+ at $AWS_ENDPOINT_URL}"
