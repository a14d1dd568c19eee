"""The applications that run inside the cluster's images: the console (web app + ledger) and the model server."""
