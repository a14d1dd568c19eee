"""The modelswarm console: a small web app on the leader that shows the cluster and owns the rollout ledger."""
