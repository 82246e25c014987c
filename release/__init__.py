"""Release: which models serve, why, and what they were built from.

- `release.gate`: the promotion gate's rules (flows/promotion.yaml) and its decision;
- `release.registry`: the deployment registry (artifacts/registry.json): champion, history, promote, rollback;
- `release.lineage`: the hashes a deployment is made of, and the check that its models load;
- `release.promotion`: the gate run the CLI (`ember promote`) and the pipeline's promotion task share.

Pure functions (no Prefect import), below flows/ and cli/, which call them.
"""
