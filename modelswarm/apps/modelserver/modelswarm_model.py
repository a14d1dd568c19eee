"""What a model may import from the platform (copied into every model image next to the server, /opt/model, on the
model's import path, as `modelswarm_model`).

    from modelswarm_model import RefusedInput, secret
    password = secret("db_password")  # declared in modelswarm.yml: secrets: [db_password]
    raise RefusedInput("petal_width must be a number")  # the caller reads this text (422)

Standard library only.
"""

import os

SECRETS_DIR = "/run/secrets"


class RefusedInput(ValueError):
    """Raise it from predict() for input the model refuses: the caller gets 422 and this exception's text, verbatim.

    Put in it only what any caller may read: never a secret, a file path or a value from the model's internals.
    Every other exception is the model's own failure: the caller gets a generic message and a request id, the log
    gets the traceback. (A ValueError subclass, so a bundle's own tests can still expect ValueError.)
    """


class SecretUnavailable(RuntimeError):
    """A secret the model asked for is not declared in its manifest, or has no value in this container."""


def secret(name):
    """The value of the model's secret `name` (from /run/secrets/<name>), without one trailing newline."""
    model = os.environ.get("MODELSWARM_MODEL", "<model>")
    declared = os.environ.get("MODELSWARM_SECRETS")  # set in the image; absent when run outside one
    if declared is not None and name not in declared.split(","):
        raise SecretUnavailable(
            f"secret {name!r} is not declared: add it to `secrets:` in modelswarm.yml (declared: {declared or 'none'})"
        )
    path = os.path.join(SECRETS_DIR, name)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            value = handle.read()
    except FileNotFoundError:
        raise SecretUnavailable(
            f"secret {name!r} is declared but {path} does not exist: set it with "
            f"`modelswarm secrets set {model} {name}` and deploy again"
        ) from None
    for newline in ("\r\n", "\n"):
        if value.endswith(newline):
            return value[: -len(newline)]
    return value
