"""pyinfra deploys for the model lifecycle. They read the Ansible inventory and share the modelswarm engine."""
